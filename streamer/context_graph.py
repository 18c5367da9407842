"""A context's decoding graph: its word language as a minimal automaton, searched over CTC frames.

Compilation happens in three steps, each standard and each small:

1. **Word NFA** (Thompson construction): every expression of every intent becomes a chain of
   word arcs, ``[]``/``()`` groups become parallel branches joined by empty arcs (an optional
   group also gets an empty bypass), a ``$type:name`` becomes one branch per phrase of the slot
   type and a ``@macro`` one branch per macro phrase.
2. **Minimal DFA**: subset construction, then merging of equivalent states (for an acyclic
   automaton, Revuz's bottom-up signature hashing). Expressions sharing a beginning share its
   states, and a slot's phrases share their tails, so the graph grows with the number of
   *distinct* word arcs, not with the number of sentences the context expands to: "set the
   lights to $level:level percent in the $room:room" with 101 levels and 10 rooms is 1,010
   sentences but 57 word arcs.
   The automaton carries no tags: intent and slots are read back from the best word sequence
   by matching it against the expressions (:mod:`streamer.contexts`), which is exact and keeps
   the graph free of output labels that would block the merging.
3. **CTC graph**: each word arc becomes its characters, each followed by an optional blank (a
   blank is required between two equal characters); the word delimiter is required between
   words and allowed at both ends. :meth:`CtcGraph.best_path` is Viterbi over these nodes on
   one utterance's log-probabilities, exactly (no beam), as :mod:`streamer.wordloop` does for a
   word loop; exact scores matter here because rejection compares them with the free path's.

Pure numpy and Python; no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamer.context_syntax import Group, Macro, MacroRef, Phrase, SlotRef, SlotType, Word


@dataclass(frozen=True)
class WordGraph:
    """An acyclic deterministic word automaton; state 0 is the start.

    Attributes:
        arcs: (from state, word, to state), sorted.
        finals: the accepting states.
        n_states: the number of states.
    """

    arcs: tuple[tuple[int, str, int], ...]
    finals: frozenset[int]
    n_states: int


class _Nfa:
    """A word NFA with empty arcs under construction; state 0 starts, state 1 accepts."""

    def __init__(self, slots: Mapping[str, SlotType], macros: Mapping[str, Macro]) -> None:
        self.slots = slots
        self.macros = macros
        self.empty: list[list[int]] = [[], []]
        self.words: list[list[tuple[str, int]]] = [[], []]

    def state(self) -> int:
        self.empty.append([])
        self.words.append([])
        return len(self.empty) - 1

    def words_from(self, words: Sequence[str], start: int) -> int:
        for word in words:
            nxt = self.state()
            self.words[start].append((word, nxt))
            start = nxt
        return start

    def phrase(self, terms: Phrase, start: int) -> int:
        """Add ``terms`` from ``start``; return the state where they end."""
        for term in terms:
            if isinstance(term, Word):
                start = self.words_from([term.text], start)
            elif isinstance(term, SlotRef):
                end = self.state()
                for _, words in self.slots[term.slot_type].phrases:
                    self.empty[self.words_from(words, start)].append(end)
                start = end
            elif isinstance(term, MacroRef):
                start = self.branches(self.macros[term.name].phrases, start)
            else:
                start = self.group(term, start)
        return start

    def branches(self, alternatives: Sequence[Phrase], start: int) -> int:
        end = self.state()
        for alt in alternatives:
            self.empty[self.phrase(alt, start)].append(end)
        return end

    def group(self, group: Group, start: int) -> int:
        end = self.branches(group.alternatives, start)
        if group.optional:
            self.empty[start].append(end)
        return end


def word_graph(
    phrases: Sequence[Phrase], slots: Mapping[str, SlotType], macros: Mapping[str, Macro]
) -> WordGraph:
    """The minimal deterministic automaton of the union of ``phrases``.

    References must have been checked (every slot type and macro exists, macros do not recurse).
    """
    nfa = _Nfa(slots, macros)
    for terms in phrases:
        nfa.empty[nfa.phrase(terms, 0)].append(1)
    return _minimize(*_determinize(nfa))


def _determinize(nfa: _Nfa) -> tuple[list[dict[str, int]], set[int]]:
    """Subset construction: per DFA state, word -> next state; and the accepting states."""
    closures: dict[int, frozenset[int]] = {}

    def closure(state: int) -> frozenset[int]:
        found = closures.get(state)
        if found is None:
            found = frozenset({state}).union(*(closure(t) for t in nfa.empty[state]))
            closures[state] = found
        return found

    start = closure(0)
    index = {start: 0}
    subsets = [start]
    moves: list[dict[str, int]] = []
    finals: set[int] = set()
    for number, subset in enumerate(subsets):  # grows while iterating: a work queue
        if 1 in subset:
            finals.add(number)
        targets: dict[str, set[int]] = defaultdict(set)
        for state in subset:
            for word, nxt in nfa.words[state]:
                targets[word].add(nxt)
        out: dict[str, int] = {}
        for word, states in targets.items():
            target = frozenset().union(*(closure(s) for s in states))
            if target not in index:
                index[target] = len(subsets)
                subsets.append(target)
            out[word] = index[target]
        moves.append(out)
    return moves, finals


def _minimize(moves: list[dict[str, int]], finals: set[int]) -> WordGraph:
    """Merge equivalent states of an acyclic DFA, children before parents (Revuz)."""
    order: list[int] = []
    seen = {0}
    stack = [(0, iter(moves[0].values()))]
    while stack:  # iterative post-order: sentences can be long
        state, children = stack[-1]
        child = next(children, None)
        if child is None:
            order.append(state)
            stack.pop()
        elif child not in seen:
            seen.add(child)
            stack.append((child, iter(moves[child].values())))
    classes: dict[tuple[bool, tuple[tuple[str, int], ...]], int] = {}
    class_of: dict[int, int] = {}
    for state in order:
        signature = (
            state in finals,
            tuple(sorted((w, class_of[t]) for w, t in moves[state].items())),
        )
        class_of[state] = classes.setdefault(signature, len(classes))
    # renumber so that the start is 0 (it is last in post-order)
    renumber = {c: len(classes) - 1 - c for c in classes.values()}
    arcs = {
        (renumber[class_of[s]], w, renumber[class_of[t]])
        for s in order
        for w, t in moves[s].items()
    }
    accepting = frozenset(renumber[c] for (final, _), c in classes.items() if final)
    return WordGraph(tuple(sorted(arcs)), accepting, len(classes))


class CtcGraph:
    """The CTC search graph of a :class:`WordGraph` over one vocabulary.

    Call contract: build once per context and vocabulary; :meth:`best_path` is pure and may be
    called from several threads at once.
    """

    def __init__(
        self, words: WordGraph, *, char_ids: Mapping[str, int], blank_id: int, delimiter_id: int
    ) -> None:
        """Expand ``words`` into CTC nodes; ``char_ids`` must spell every word."""
        tokens: list[int] = [blank_id]  # node 0: blank before anything
        arcs: list[tuple[int, int]] = [(0, 0)]  # (from, to), self-loops included
        junction: dict[int, int] = {}  # word state -> its delimiter node (its blank follows)

        def node(token: int, *preds: int) -> int:
            tokens.append(token)
            me = len(tokens) - 1
            arcs.extend([(me, me), *((p, me) for p in preds)])
            return me

        for state in range(words.n_states):
            junction[state] = node(delimiter_id)
            node(blank_id, junction[state])
        start_delim = junction[0]
        arcs.append((0, start_delim))
        initial = [0, start_delim]
        finals: list[int] = []
        for src, word, dst in words.arcs:
            ids = [char_ids[ch] for ch in word]
            delim = junction[src]
            entries = (delim, delim + 1) + ((0,) if src == 0 else ())
            char = node(ids[0], *entries)
            if src == 0:
                initial.append(char)
            for i in range(1, len(ids)):
                blank = node(blank_id, char)
                preds = (blank, char) if ids[i] != ids[i - 1] else (blank,)
                char = node(ids[i], *preds)
            blank = node(blank_id, char)
            ends = (char, blank)
            arcs.extend((e, junction[dst]) for e in ends)
            if dst in words.finals:
                finals.extend(ends)
        finals.extend(junction[s] + k for s in words.finals for k in (0, 1))
        pairs = np.array(arcs, dtype=np.int64)
        order = np.argsort(pairs[:, 1], kind="stable")
        self._src = pairs[order, 0]
        dst_sorted = pairs[order, 1]
        self._segments = np.flatnonzero(np.r_[True, dst_sorted[1:] != dst_sorted[:-1]])
        self._dst = dst_sorted
        self._arc_ids = np.arange(len(self._src))
        self.tokens = np.array(tokens, dtype=np.int64)
        self._initial = np.array(sorted(set(initial)), dtype=np.int64)
        self._finals = np.array(sorted(set(finals)), dtype=np.int64)

    @property
    def n_nodes(self) -> int:
        """How many CTC nodes the graph has (each costs one cell of the search per frame)."""
        return len(self.tokens)

    def best_path(self, log_probs: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], float]:
        """The token id per frame of the best path, and its log score (``log_probs`` [T, V]).

        An utterance too short to spell any accepted word sequence gives an empty path and
        ``-inf``.
        """
        n_frames = len(log_probs)
        tokens = self.tokens
        if not n_frames:
            return np.zeros(0, dtype=np.int64), -np.inf
        emissions = log_probs[:, tokens]  # [T, nodes]: each node's token score per frame
        score = np.full(len(tokens), -np.inf)
        score[self._initial] = emissions[0, self._initial]
        back = np.zeros((n_frames, len(tokens)), dtype=np.int32)
        arc_ids = self._arc_ids
        for t in range(1, n_frames):
            cand = score[self._src]
            best = np.maximum.reduceat(cand, self._segments)
            winner = np.minimum.reduceat(
                np.where(cand >= best[self._dst], arc_ids, len(arc_ids)), self._segments
            )
            back[t] = self._src[winner]
            score = best + emissions[t]
        finals = score[self._finals]
        best_final = int(finals.argmax())
        total = float(finals[best_final])
        if not np.isfinite(total):
            return np.zeros(0, dtype=np.int64), -np.inf
        state = int(self._finals[best_final])
        path = np.empty(n_frames, dtype=np.int64)
        for t in range(n_frames - 1, -1, -1):
            path[t] = state
            state = int(back[t, state])
        out: npt.NDArray[np.int64] = tokens[path]
        return out, total

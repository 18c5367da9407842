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
3. **CTC graph**: the sentences spelt out (:func:`character_graph`: words joined by the
   delimiter, which may also open and close a sentence) as a minimal automaton again, now with
   one arc per character, so that word arcs share their characters; then a CTC node per
   character arc and a blank node per state (a blank is optional between two characters and
   required between two equal ones). :meth:`CtcGraph.best_path` is Viterbi over these nodes on
   one utterance's log-probabilities, exactly (no beam), as :mod:`streamer.wordloop` does for a
   word loop; exact scores matter here because rejection compares them with the free path's.
   Its frame loop is compiled by numba (a frame of home.yaml's 1,391 nodes and 4,045 arcs
   costs ~4 us compiled; numpy array calls cost ~100 us a frame): the JIT runs once per
   process, at the first search (cached on disk where the package directory is writable), and
   importing this module does not load numba.

Pure numpy, numba and Python; no I/O.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

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


#: The word delimiter's label in a :func:`character_graph` (no word holds a space).
DELIMITER = " "


def character_graph(words: WordGraph) -> WordGraph:
    """The minimal automaton of ``words``' sentences spelt out: one arc per character.

    Words are joined by :data:`DELIMITER`, which may also open and close a sentence (CTC models
    often emit their word delimiter around speech). Spelt out, many word arcs share characters
    (the number slots' "...ty", "...teen"), so the minimal automaton has far fewer arcs than
    the words have characters (home.yaml: 806 against 1,778).
    """
    nfa = _Nfa({}, {})
    word_end = [0, *(nfa.state() for _ in range(1, words.n_states))]  # a word state's NFA state
    spaced = [nfa.state() for _ in range(words.n_states)]  # after its delimiter
    nfa.empty[0].append(spaced[0])  # a sentence may start without the delimiter
    for state in range(words.n_states):
        nfa.words[word_end[state]].append((DELIMITER, spaced[state]))
    for src, word, dst in words.arcs:
        at = spaced[src]
        for k, char in enumerate(word):
            nxt = word_end[dst] if k == len(word) - 1 else nfa.state()
            nfa.words[at].append((char, nxt))
            at = nxt
    for state in words.finals:
        nfa.empty[word_end[state]].append(1)
        nfa.empty[spaced[state]].append(1)
    return _minimize(*_determinize(nfa))


class CtcGraph:
    """The CTC search graph of a :class:`WordGraph` over one vocabulary.

    Call contract: build once per context and vocabulary; :meth:`best_path` is pure and may be
    called from several threads at once.
    """

    def __init__(
        self, words: WordGraph, *, char_ids: Mapping[str, int], blank_id: int, delimiter_id: int
    ) -> None:
        """Expand ``words`` into CTC nodes; ``char_ids`` must spell every word."""
        chars = character_graph(words)
        tokens: list[int] = []
        arcs: list[tuple[int, int]] = []  # (from, to), self-loops included

        def node(token: int) -> int:
            tokens.append(token)
            arcs.append((len(tokens) - 1, len(tokens) - 1))
            return len(tokens) - 1

        blank = [node(blank_id) for _ in range(chars.n_states)]  # per state: a blank after it
        emit = [node(delimiter_id if c == DELIMITER else char_ids[c]) for _, c, _ in chars.arcs]
        labelled = list(zip(chars.arcs, emit, strict=True))  # ((src, char, dst), its node)
        arriving: dict[int, list[int]] = defaultdict(list)  # state -> nodes of arcs into it
        for (_, _, dst), me in labelled:
            arriving[dst].append(me)
        for (src, _, dst), me in labelled:
            arcs.append((blank[src], me))
            # straight from the previous character, unless it is the same token (CTC needs a
            # blank between two equal tokens, else they read as one)
            arcs.extend((prev, me) for prev in arriving[src] if tokens[prev] != tokens[me])
            arcs.append((me, blank[dst]))
        initial = [blank[0], *(me for (src, _, _), me in labelled if src == 0)]
        finals = [blank[f] for f in chars.finals]
        finals += [me for (_, _, dst), me in labelled if dst in chars.finals]
        pairs = np.array(arcs, dtype=np.int64)
        order = np.argsort(pairs[:, 1], kind="stable")
        self._src = pairs[order, 0]
        dst_sorted = pairs[order, 1]
        segments = np.flatnonzero(np.r_[True, dst_sorted[1:] != dst_sorted[:-1]])
        # every node has its self-loop, so node j's incoming arcs are [starts[j], starts[j + 1])
        assert len(segments) == len(tokens)
        self._starts = np.r_[segments, len(self._src)].astype(np.int64)
        self.tokens = np.array(tokens, dtype=np.int64)
        self._initial = np.array(sorted(set(initial)), dtype=np.int64)
        self._finals = np.array(sorted(set(finals)), dtype=np.int64)

    @property
    def n_nodes(self) -> int:
        """How many CTC nodes the graph has (each costs one cell of the search per frame)."""
        return len(self.tokens)

    def prepare(self) -> None:
        """Build the compiled search now, not at the first search.

        It takes about a second, less when numba's on-disk cache has it.
        """
        self.best_path(np.zeros((1, int(self.tokens.max()) + 1)))

    def best_path(self, log_probs: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], float]:
        """The token id per frame of the best path, and its log score (``log_probs`` [T, V]).

        An utterance too short to spell any accepted word sequence gives an empty path and
        ``-inf``.
        """
        n_frames = len(log_probs)
        tokens = self.tokens
        if not n_frames:
            return np.zeros(0, dtype=np.int64), -np.inf
        scores = np.ascontiguousarray(log_probs, dtype=np.float64)
        search = _viterbi()
        nodes, total = search(scores, tokens, self._src, self._starts, self._initial, self._finals)
        if not np.isfinite(total):
            return np.zeros(0, dtype=np.int64), -np.inf
        out: npt.NDArray[np.int64] = tokens[nodes]
        return out, float(total)


@functools.cache
def _viterbi() -> Callable[..., tuple[npt.NDArray[np.int64], float]]:
    """The compiled Viterbi search (numba imported and the kernel built at the first call)."""
    import numba  # half a second to import: only once a context runs

    njit = cast(Any, numba).njit
    try:
        kernel: Callable[..., tuple[npt.NDArray[np.int64], float]]
        kernel = njit(cache=True, nogil=True)(_viterbi_frames)
    except RuntimeError:  # no writable cache location: compile in every process
        kernel = njit(cache=False, nogil=True)(_viterbi_frames)
    return kernel


def _viterbi_frames(
    log_probs: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.int64],
    src: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    initial: npt.NDArray[np.int64],
    finals: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], float]:  # pragma: no cover - runs compiled
    """Viterbi over nodes: the best path's node per frame, and its score (``-inf``: none).

    ``log_probs`` [T >= 1, vocab]; node j emits ``tokens[j]`` and its predecessors are
    ``src[starts[j]:starts[j + 1]]`` (its self-loop included). Ties go to the first predecessor
    in that order, and to the first final node.
    """
    n_frames, n_nodes = log_probs.shape[0], tokens.shape[0]
    score = np.full(n_nodes, -np.inf)
    for i in initial:
        score[i] = log_probs[0, tokens[i]]
    back = np.zeros((n_frames, n_nodes), dtype=np.int32)
    new = np.empty(n_nodes)
    for t in range(1, n_frames):
        for j in range(n_nodes):
            arg = src[starts[j]]
            best = score[arg]
            for a in range(starts[j] + 1, starts[j + 1]):
                cand = score[src[a]]
                if cand > best:
                    best = cand
                    arg = src[a]
            new[j] = best + log_probs[t, tokens[j]]
            back[t, j] = arg
        score, new = new, score
    state = finals[0]
    total = score[state]
    for f in finals[1:]:
        if score[f] > total:
            total = score[f]
            state = f
    path = np.empty(n_frames, dtype=np.int64)
    for t in range(n_frames - 1, -1, -1):
        path[t] = state
        state = back[t, state]
    return path, total

"""Understanding defined in text: Rhino-format contexts decoded over a CTC model's characters.

A context file (Picovoice Rhino's context YAML, see :mod:`streamer.context_syntax`) lists
intents as expressions with slots and macros. :func:`load_context` or :func:`compile_context`
compiles it once, at start, against a ctc bundle's alphabet; :meth:`Context.understand` then
takes one utterance's CTC output and returns the best in-context parse (intent and slot values),
with a confidence and whether it is *understood*. No recordings, no retraining.

**Rejection.** The best in-context path is compared with the free best path (the arg-max token
of every frame, which scores at least as well as any path): their log-score gap divided by the
number of frames on which either path emits a character or delimiter (so leading and trailing
silence, blank on both, does not dilute it) is ``gap_per_frame``, in nats. An utterance is
understood when that gap is at most ``max_gap_per_frame``; ``confidence`` is
``exp(-gap_per_frame)``: 1.0 when the in-context path is the free one. The default threshold
was chosen on validation voices (bench/contexts.py, bench/RESULTS.md).

**Why a hand-written search.** The graph is searched by exact Viterbi in numpy
(:mod:`streamer.context_graph`), as :mod:`streamer.wordloop` already does for word loops. The
libraries considered: ``ctc-beam-decoder`` (the ``beam`` extra) only *biases* towards
hotwords, it cannot hold a search to a grammar; k2 needs torch, which the runtime never
imports; pynini (165 MB wheel) and kaldifst with kaldi-decoder would compile and search the
same graph in C++, but add binary wheels for few platforms to the core (the reason the beam
search is only an extra), and kaldi-decoder's pruned search gives a bound, not the exact best
in-context score the rejection compares. A context graph is small (thousands of nodes), so an
exact numpy search costs milliseconds per utterance.

Pure, except :func:`load_context`, which reads the file path its caller gives.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from streamer.context_graph import CtcGraph, WordGraph, word_graph
from streamer.context_syntax import (
    ContextError,
    ContextSpec,
    Group,
    MacroRef,
    Phrase,
    SlotRef,
    Term,
    Word,
    parse_context,
)
from streamer.errors import ModelError
from streamer.manifest import Manifest
from streamer.outputs import checked, log_softmax
from streamer.wordloop import unspellable

__all__ = [
    "DEFAULT_BLANK_PENALTY",
    "DEFAULT_MAX_GAP_PER_FRAME",
    "Alphabet",
    "Context",
    "ContextError",
    "Understanding",
    "compile_context",
    "load_context",
]

DEFAULT_MAX_GAP_PER_FRAME: Final = 1.0
"""Rejection threshold (nats per emitting frame), chosen on validation voices by
bench/contexts.py (validation false acceptance at most 1%); see
``decoder.context_max_gap_per_frame``."""
DEFAULT_BLANK_PENALTY: Final = 2.5
"""Nats taken off the blank's log-probability in every frame before a context reads it; see
``decoder.context_blank_penalty``."""


@dataclass(frozen=True)
class Alphabet:
    """What a ctc bundle can spell: its vocabulary, blank and word delimiter."""

    vocab: tuple[str, ...]
    blank_id: int
    delimiter: str

    @classmethod
    def of(cls, manifest: Manifest) -> Alphabet:
        """The alphabet of a ctc bundle.

        Raises:
            ModelError: the bundle is not ctc or has no blank or word delimiter.
        """
        if manifest.task != "ctc" or manifest.vocab is None or manifest.blank_id is None:
            raise ModelError(f"contexts need a ctc bundle, got task {manifest.task!r}")
        if not manifest.word_delimiter:
            raise ModelError("contexts need a ctc bundle with a word delimiter")
        if manifest.word_delimiter not in manifest.vocab:
            raise ModelError(f"the word delimiter {manifest.word_delimiter!r} is not in the vocab")
        return cls(manifest.vocab, manifest.blank_id, manifest.word_delimiter)

    def char_ids(self) -> dict[str, int]:
        """Lowercase character -> token id, for the vocab's one-character tokens."""
        ids: dict[str, int] = {}
        for i, token in enumerate(self.vocab):
            if i == self.blank_id or token == self.delimiter or len(token) != 1:
                continue
            if token.strip() and (token.lower() not in ids or token == token.lower()):
                ids[token.lower()] = i
        return ids


@dataclass(frozen=True)
class Understanding:
    """One utterance understood (or not) in a context.

    Attributes:
        understood: the in-context parse is close enough to the free path (see the module).
        intent: the best in-context parse's intent (None: too short to spell any expression).
        slots: slot name -> value, the slot phrase as written in the context file.
        confidence: ``exp(-gap_per_frame)`` in (0, 1], rounded to 1e-4; 0.0 without a parse.
        transcript: the words of the best in-context path.
        free_transcript: the free (greedy) transcript of the same frames.
        gap_per_frame: free minus in-context log score per emitting frame, in nats.
    """

    understood: bool
    intent: str | None
    slots: Mapping[str, str] = field(default_factory=dict)
    confidence: float = 0.0
    transcript: str = ""
    free_transcript: str = ""
    gap_per_frame: float = math.inf


class Context:
    """A context compiled against one alphabet.

    Call contract: build with :func:`compile_context` or :func:`load_context`, once;
    :meth:`understand` and :meth:`parse` are pure and may run in several threads at once.
    """

    def __init__(self, spec: ContextSpec, alphabet: Alphabet, *, name: str) -> None:
        """Check ``spec`` against ``alphabet`` and build its search graph.

        Raises:
            ContextError: an unknown slot type or macro, a recursive macro, a word the alphabet
                cannot spell, or an expression that matches no words.
            ModelError: the alphabet has no usable delimiter.
        """
        self.name = name
        self.spec = spec
        self.alphabet = alphabet
        chars = alphabet.char_ids()
        _check(spec, chars)
        self.words: WordGraph = word_graph(
            [e.terms for e in spec.expressions], spec.slots, spec.macros
        )
        self.graph = CtcGraph(
            self.words,
            char_ids=chars,
            blank_id=alphabet.blank_id,
            delimiter_id=alphabet.vocab.index(alphabet.delimiter),
        )
        # what each token adds to a path's text; special tokens (<unk>...) add nothing
        self._text = [
            " " if t == alphabet.delimiter else t.lower() if len(t) == 1 else ""
            for t in alphabet.vocab
        ]
        self._text[alphabet.blank_id] = ""

    @property
    def intents(self) -> tuple[str, ...]:
        """The context's intents, in file order."""
        return tuple(dict.fromkeys(e.intent for e in self.spec.expressions))

    def parse(self, text: str) -> tuple[str, dict[str, str]] | None:
        """Intent and slots of the first expression (file order) matching all of ``text``.

        Words are compared case-insensitively; None when no expression matches.
        """
        words = text.lower().split()
        for expression in self.spec.expressions:
            for end, slots in self._match(expression.terms, 0, words, {}):
                if end == len(words):
                    return expression.intent, slots
        return None

    def understand(
        self,
        log_probs: npt.ArrayLike,
        *,
        max_gap_per_frame: float = DEFAULT_MAX_GAP_PER_FRAME,
        blank_penalty: float = DEFAULT_BLANK_PENALTY,
    ) -> Understanding:
        """Understand one utterance from its CTC output [frames, vocab].

        Args:
            log_probs: the utterance's CTC log-probabilities (or logits: they are normalised).
            max_gap_per_frame: the largest gap (nats per emitting frame) still understood.
            blank_penalty: nats taken off the blank's log-probability in every frame, for the
                context's path and the free path alike (the free transcript is read so too):
                a model that drops characters it is unsure of is nudged to spell them.

        Raises:
            ModelError: the shape, dtype or values are wrong.
        """
        x = log_softmax(checked(log_probs, "ctc log-probs", (None, len(self.alphabet.vocab))))
        if blank_penalty:
            x[:, self.alphabet.blank_id] -= blank_penalty
        free = x.argmax(axis=1) if len(x) else np.zeros(0, dtype=np.int64)
        free_text = self._read(free)
        path, score = self.graph.best_path(x)
        if not np.isfinite(score):
            return Understanding(understood=False, intent=None, free_transcript=free_text)
        transcript = self._read(path)
        parsed = self.parse(transcript)
        blank = self.alphabet.blank_id
        emitting = max(1, int(np.count_nonzero((path != blank) | (free != blank))))
        free_score = float(x.max(axis=1).sum())
        gap = max(0.0, free_score - score) / emitting
        return Understanding(
            understood=parsed is not None and gap <= max_gap_per_frame,
            intent=parsed[0] if parsed else None,
            slots=parsed[1] if parsed else {},
            confidence=round(math.exp(-gap), 4),
            transcript=transcript,
            free_transcript=free_text,
            gap_per_frame=round(gap, 4),
        )

    def _read(self, ids: npt.NDArray[np.int64]) -> str:
        """Text of a per-frame token path: repeats collapsed, blanks dropped."""
        if not len(ids):
            return ""
        keep = np.r_[True, ids[1:] != ids[:-1]]
        return " ".join("".join(self._text[i] for i in ids[keep].tolist()).split())

    def _match(
        self, terms: Phrase, pos: int, words: list[str], slots: dict[str, str]
    ) -> Iterator[tuple[int, dict[str, str]]]:
        """Every (end, slots) at which ``terms`` can match ``words`` from ``pos``."""
        if not terms:
            yield pos, slots
            return
        for end, filled in self._match_term(terms[0], pos, words, slots):
            yield from self._match(terms[1:], end, words, filled)

    def _match_term(
        self, term: Term, pos: int, words: list[str], slots: dict[str, str]
    ) -> Iterator[tuple[int, dict[str, str]]]:
        if isinstance(term, Word):
            if pos < len(words) and words[pos] == term.text:
                yield pos + 1, slots
        elif isinstance(term, SlotRef):
            for value, spelled in self.spec.slots[term.slot_type].phrases:
                if tuple(words[pos : pos + len(spelled)]) == spelled:
                    yield pos + len(spelled), {**slots, term.name: value}
        else:
            alternatives = (
                self.spec.macros[term.name].phrases
                if isinstance(term, MacroRef)
                else term.alternatives
            )
            for alt in alternatives:
                yield from self._match(alt, pos, words, slots)
            if isinstance(term, Group) and term.optional:
                yield pos, slots


def compile_context(
    text: str, alphabet: Alphabet, *, source: str = "<context>", name: str | None = None
) -> Context:
    """Parse and compile a context's YAML text.

    Args:
        text: the context file's content.
        alphabet: what the ctc bundle can spell (:meth:`Alphabet.of`).
        source: the file name used in error messages.
        name: the context's name (default: ``source``).

    Raises:
        ContextError: the file is not a valid context for this alphabet.
    """
    return Context(parse_context(text, source=source), alphabet, name=name or source)


def load_context(path: Path, alphabet: Alphabet, *, name: str | None = None) -> Context:
    """Read and compile the context file at ``path`` (the name defaults to the file's stem).

    Raises:
        ContextError: the file cannot be read or is not a valid context for this alphabet.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ContextError(f"{path}:1: cannot read the context: {exc}") from None
    return compile_context(text, alphabet, source=str(path), name=name or path.stem)


def _check(spec: ContextSpec, chars: Mapping[str, int]) -> None:
    """Refuse unknown references, recursive macros, unspellable words and empty expressions."""

    def walk(terms: Phrase, line: int, what: str) -> None:
        for term in terms:
            if isinstance(term, Word):
                _spell(spec, term.text, chars, line, what)
            elif isinstance(term, SlotRef) and term.slot_type not in spec.slots:
                builtin = term.slot_type.startswith("pv.")
                hint = " (built-in pv.* slots are not provided)" if builtin else ""
                raise spec.error(line, f"unknown slot type {term.slot_type!r} in {what}{hint}")
            elif isinstance(term, MacroRef) and term.name not in spec.macros:
                raise spec.error(line, f"unknown macro {term.name!r} in {what}")
            elif isinstance(term, Group):
                for alt in term.alternatives:
                    walk(alt, line, what)

    for slot in spec.slots.values():
        for (text, spelled), line in zip(slot.phrases, slot.lines, strict=True):
            for word in spelled:
                _spell(spec, word, chars, line, f"slot {slot.name!r} phrase {text!r}")
    for macro in spec.macros.values():
        for phrase, line in zip(macro.phrases, macro.lines, strict=True):
            walk(phrase, line, f"macro {macro.name!r}")
    _check_macro_cycles(spec)
    for expression in spec.expressions:
        walk(expression.terms, expression.line, repr(expression.text))
        if _matches_empty(spec, expression.terms):
            raise spec.error(
                expression.line,
                f"expression {expression.text!r} of {expression.intent!r} matches no words "
                "(everything in it is optional)",
            )


def _spell(spec: ContextSpec, word: str, chars: Mapping[str, int], line: int, what: str) -> None:
    missing = unspellable(word, chars)
    if missing:
        raise spec.error(
            line,
            f"the model's alphabet cannot spell {word!r} in {what} (no {''.join(missing)!r}; "
            "write numbers and symbols as spoken words)",
        )


def _references(terms: Phrase) -> Iterator[str]:
    for term in terms:
        if isinstance(term, MacroRef):
            yield term.name
        elif isinstance(term, Group):
            for alt in term.alternatives:
                yield from _references(alt)


def _check_macro_cycles(spec: ContextSpec) -> None:
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in trail:
            cycle = " -> @".join((*trail[trail.index(name) :], name))
            raise spec.error(spec.macros[name].lines[0], f"macro cycle @{cycle}")
        if name in done:
            return
        for phrase in spec.macros[name].phrases:
            for ref in _references(phrase):
                visit(ref, (*trail, name))
        done.add(name)

    for name in spec.macros:
        visit(name, ())


def _matches_empty(spec: ContextSpec, terms: Phrase) -> bool:
    def term_empty(term: Term) -> bool:
        if isinstance(term, Group):
            return term.optional or any(_matches_empty(spec, alt) for alt in term.alternatives)
        if isinstance(term, MacroRef):
            return any(_matches_empty(spec, p) for p in spec.macros[term.name].phrases)
        return False

    return all(term_empty(t) for t in terms)

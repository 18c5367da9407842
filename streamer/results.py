"""What an utterance's results are made of: words, transcripts, intents, timings (protocol v1).

Plain frozen dataclasses, encoded and read by :mod:`streamer.wire` as fields of the events in
:mod:`streamer.protocol` (which re-exports them).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    """One recognised word; times in ms from the stream's first sample."""

    word: str
    start_ms: float
    end_ms: float
    confidence: float


@dataclass(frozen=True)
class Transcript:
    """A CTC transcript: lower-case text and its words.

    ``grammar`` names the intent whose word list held the search (the bundle's grammar for the
    utterance's intent); None when the search was free.
    """

    text: str
    words: tuple[Word, ...] = ()
    grammar: str | None = None


class Alternative(typing.NamedTuple):
    """A runner-up label and its probability."""

    name: str
    confidence: float


@dataclass(frozen=True)
class Intent:
    """The best label of one label set, its runners-up, and whether it is too unsure to act on.

    From a context (:mod:`streamer.contexts`) rather than a classifier, it also carries
    ``context`` (the context's name), ``slots`` (slot name -> value as written in the context)
    and ``understood`` (False: the utterance is out of context; ``name`` and ``slots`` are then
    the best in-context parse, not to be acted on, and ``abstain`` is True). All three stay None
    (left out on the wire) for a classifier's intent.

    From an intents file (:mod:`streamer.intents`), ``intents`` names the file (its stem),
    ``confidence`` and the alternatives' are cosine similarities (-1 to 1, not probabilities),
    and ``abstain`` is True when the best is below the file's threshold (``name`` is then still
    the nearest intent, not to be acted on).
    """

    name: str
    confidence: float
    alternatives: tuple[Alternative, ...] = ()
    abstain: bool = False
    slots: dict[str, str] | None = None
    understood: bool | None = None
    context: str | None = None
    intents: str | None = None


@dataclass(frozen=True)
class Latency:
    """Where an utterance's time went, in ms."""

    end_of_speech_to_emit: float
    queued: float
    encode: float
    decode: float


@dataclass(frozen=True)
class ModelInfo:
    """A model a stream's utterances run through."""

    name: str
    task: str
    arch: str


@dataclass(frozen=True)
class PartialWord:
    """A word of a partial hypothesis; ``stable`` words never change in a later partial."""

    word: str
    start_ms: float
    end_ms: float
    confidence: float
    stable: bool

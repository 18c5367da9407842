"""Words while they are spoken: the stable prefix of partial hypotheses, and its settings. No I/O.

A partial run decodes a bounded window of the open utterance (:func:`partial_window`: from
``lookback_ms`` before the end of the last stable word to now, at most ``max_window_s``), so its
cost does not grow with the utterance. :class:`StableWords` turns the successive hypotheses into
what a caption can show without flicker (LocalAgreement-n, n = ``agree``, 3 by default):

* a word becomes **stable** when ``agree`` consecutive hypotheses agree on it, in order, right
  after the words already stable, and in each it ends at least ``guard_ms`` before the end of
  the window that heard it (the last few hundred ms of a window are still being spoken, and a
  CTC model rereads them when the next audio arrives: two windows that both cut a word short
  agree on the wrong word) and has a confidence of at least ``stable_confidence`` (the words
  the whole-utterance decoding reads differently are more often unsure ones), and it has at
  least ``stable_min_chars`` characters: one-character words (spelled letters) wait for the
  final, and so do the words after them (on validation speakers the whole-utterance decoding
  read 12.9% of the letters three windows agreed on differently, against 1.5% of longer words);
  with ``agree_whole_window`` the windows must also read alike every later word the oldest of
  them heard end before its guard: where a window's reading of a stretch still changes, the
  model is unsure of it (speech it never learnt), and a word agreed before it waits too; with
  ``stable_greedy`` each of those windows' greedy reading (the acoustics alone, without the
  language model) must hold the word too: on speech outside its vocabulary the LM pulls the
  windows onto words it knows, which the whole utterance then reads otherwise;
* a stable word is never changed or withdrawn: later hypotheses only ever add stable words;
* hypotheses are aligned by time: a window starts before the last stable word ends (so the model
  hears context), and its words whose middle lies before that end are the stable words heard
  again, not new ones (no duplicated words where windows overlap).

The final ``utterance`` event is decoded from the whole utterance as if no partial had run: it
replaces the partials; it is not glued from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamer.errors import ConfigError
from streamer.results import PartialWord, Word
from streamer.serving_config import positive


@dataclass(frozen=True)
class PartialsConfig:
    """Partial transcripts and eager results: the ``[partials]`` config section.

    A stream opts in with ``start.want`` (``partial``, ``eager``).
    """

    interval_ms: int = 500
    """Audio between two partial runs of an open utterance."""
    lookback_ms: int = 1000
    """A partial window starts this long before the end of the last stable word."""
    max_window_s: float = 4.0
    """A partial window is at most this long, however long the utterance (bounded cost)."""
    guard_ms: int = 300
    """Words ending within this of the window's end are never made stable."""
    agree: int = 3
    """Consecutive partial hypotheses that must agree on a word before it is stable (>= 2)."""
    stable_confidence: float = 0.5
    """A word is made stable only if its confidence is at least this in each of them."""
    stable_min_chars: int = 2
    """A word shorter than this (characters) is never made stable: it waits for the final."""
    agree_whole_window: bool = True
    """Words become stable only when the agreeing windows also agree on every later word the
    oldest of them heard end before its guard (letters included); false: on the words alone."""
    stable_greedy: bool = True
    """A word becomes stable only if each agreeing window's greedy reading (the acoustics
    alone, no language model) holds it too, at the same time."""
    engine_share: float = 0.3
    """Share of the engine's time (all workers) partial runs may take, over ``share_window_s``;
    past it a partial run is skipped. Partial runs never start while an utterance waits."""
    share_window_s: float = 10.0
    """The sliding window over which ``engine_share`` is measured."""
    eager_silence_ms: int = 200
    """Silence after which an ``eager`` result is computed (once the cut can no longer move)."""

    def __post_init__(self) -> None:
        positive(self, "interval_ms", "max_window_s", "share_window_s", "eager_silence_ms")
        if self.lookback_ms < 0 or self.guard_ms < 0:
            raise ConfigError("partials.lookback_ms and partials.guard_ms must be >= 0")
        if self.agree < 2:
            raise ConfigError(f"partials.agree must be >= 2, got {self.agree}")
        if self.stable_min_chars < 1:
            raise ConfigError(
                f"partials.stable_min_chars must be >= 1, got {self.stable_min_chars}"
            )
        if not 0 <= self.stable_confidence <= 1:
            raise ConfigError(
                f"partials.stable_confidence must be in [0, 1], got {self.stable_confidence}"
            )
        if not 0 < self.engine_share <= 1:
            raise ConfigError(f"partials.engine_share must be in (0, 1], got {self.engine_share}")


def partial_window(*, now_ms: float, stable_end_ms: float | None, config: PartialsConfig) -> float:
    """Stream time (ms) where the next partial window starts (at least 0, the stream's start).

    ``stable_end_ms``: the end of the open utterance's last stable word (None: none yet). The
    caller clamps the start to the utterance's audio (:meth:`Segmenter.open_audio` does).
    """
    start = 0.0 if stable_end_ms is None else stable_end_ms - config.lookback_ms
    return max(0.0, start, now_ms - config.max_window_s * 1000.0)


class StableWords:
    """The stable prefix of one utterance's partial hypotheses (LocalAgreement-n, see module)."""

    def __init__(
        self,
        *,
        guard_ms: float,
        agree: int = 2,
        min_confidence: float = 0.0,
        min_chars: int = 1,
        whole_window: bool = False,
        greedy: bool = False,
    ) -> None:
        """Start an utterance with no stable word; the knobs: see :class:`PartialsConfig`."""
        if agree < 2:
            raise ValueError(f"agree must be >= 2, got {agree}")
        self.guard_ms = guard_ms
        self.agree = agree
        self.min_confidence = min_confidence
        self.min_chars = min_chars
        self.whole_window = whole_window
        self.greedy = greedy
        self.stable: list[Word] = []
        self.revision = 0
        # the last hypotheses, their windows' ends and greedy readings
        self._history: list[tuple[list[Word], float, Sequence[Word]]] = []

    @property
    def stable_end_ms(self) -> float | None:
        """End of the last stable word (None before the first)."""
        return self.stable[-1].end_ms if self.stable else None

    def update(
        self, words: Sequence[Word], *, window_end_ms: float, greedy_words: Sequence[Word] = ()
    ) -> tuple[PartialWord, ...]:
        """Take the hypothesis of a new window (words in stream time); return the partial's words.

        ``greedy_words``: the same window's greedy reading (read only with ``greedy`` on). The
        result is every stable word (flag set), then this hypothesis's words after them.
        """
        self._history = [
            *self._history[-(self.agree - 1) :],
            (list(words), window_end_ms, greedy_words),
        ]
        hypotheses = [(self._after_stable(ws), end - self.guard_ms) for ws, end, _ in self._history]
        readings = [g for _, _, g in self._history]
        fresh = hypotheses[-1][0]
        n = 0
        while (
            len(hypotheses) == self.agree
            and n < len(fresh)
            and len(fresh[n].word) >= self.min_chars
            and all(
                n < len(ws)
                and ws[n].word == fresh[n].word
                and ws[n].end_ms <= limit
                and ws[n].confidence >= self.min_confidence
                and (not self.greedy or _heard(ws[n], reading))
                for (ws, limit), reading in zip(hypotheses, readings, strict=True)
            )
        ):
            n += 1
        if n and self.whole_window and not _agree_to_guard(hypotheses):
            n = 0
        self.stable.extend(fresh[:n])
        self.revision += 1
        return (*(_flagged(w, True) for w in self.stable), *(_flagged(w, False) for w in fresh[n:]))

    def _after_stable(self, words: Sequence[Word]) -> list[Word]:
        end = self.stable_end_ms
        if end is None:
            return list(words)
        return [w for w in words if (w.start_ms + w.end_ms) / 2 > end]


def _agree_to_guard(hypotheses: Sequence[tuple[list[Word], float]]) -> bool:
    """Every hypothesis reads the words the oldest heard end before its limit the same way."""
    oldest, limit = hypotheses[0]
    settled = [w.word for w in oldest if w.end_ms <= limit]
    return all([w.word for w in ws[: len(settled)]] == settled for ws, _ in hypotheses)


def _heard(word: Word, reading: Sequence[Word]) -> bool:
    """Whether ``reading`` holds ``word``: the same text, overlapping it in time."""
    return any(
        w.word == word.word and w.start_ms < word.end_ms and word.start_ms < w.end_ms
        for w in reading
    )


def _flagged(word: Word, stable: bool) -> PartialWord:
    return PartialWord(word.word, word.start_ms, word.end_ms, word.confidence, stable)

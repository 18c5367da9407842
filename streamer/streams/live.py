"""Results while a stream speaks: ``partial`` transcripts and ``eager`` end-of-turn results.

A :class:`~streamer.streams.pipeline.StreamPipeline` whose client asked for them (``start.want``)
owns one :class:`LiveResults` and calls it from the event loop, in stream order: when speech
starts, after each fed chunk, and when the segmenter cuts an utterance. Nothing here changes what
the segmenter decides or how the final result is decoded, so the final ``utterance`` event is
the same with live results on or off (timings aside).

* **Partial**: every ``partials.interval_ms`` of audio while an utterance is open, the first ctc
  model runs on a bounded window of it (:func:`streamer.partials.partial_window`) as background
  work: it starts only when no utterance waits for the engine and partial runs are within their
  share of engine time (step 0 of :mod:`streamer.overload`), one at a time per stream. A tick
  that finds the previous run still going is skipped. A partial run under way is stopped as
  soon as an utterance needs the engine (pre-emption with onnxruntime's ``RunOptions.terminate``
  in the batcher: a 4 s window costs 27 ms, a stopped one returns within 1.5-3 ms,
  bench/partial_cancel.py), and when the utterance is cut a partial run not started yet never
  starts and the result of one still running is discarded. :class:`~streamer.partials.StableWords`
  keeps what two hypotheses agree on.
* **Eager**: once :meth:`~streamer.segmenter.Segmenter.eager_cut` is certain what silence will
  cut, the full pipeline runs on exactly that audio and its result is sent as ``eager``. If the
  segmenter then cuts that very utterance, the final reuses the eager run (no second run); if
  speech resumes first, ``resumed`` withdraws the eager result (when it was sent) and the run is
  forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer import protocol as proto
from streamer.decoding import OutputDecoder
from streamer.errors import PreemptedError
from streamer.partials import StableWords, partial_window
from streamer.results import Transcript, Word
from streamer.segmenter import Segmenter, UtteranceReady
from streamer.streams.services import Services, admit_partial

log = logging.getLogger(__name__)

Infer = Callable[[UtteranceReady, str, int, float], Coroutine[Any, Any, proto.Utterance]]


@dataclass
class _Eager:
    cut: UtteranceReady
    utterance_id: str
    task: asyncio.Task[proto.Utterance]
    sent: bool = False


@dataclass
class LiveCounters:
    """What the live results of one stream did (for tests, logs and the benchmark)."""

    partial_runs: int = 0
    partials_sent: int = 0
    partials_skipped: int = 0
    """Ticks with a partial run of this stream still going."""
    partials_dropped: int = 0
    """Ticks refused by step 0 of the overload contract."""
    partials_preempted: int = 0
    """Partial runs stopped midway because an utterance needed the engine."""
    eager_runs: int = 0
    eager_sent: int = 0
    eager_reused: int = 0
    resumed: int = 0


class LiveResults:
    """Partial and eager results of one stream (see the module)."""

    def __init__(
        self,
        services: Services,
        segmenter: Segmenter,
        *,
        stream: str,
        rate_hz: int,
        ctc_model: str | None,
        partial: bool,
        eager: bool,
        infer: Infer,
        publish: Callable[[proto.ServerEvent], None],
        align: Callable[[UtteranceReady], UtteranceReady],
    ) -> None:
        """Prepare live results; ``ctc_model`` is the model partials decode (None: no partials)."""
        self.services = services
        self.config = services.config.partials
        self.segmenter = segmenter
        self.stream = stream
        self.rate_hz = rate_hz
        self.ctc_model = ctc_model if partial else None
        self.eager_on = eager
        self.infer = infer
        self.publish = publish
        self.align = align
        self.counters = LiveCounters()
        self._utterance: tuple[str, int] | None = None  # (id, seq) of the open utterance
        self._words: StableWords | None = None
        self._next_partial = 0
        self._partial: asyncio.Task[None] | None = None
        self._eager: _Eager | None = None

    def started(self, utterance_id: str, seq: int, start_sample: int) -> None:
        """Speech started: a new utterance is open."""
        self._utterance = (utterance_id, seq)
        self._words = StableWords(
            guard_ms=self.config.guard_ms,
            agree=self.config.agree,
            min_confidence=self.config.stable_confidence,
            min_chars=self.config.stable_min_chars,
            whole_window=self.config.agree_whole_window,
            greedy=self.config.stable_greedy,
        )
        self._next_partial = start_sample + self._samples(self.config.interval_ms)

    def after_feed(self, previous: asyncio.Task[None] | None) -> None:
        """Audio was fed: withdraw, start or schedule what is due.

        ``previous``: the task emitting the stream's last cut utterance (an eager result is sent
        after it, so the stream's results keep their order).
        """
        if self._utterance is None or not self.segmenter.speaking:
            return
        self._check_resumed()
        if self.eager_on and self._eager is None:
            cut = self.segmenter.eager_cut(self.config.eager_silence_ms)
            if cut is not None:
                self._start_eager(self.align(cut), previous)
        if self.ctc_model is not None and self.segmenter.samples_seen >= self._next_partial:
            self._next_partial = self.segmenter.samples_seen + self._samples(
                self.config.interval_ms
            )
            self._tick_partial()

    def cut(self, utt: UtteranceReady) -> asyncio.Task[proto.Utterance] | None:
        """The segmenter cut ``utt`` (aligned): end the open utterance's live results.

        Returns the eager run to reuse as the final result when it ran on exactly this audio.
        """
        utterance, self._utterance = self._utterance, None
        self._words = None
        if self._partial is not None:
            self._partial.cancel()  # not started: never starts; running: result discarded
            self._partial = None
        eager, self._eager = self._eager, None
        if eager is None:
            return None
        if same_cut(eager.cut, utt):
            self._count("eager_reused", "eager", "reused")
            return eager.task
        eager.task.cancel()
        if eager.sent and utterance is not None:  # speech resumed and ended within one chunk
            self._withdraw(utterance)
        return None

    async def partial_done(self) -> None:
        """Wait for the partial run under way, if any (a replay faster than real time)."""
        if self._partial is not None:
            await self._partial

    async def close(self) -> None:
        """Stop every live run of the stream (the stream ended)."""
        tasks = [t for t in (self._partial, self._eager.task if self._eager else None) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # ---------------------------------------------------------------- eager

    def _check_resumed(self) -> None:
        eager = self._eager
        end = self.segmenter.open_end_sample
        if eager is None or end is None or end <= eager.cut.speech_end_sample:
            return
        self._eager = None
        eager.task.cancel()
        if eager.sent and self._utterance is not None:
            self._withdraw(self._utterance)

    def _withdraw(self, utterance: tuple[str, int]) -> None:
        self._count("resumed", "eager", "resumed")
        utterance_id, seq = utterance
        self.publish(proto.Resumed(stream=self.stream, utterance_id=utterance_id, seq=seq))

    def _start_eager(self, cut: UtteranceReady, previous: asyncio.Task[None] | None) -> None:
        assert self._utterance is not None
        utterance_id, seq = self._utterance
        heard_after_s = max(0, self.segmenter.samples_seen - cut.speech_end_sample) / self.rate_hz
        ready_at = time.perf_counter() - heard_after_s
        self._count("eager_runs", "eager", "run")
        task = asyncio.get_running_loop().create_task(
            self.infer(cut, utterance_id, seq, ready_at), name=f"eager-{self.stream}-{seq}"
        )
        eager = _Eager(cut=cut, utterance_id=utterance_id, task=task)
        self._eager = eager
        task.add_done_callback(lambda done: self._eager_done(eager, done, previous))

    def _eager_done(
        self,
        eager: _Eager,
        done: asyncio.Task[proto.Utterance],
        previous: asyncio.Task[None] | None,
    ) -> None:
        if done.cancelled() or done.exception() is not None:
            return  # the final runs (or reports the failure) on its own
        if previous is not None and not previous.done():
            previous.add_done_callback(lambda _: self._eager_done(eager, done, None))
            return
        if self._eager is not eager:
            return  # resumed, or already cut: the final follows at once
        event = done.result()
        self._count("eager_sent", "eager", "sent")
        eager.sent = True
        self.publish(proto.Eager(**{f.name: getattr(event, f.name) for f in _EAGER_FIELDS}))

    # ---------------------------------------------------------------- partial

    def _tick_partial(self) -> None:
        if self._partial is not None and not self._partial.done():
            self._count("partials_skipped", "partial", "skipped")
            return
        if not admit_partial(self.services):
            self._count("partials_dropped", "partial", "dropped")
            return
        words, utterance = self._words, self._utterance
        if words is None or utterance is None or self.ctc_model is None:
            return
        now = self.segmenter.samples_seen
        start_ms = partial_window(
            now_ms=self._ms(now),
            stable_end_ms=words.stable_end_ms,
            config=self.config,
        )
        held = self.segmenter.open_audio(round(start_ms * self.rate_hz / 1000.0))
        min_samples = self.services.runner.encoders[self.ctc_model].manifest.min_samples
        if held is None or held[1].size < min_samples:
            return
        first, audio = held
        self._count("partial_runs", "partial", "run")
        self._partial = asyncio.get_running_loop().create_task(
            self._run_partial(utterance, words, first, audio),
            name=f"partial-{self.stream}",
        )

    async def _run_partial(
        self, utterance: tuple[str, int], words: StableWords, first: int, audio: np.ndarray
    ) -> None:
        model = self.ctc_model
        assert model is not None
        try:
            result = await self.services.runner.infer(model, audio, background=True)
            decoder = self.services.decoders[model]
            logits = result.outputs["logits"][0]
            offset_ms = self._ms(first)
            transcript, greedy = await asyncio.to_thread(
                _readings, decoder, logits, offset_ms, greedy=self.config.stable_greedy
            )
        except asyncio.CancelledError:
            raise
        except PreemptedError:  # an utterance needed the engine: this partial is given up
            self._count("partials_preempted", "partial", "preempted")
            return
        except Exception as exc:  # a failed partial costs that partial, nothing else
            log.warning("stream %s: a partial run failed: %s", self.stream, exc)
            return
        if self._utterance != utterance or self._words is not words:
            return  # the utterance was cut meanwhile: its final replaces every partial
        end_ms = self._ms(first + audio.size)
        flagged = words.update(transcript.words, window_end_ms=end_ms, greedy_words=greedy)
        self._count("partials_sent", "partial", "sent")
        self.publish(
            proto.Partial(
                stream=self.stream,
                utterance_id=utterance[0],
                seq=utterance[1],
                revision=words.revision,
                stable_text=" ".join(w.word for w in flagged if w.stable),
                text=" ".join(w.word for w in flagged),
                words=flagged,
            )
        )

    def _count(self, counter: str, kind: str, outcome: str) -> None:
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        self.services.metrics.live_work(kind, outcome)

    def _samples(self, ms: float) -> int:
        return round(ms * self.rate_hz / 1000.0)

    def _ms(self, n_samples: int) -> float:
        return round(n_samples * 1000.0 / self.rate_hz, 1)


_EAGER_FIELDS = dataclasses.fields(proto.Eager)


def same_cut(a: UtteranceReady, b: UtteranceReady) -> bool:
    """Whether two cuts are the same utterance: bounds, forced flag and audio."""
    return (
        a.audio_start_sample == b.audio_start_sample
        and a.speech_start_sample == b.speech_start_sample
        and a.speech_end_sample == b.speech_end_sample
        and a.forced_cut == b.forced_cut
        and np.array_equal(a.audio, b.audio)
    )


def _readings(
    decoder: OutputDecoder, logits: npt.ArrayLike, offset_ms: float, *, greedy: bool
) -> tuple[Transcript, tuple[Word, ...]]:
    """A partial window's transcript, and its greedy words when ``greedy`` (one thread hop)."""
    transcript = decoder.transcribe(logits, offset_ms)
    return transcript, decoder.greedy(logits, offset_ms).words if greedy else ()

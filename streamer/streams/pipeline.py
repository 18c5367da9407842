"""One stream's path, shared by every source: PCM → converter → segmenter → engine → decoders → out.

WebSocket ingest, the microphone and ``streamer transcribe`` all build a :class:`StreamPipeline`
and feed it; a bug fixed here is fixed for the three. Results leave through the :class:`Hub`
(every matching subscriber) and through the pipeline's own ``emit`` callback (the ingesting
connection, or stdout for ``transcribe``).

Ordering: each utterance becomes a task; a task awaits its predecessor before it emits, so a
stream's results leave in ``seq`` order even when a later utterance finishes inference first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from streamer import overload, protocol as proto
from streamer.audio import AudioConverter, AudioFormat
from streamer.buckets import is_priority, stream_buckets
from streamer.config import build_section
from streamer.contexts import Context
from streamer.decoding import Decoded, decode_utterance
from streamer.errors import OverloadedError, StreamerError
from streamer.segmenter import Segmenter, SpeechStarted, UtteranceReady
from streamer.segmenter_config import SegmenterConfig
from streamer.streams.live import LiveResults
from streamer.streams.services import Services, admit_utterance

log = logging.getLogger(__name__)

Emit = Callable[[proto.ServerEvent], None]


class StreamPipeline:
    """The per-stream pipeline; feed it audio, then :meth:`finish` it.

    Call contract: :meth:`feed_pcm` (or :meth:`feed_samples`) and :meth:`flush` from the event
    loop thread, in stream order; then ``await finish()`` once, which flushes and waits until
    every utterance's result was emitted. Never raises for a failed utterance: that becomes an
    ``error`` event for the utterance.
    """

    def __init__(
        self,
        services: Services,
        *,
        stream: str,
        fmt: AudioFormat,
        models: Sequence[str],
        segmenter: SegmenterConfig,
        emit: Emit | None = None,
        want: Sequence[str] = (),
        context: str | None = None,
    ) -> None:
        """Build the pipeline of one stream (see the class contract for how to feed it).

        ``context`` names one of ``services.contexts`` to understand each utterance in (checked
        by the caller); None: no context.
        """
        self.services = services
        self.stream = stream
        self.models = tuple(models)
        self.emit = emit
        self.want_embedding = "embedding" in want
        self.context: Mapping[str, Context] = services.contexts[context] if context else {}
        rate = services.runner.encoders[self.models[0]].manifest.sample_rate
        self.rate_hz = rate
        self.converter = AudioConverter(fmt, target_rate_hz=rate)
        self.segmenter = Segmenter(segmenter)
        self.buckets = stream_buckets(services.config.engine, rate_hz=rate)
        self.priority = is_priority(services.runner.encoders[m].manifest for m in self.models)
        self.n_utterances = 0
        self.n_errors = 0
        self.origin_samples = 0
        """Stream samples heard before the stream's own audio (a file's lead-in): times count
        from there."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: asyncio.Task[None] | None = None
        self._current_id: str | None = None
        self._finished = False
        ctc = [m for m in self.models if services.runner.encoders[m].manifest.task == "ctc"]
        self.live: LiveResults | None = None
        if "partial" in want or "eager" in want:
            self.live = LiveResults(
                services,
                self.segmenter,
                stream=stream,
                rate_hz=rate,
                ctc_model=ctc[0] if ctc else None,
                partial="partial" in want,
                eager="eager" in want,
                infer=self._infer,
                publish=self.publish,
                align=self.buckets.align,
            )

    def feed_pcm(self, data: bytes) -> None:
        """Feed raw PCM bytes in the stream's format (already checked by the protocol)."""
        if not self._finished:  # audio after finish() (a drained daemon) is ignored
            self._segment(self.converter.convert(data))

    def hear_lead_in(
        self, samples: npt.NDArray[np.float32], *, rate_hz: int, stream_samples: int | None = None
    ) -> None:
        """Let the segmenter hear ``samples`` (float32 mono at ``rate_hz``) before any audio.

        The stream's own audio then starts at 0 ms; ``samples`` is a file's
        :func:`~streamer.audio.quiet_lead_in`. Only the segmenter hears it: an utterance cut
        within it is dropped, and the models never hear its audio. ``stream_samples`` (at
        ``rate_hz``) announces the stream's length, a file read ahead
        (``segmenter.file_tail_ms``).

        Raises:
            RuntimeError: audio was already fed.
        """
        if self.segmenter.samples_seen:
            raise RuntimeError("a lead-in goes before the stream's first audio")
        lead = np.asarray(samples, dtype=np.float32)
        if rate_hz != self.rate_hz:
            lead = np.asarray(soxr.resample(lead, rate_hz, self.rate_hz), dtype=np.float32)
        length = None if stream_samples is None else round(stream_samples * self.rate_hz / rate_hz)
        opened = self.segmenter.hear_lead_in(lead, stream_samples=length)
        self.origin_samples = self.segmenter.samples_seen
        if opened is not None:  # speech the file goes on with: announced at 0 ms
            self._handle([opened])

    def feed_samples(self, samples: npt.NDArray[np.float32]) -> None:
        """Feed float32 mono samples at the stream's input rate (microphone, files)."""
        if not self._finished:  # the resampler was flushed; feeding it again would fail
            self._segment(self.converter.resample(samples))

    def flush(self) -> None:
        """End the current utterance now (client ``flush``)."""
        self._handle(self.segmenter.flush())

    async def finish(self) -> None:
        """Flush the resampler and the segmenter, then wait for every pending result.

        Idempotent: a second call only waits.
        """
        if not self._finished:
            self._finished = True
            self._segment(self.converter.finish())
            self.flush()
        await self.drain()
        if self.live is not None:
            await self.live.close()

    @property
    def backlog(self) -> int:
        """Utterances handed to the engine whose results have not been emitted yet."""
        return len(self._tasks)

    async def wait_backlog(self, limit: int) -> None:
        """Wait until at most ``limit`` utterances are pending (backpressure for file sources)."""
        while len(self._tasks) > limit:
            await asyncio.wait(list(self._tasks), return_when=asyncio.FIRST_COMPLETED)

    async def drain(self) -> None:
        """Wait until every utterance handed to the engine so far has been emitted."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _segment(self, samples: npt.NDArray[np.float32]) -> None:
        if samples.size:
            self._handle(self.segmenter.feed(samples))
            if self.live is not None:
                self.live.after_feed(self._last)

    def _handle(self, events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                self._current_id = uuid.uuid4().hex[:12]
                self.publish(
                    proto.SpeechStarted(
                        stream=self.stream,
                        utterance_id=self._current_id,
                        seq=self.n_utterances,
                        start_ms=max(0.0, self._ms(event.start_sample)),
                    )
                )
                if self.live is not None:
                    self.live.started(self._current_id, self.n_utterances, event.start_sample)
            elif isinstance(event, UtteranceReady):
                self._schedule(event)

    def _schedule(self, utt: UtteranceReady) -> None:
        utt = self._from_origin(utt)
        utt = self.buckets.align(utt)  # equal lengths can share a run (streamer/buckets.py)
        eager = self.live.cut(utt) if self.live is not None else None
        utt_id = self._current_id or uuid.uuid4().hex[:12]
        self._current_id = None
        seq = self.n_utterances
        self.n_utterances += 1
        self.services.metrics.utterance_pending(self.stream, seq)
        # Latency counts from the end of speech, not from the segmenter's decision: the audio
        # heard since the speech ended (the hangover) is taken as having arrived in real time.
        heard_after_s = max(0, self.segmenter.samples_seen - utt.speech_end_sample) / self.rate_hz
        end_of_speech = time.perf_counter() - heard_after_s
        task = asyncio.get_running_loop().create_task(
            self._process(utt, utt_id, seq, end_of_speech, self._last, eager),
            name=f"utterance-{self.stream}-{seq}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._last = task

    async def _process(
        self,
        utt: UtteranceReady,
        utt_id: str,
        seq: int,
        ready_at: float,
        previous: asyncio.Task[None] | None,
        eager: asyncio.Task[proto.Utterance] | None = None,
    ) -> None:
        decided_at = time.perf_counter()  # the segmenter's decision: what lag_ms counts from
        try:
            event: proto.ServerEvent = await self._result(utt, utt_id, seq, ready_at, eager)
        except StreamerError as exc:
            self.n_errors += 1
            code = proto.OVERLOADED if isinstance(exc, OverloadedError) else proto.MODEL_FAILED
            log.warning("stream %s utterance %d failed: %s", self.stream, seq, exc)
            event = proto.Error(
                code=code, message=str(exc), stream=self.stream, utterance_id=utt_id
            )
        except Exception:  # a bug must cost one utterance, not the stream
            self.n_errors += 1
            log.exception("stream %s utterance %d: unexpected failure", self.stream, seq)
            event = proto.Error(
                code=proto.INTERNAL,
                message="internal error",
                stream=self.stream,
                utterance_id=utt_id,
            )
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        if isinstance(event, proto.Utterance):
            latency = event.latency_ms
            emit_ms = (time.perf_counter() - ready_at) * 1000.0
            event = _with_latency(event, emit_ms, latency)
            event = overload.with_lag(
                event,
                since_decision_ms=(time.perf_counter() - decided_at) * 1000.0,
                report_ms=self.services.config.engine.lag_report_ms,
            )
        self.services.metrics.utterance_done(self.stream, seq, event)
        self.publish(event)

    async def _result(
        self,
        utt: UtteranceReady,
        utt_id: str,
        seq: int,
        ready_at: float,
        eager: asyncio.Task[proto.Utterance] | None,
    ) -> proto.Utterance:
        """The utterance's result: the eager run on the same audio when there was one."""
        if eager is not None:
            with contextlib.suppress(StreamerError):  # it failed (shed, overloaded): run again
                return await eager
        return await self._infer(utt, utt_id, seq, ready_at)

    async def _infer(
        self, utt: UtteranceReady, utt_id: str, seq: int, ready_at: float
    ) -> proto.Utterance:
        runner = self.services.runner
        admit_utterance(self.services, self.stream, live=self.emit is not None)
        runner.reserve()
        try:
            results = [
                await runner.infer(m, utt.audio, priority=self.priority) for m in self.models
            ]
        finally:
            runner.release()
        self.services.metrics.observe_runs(self.models, results)
        offset_ms = self._ms(utt.audio_start_sample)

        rows = {
            name: {key: value[0] for key, value in result.outputs.items()}
            for name, result in zip(self.models, results, strict=True)
        }
        decoder = self.services.config.decoder

        def decode_all() -> Decoded:
            return decode_utterance(
                self.services.decoders,
                rows,
                offset_ms=offset_ms,
                want_embedding=self.want_embedding,
                context=self.context,
                max_gap_per_frame=decoder.context_max_gap_per_frame,
                blank_penalty=decoder.context_blank_penalty,
            )

        decode_start = time.perf_counter()
        # A CTC beam search takes milliseconds to tens of them: off the event loop, so other
        # streams' audio keeps flowing meanwhile.
        decoded = await asyncio.to_thread(decode_all)
        decode_ms = (time.perf_counter() - decode_start) * 1000.0
        return proto.Utterance(
            stream=self.stream,
            utterance_id=utt_id,
            seq=seq,
            start_ms=max(0.0, self._ms(utt.speech_start_sample)),
            end_ms=self._ms(utt.speech_end_sample),
            models=self.models,
            latency_ms=proto.Latency(
                end_of_speech_to_emit=(time.perf_counter() - ready_at) * 1000.0,
                queued=round(sum(r.queued_ms for r in results), 2),
                encode=round(sum(r.encode_ms for r in results), 2),
                decode=round(decode_ms, 2),
            ),
            transcript=decoded.transcript,
            intent=decoded.intent,
            labels=decoded.labels,
            value=decoded.value,
            embedding=decoded.embedding,
        )

    def publish(self, event: proto.ServerEvent) -> None:
        """Send ``event`` to the hub (matching subscribers) and to this stream's ``emit``."""
        self.services.hub.publish(event.type, self.stream, event.encode())
        if self.emit is not None:
            self.emit(event)

    def _from_origin(self, utt: UtteranceReady) -> UtteranceReady:
        """``utt`` without the audio of the lead-in: the models hear the stream's own audio.

        Only as much lead-in stays as the models' minimum length needs, if the file's part of
        the utterance is shorter than that.
        """
        cut = self.origin_samples - utt.audio_start_sample
        cut = min(cut, utt.audio.size - self.segmenter.config.min_utterance_samples)
        if cut <= 0:
            return utt
        return dataclasses.replace(
            utt,
            audio=utt.audio[cut:],
            audio_start_sample=utt.audio_start_sample + cut,
            speech_start_sample=max(utt.speech_start_sample, self.origin_samples),
        )

    def _ms(self, n_samples: int) -> float:
        """Stream time of a segmenter sample count (negative inside a lead-in)."""
        return round((n_samples - self.origin_samples) * 1000.0 / self.rate_hz, 1)


def stream_segmenter_config(
    services: Services, models: Iterable[str], overrides: Mapping[str, Any]
) -> SegmenterConfig:
    """A stream's segmenter settings: server defaults, then overrides, then the models' minimum.

    Raises:
        ConfigError: an override is unknown or out of range.
    """
    base = services.config.segmenter
    min_samples = max(services.runner.encoders[m].manifest.min_samples for m in models)
    values = {**overrides, "min_utterance_samples": max(base.min_utterance_samples, min_samples)}
    seg: SegmenterConfig = build_section(SegmenterConfig, values, base=base)
    return seg


def _with_latency(
    event: proto.Utterance, emit_ms: float, latency: proto.Latency
) -> proto.Utterance:
    """Return ``event`` with end-of-speech-to-emit measured at the moment it leaves."""
    return dataclasses.replace(
        event,
        latency_ms=dataclasses.replace(latency, end_of_speech_to_emit=round(emit_ms, 2)),
    )

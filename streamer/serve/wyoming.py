"""Wyoming protocol endpoint (Home Assistant, Rhasspy) on the daemon's own per-stream pipeline.

Framing and event types come from the ``wyoming`` package (checked against wyoming 1.10.2);
this module only maps them onto :class:`~streamer.streams.pipeline.StreamPipeline`, exactly as
WebSocket ingest does. One connection serves any number of requests, one at a time::

    → describe                       ← info (asr program: one model per bundle)
    → transcribe (optional: name, language)
    → audio-start (rate, width, channels)
                                     ← transcript-start
    → audio-chunk ...                ← transcript-chunk (one per utterance, as each finishes)
    → audio-stop                     ← transcript (every utterance's text, joined)
                                     ← transcript-stop
                                     ← intent | intents-start, intent..., intents-stop
                                       | not-recognized   (only when a bundle gives intents)

Audio may come in any format :mod:`streamer.audio` accepts from every endpoint (8-192 kHz,
1 or 2 channels, averaged), as signed little-endian integer PCM of 1-4 bytes per sample (the
``audioop`` convention Wyoming uses). ``recognize`` (text → intent) is answered
``not-recognized``: the intent bundles classify audio, not text, so no intent program is
advertised. Unknown events are ignored, as the protocol asks. Wyoming has no authentication:
bind it to a trusted network only.

Each request's stream (``wyoming-N``) is admitted by the stream registry, as every source's is.
A malformed event, or a header line that is JSON but no event, is answered ``error`` and closes
the connection; it costs at most one rate-limited log line. The TCP server that accepts and
drains connections is :mod:`streamer.serve.wyoming_server`; ``info`` and the intent events are
built in :mod:`streamer.serve.wyoming_events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import typing
from collections import deque
from dataclasses import dataclass, field
from typing import Final, TypeVar

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error as WyomingError
from wyoming.event import Event, Eventable, async_read_event
from wyoming.info import Describe, Info
from wyoming.intent import NotRecognized, Recognize
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler

from streamer import protocol as proto
from streamer.audio import AudioFormat, pcm_to_float
from streamer.errors import AudioFormatError, ProtocolError, StreamerError
from streamer.serve.wyoming_events import intent_events
from streamer.streams.feed import sample_pipeline
from streamer.streams.pipeline import StreamPipeline
from streamer.streams.registry import StreamClaim
from streamer.streams.services import Services

log = logging.getLogger(__name__)

ENDPOINT: Final = "wyoming"
#: Utterances of one request allowed in flight before reading more audio (TCP backpressure).
BACKLOG: Final = 4


class BadRequestError(StreamerError):
    """A Wyoming event the server cannot act on (bad audio format, unknown model, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Request:
    """One transcribe request: its input format, pipeline and the results so far."""

    stream: str
    fmt: AudioFormat
    language: str | None
    claim: StreamClaim
    pipeline: StreamPipeline | None = None
    leftover: bytes = b""
    utterances: list[proto.Utterance] = field(default_factory=list)
    n_errors: int = 0


class WyomingHandler(AsyncEventHandler):
    """One Wyoming connection: reads events with the wyoming package and answers them.

    Everything it sends goes through one ordered outbox, so a ``transcript-chunk`` emitted by
    the pipeline never overtakes the request's final ``transcript``.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        services: Services,
        info: Info,
        language: str | None,
    ) -> None:
        """Serve one connection; ``info`` answers ``describe``, ``language`` is the default."""
        super().__init__(reader, writer)
        self.services = services
        self.info = info
        self.language = language
        self.transcribe = Transcribe()
        self.request: _Request | None = None
        self.closing = False
        self._outbox: deque[Event] = deque()
        self._write_lock = asyncio.Lock()
        self._flushers: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Answer events until the client leaves, a request is refused, or the server stops."""
        self._is_running = True
        try:
            while self._is_running:
                try:
                    event = await _read_event(self.reader)
                except BadRequestError as exc:
                    await self._refuse(exc)
                    return
                if event is None or not await self.handle_event(event):
                    return
        finally:
            await self.disconnect()
            self.writer.close()

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; return False to close the connection."""
        if self.closing:
            return False
        try:
            await self._dispatch(event)
        except BadRequestError as exc:
            await self._refuse(exc)
            return False
        return True

    async def _refuse(self, exc: BadRequestError) -> None:
        """Answer a refused event with ``error``; it costs at most one rate-limited log line."""
        services = self.services
        peer = self.writer.get_extra_info("peername")
        services.client_errors.report(log, f"wyoming {peer}", exc.code, str(exc))
        services.metrics.error(exc.code)
        await self._send(WyomingError(text=str(exc), code=exc.code))

    async def _dispatch(self, event: Event) -> None:
        if AudioChunk.is_type(event.type):
            await self._on_chunk(_parse(AudioChunk, event))
        elif AudioStart.is_type(event.type):
            start = _parse(AudioStart, event)
            await self._finish_request()
            await self._open(start.rate, start.width, start.channels)
        elif AudioStop.is_type(event.type):
            await self._finish_request()
        elif Transcribe.is_type(event.type):
            self.transcribe = _parse(Transcribe, event)
            self._models()  # reject an unknown model now, before any audio
        elif Describe.is_type(event.type):
            await self._send(self.info)
        elif Recognize.is_type(event.type):
            await self._send(NotRecognized(text="streamer recognises intents from audio only"))
        elif Ping.is_type(event.type):
            await self._send(Pong(text=_parse(Ping, event).text))
        else:
            log.debug("wyoming: ignoring %s event", event.type)

    async def _on_chunk(self, chunk: AudioChunk) -> None:
        req = self.request
        if req is None:  # audio-start is required, but be lenient as other servers are
            req = await self._open(chunk.rate, chunk.width, chunk.channels)
        fmt = req.fmt
        if (chunk.rate, chunk.width, chunk.channels) != (fmt.rate_hz, fmt.width, fmt.channels):
            raise BadRequestError(
                proto.UNSUPPORTED_FORMAT, "audio-chunk format differs from audio-start"
            )
        if not isinstance(chunk.audio, bytes):
            raise BadRequestError(proto.BAD_AUDIO_FRAME, "audio-chunk without a byte payload")
        data = req.leftover + chunk.audio
        usable = len(data) - len(data) % fmt.frame_bytes
        req.leftover = data[usable:]
        if usable and req.pipeline is not None:
            req.pipeline.feed_samples(pcm_to_float(data[:usable], fmt))
            await req.pipeline.wait_backlog(BACKLOG)

    async def _open(self, rate_hz: object, width: object, channels: object) -> _Request:
        try:
            fmt = AudioFormat.from_width(rate_hz, width, channels)
        except AudioFormatError as exc:
            raise BadRequestError(proto.UNSUPPORTED_FORMAT, str(exc)) from None
        services = self.services
        models = self._models()
        try:  # the registry refuses as it does for ingest (busy: the engine is far behind)
            claim = services.streams.admit(services.streams.unused_name(ENDPOINT))
        except ProtocolError as exc:
            raise BadRequestError(exc.code, str(exc)) from None
        req = _Request(claim.name, fmt, self._language(), claim)
        req.pipeline = sample_pipeline(
            services,
            stream=req.stream,
            rate_hz=fmt.rate_hz,
            models=models,
            emit=functools.partial(self._emit, req),
        )
        claim.attach(req.pipeline)
        self.request = req
        log.debug("wyoming: %s opened at %d Hz, %d byte(s), %d channel(s)", req.stream,
                  fmt.rate_hz, fmt.width, fmt.channels)  # fmt: skip
        await self._send(TranscriptStart(language=req.language))
        return req

    def _models(self) -> tuple[str, ...]:
        encoders = self.services.runner.encoders
        name = self.transcribe.name
        if name is None:
            return tuple(encoders)
        if name not in encoders:
            raise BadRequestError(proto.UNKNOWN_MODEL, f"unknown model {name!r}")
        return (name,)

    def _language(self) -> str | None:
        return self.transcribe.language or self.language

    def _emit(self, req: _Request, event: proto.ServerEvent) -> None:
        """Pipeline callback: stream each utterance's text as a transcript-chunk."""
        if isinstance(event, proto.Error):
            req.n_errors += 1
        if not isinstance(event, proto.Utterance):
            return
        first = not any(u.transcript and u.transcript.text for u in req.utterances)
        req.utterances.append(event)
        if event.transcript is not None and event.transcript.text:
            text = event.transcript.text if first else " " + event.transcript.text
            self._outbox.append(TranscriptChunk(text=text).event())
            task = asyncio.get_running_loop().create_task(self._flush_quietly())
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)

    async def _finish_request(self) -> None:
        """Finish the request in progress (if any) and send its results."""
        req, self.request = self.request, None
        if req is None or req.pipeline is None:
            return
        try:
            await req.pipeline.finish()
        finally:
            req.claim.end()
        texts = [u.transcript.text for u in req.utterances if u.transcript and u.transcript.text]
        await self._send(Transcript(text=" ".join(texts), language=req.language))
        await self._send(TranscriptStop())
        for message in intent_events(req.utterances):
            await self._send(message)
        log.debug("wyoming: %s done: %d utterance(s), %d error(s)", req.stream,
                 len(req.utterances), req.n_errors)  # fmt: skip

    async def shutdown(self) -> None:
        """Server shutdown: answer the request in progress with what it has, then close."""
        self.closing = True
        with contextlib.suppress(ConnectionError):
            await self._finish_request()
        await self.stop()

    async def abandon(self) -> None:
        """The connection is gone: finish its pipeline (subscribers still get the results)."""
        self.closing = True
        req, self.request = self.request, None
        if req is not None and req.pipeline is not None:
            try:
                await req.pipeline.finish()
            finally:
                req.claim.end()
        await asyncio.gather(*list(self._flushers), return_exceptions=True)

    async def _send(self, message: Eventable) -> None:
        self._outbox.append(message.event())
        await self._flush()

    async def _flush(self) -> None:
        async with self._write_lock:
            while self._outbox:
                await self.write_event(self._outbox.popleft())

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._flush()


_E = TypeVar("_E", bound=Eventable)


async def _read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event, or None at the end of the connection.

    Raises:
        BadRequestError: a header line that is JSON but no event (``{}``, ``[1]``).
    """
    try:
        return await async_read_event(reader)
    except (KeyError, AttributeError, TypeError) as exc:
        raise BadRequestError(proto.BAD_MESSAGE, f"malformed event header: {exc!r}") from None


def _parse(cls: type[_E], event: Event) -> _E:
    """Read ``event`` as ``cls``; a missing or mistyped field is a bad request."""
    try:
        parsed = cls.from_event(event)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadRequestError(proto.BAD_MESSAGE, f"malformed {event.type} event: {exc!r}") from None
    return typing.cast(_E, parsed)

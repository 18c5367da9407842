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

Audio may come at any rate the pipeline accepts (8-192 kHz), as signed little-endian integer
PCM of 1-4 bytes per sample (the ``audioop`` convention Wyoming uses) and any channel count
(averaged). ``recognize`` (text → intent) is answered ``not-recognized``: the intent bundles
classify audio, not text, so no intent program is advertised. Unknown events are ignored, as the
protocol asks. Wyoming has no authentication: bind it to a trusted network only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import typing
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar
from urllib.parse import urlparse

import numpy as np
import numpy.typing as npt
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error as WyomingError
from wyoming.event import Event, Eventable
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.intent import Entity, Intent, IntentsStart, IntentsStop, NotRecognized, Recognize
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler

from streamer import __version__, overload, protocol as proto
from streamer.audio import MAX_RATE_HZ, MIN_RATE_HZ
from streamer.errors import ConfigError, ProtocolError, StreamerError
from streamer.streams.pipeline import Services, StreamPipeline, sample_pipeline

log = logging.getLogger(__name__)

ENDPOINT: Final = "wyoming"
#: Sample widths accepted in audio-start/audio-chunk, in bytes.
WIDTHS: Final = (1, 2, 3, 4)
MAX_CHANNELS: Final = 32
#: Utterances of one request allowed in flight before reading more audio (TCP backpressure).
BACKLOG: Final = 4
_ATTRIBUTION: Final = Attribution(name="streamer", url="https://github.com/")
_DESCRIPTIONS: Final = {
    "ctc": "speech recognition (CTC)",
    "classify": "intent classification from audio (sent as intent events)",
    "regress": "regression from audio",
    "embed": "utterance embedding",
}


class BadRequestError(StreamerError):
    """A Wyoming event the server cannot act on (bad audio format, unknown model, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_uri(uri: str) -> tuple[str, int]:
    """Return (host, port) of a ``tcp://HOST:PORT`` URI; port 0 picks a free one.

    Raises:
        ConfigError: not a tcp:// URI with a host and a port.
    """
    parsed = urlparse(uri)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "tcp" or not parsed.hostname or port is None:
        raise ConfigError(f"--wyoming needs tcp://HOST:PORT, got {uri!r}")
    return parsed.hostname, port


def decode_pcm(data: bytes, *, width: int, channels: int) -> npt.NDArray[np.float32]:
    """Decode signed little-endian integer PCM (``width`` bytes) to float32 mono in [-1, 1].

    ``data`` must hold whole sample frames. Channels are averaged.
    """
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, width)
    if width == 3:  # no numpy int24: sign-extend into int32
        wide = np.zeros((raw.shape[0], 4), dtype=np.uint8)
        wide[:, 1:] = raw
        ints = wide.view("<i4")[:, 0].astype(np.float32) / float(1 << 31)
    else:
        dtype = {1: "i1", 2: "<i2", 4: "<i4"}[width]
        ints = raw.reshape(-1).view(dtype).astype(np.float32) / float(1 << (8 * width - 1))
    samples = ints.reshape(-1, channels)
    mono: npt.NDArray[np.float32] = samples.mean(axis=1, dtype=np.float32)
    return mono


def build_info(services: Services, *, languages: Sequence[str]) -> Info:
    """The ``info`` answer: one ASR program whose models are the loaded bundles."""
    models = [
        AsrModel(
            name=name,
            attribution=_ATTRIBUTION,
            installed=True,
            description=f"{enc.manifest.arch}: {_DESCRIPTIONS.get(enc.manifest.task, '')}",
            version=__version__,
            languages=list(languages),
        )
        for name, enc in services.runner.encoders.items()
    ]
    program = AsrProgram(
        name="streamer",
        attribution=_ATTRIBUTION,
        installed=True,
        description="streaming speech understanding (VAD-cut utterances, ONNX encoders)",
        version=__version__,
        models=models,
        supports_transcript_streaming=True,
    )
    return Info(asr=[program])


class WyomingServer:
    """A TCP server speaking Wyoming; every request runs through a :class:`StreamPipeline`."""

    def __init__(self, services: Services, uri: str, *, languages: Sequence[str] = ("en",)) -> None:
        """Create the server for ``uri`` (``tcp://HOST:PORT``); :meth:`start` binds it.

        Raises:
            ConfigError: ``uri`` is not a tcp:// URI with a port.
        """
        self.services = services
        self.host, self.port = parse_uri(uri)
        self.info = build_info(services, languages=languages)
        self.language = languages[0] if languages else None
        self.server: asyncio.Server | None = None
        self._handlers: set[WyomingHandler] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self.server = await asyncio.start_server(self._accept, self.host, self.port)

    @property
    def ports(self) -> list[int]:
        """The bound TCP ports (the real ones when port 0 was asked for)."""
        if self.server is None:
            return []
        return sorted({s.getsockname()[1] for s in self.server.sockets})

    def next_stream(self) -> str:
        """A stream name no live stream uses (``wyoming-N``)."""
        while (name := f"wyoming-{next(self._ids)}") in self.services.streams:
            pass
        return name

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = WyomingHandler(reader, writer, owner=self)
        self._handlers.add(handler)
        metrics = self.services.metrics
        metrics.connection_opened(ENDPOINT)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await handler.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            log.debug("wyoming connection lost")
        except Exception:
            log.exception("wyoming connection: unexpected failure")
            metrics.error(proto.INTERNAL)
        finally:
            await handler.abandon()
            metrics.connection_closed(ENDPOINT)
            self._handlers.discard(handler)
            if task is not None:
                self._tasks.discard(task)

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting; answer every request in progress with what it has; close."""
        if self.server is not None:
            self.server.close()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(h.shutdown() for h in list(self._handlers)))
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        except TimeoutError:
            log.warning("wyoming drain timed out after %.1f s; closing anyway", timeout_s)
            for task in self._tasks:
                task.cancel()
        if self.server is not None:
            await self.server.wait_closed()


async def start_wyoming(
    services: Services, uri: str, *, languages: Sequence[str] = ("en",)
) -> WyomingServer:
    """Start a :class:`WyomingServer` on ``uri`` and log where it listens.

    Raises:
        ConfigError: ``uri`` is not tcp://HOST:PORT, or it cannot be bound.
    """
    server = WyomingServer(services, uri, languages=languages)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(f"cannot serve Wyoming on {uri}: {exc.strerror or exc}") from None
    for port in server.ports:
        log.info("wyoming listening on tcp://%s:%d (models: %s)", server.host, port,
                 ", ".join(services.runner.encoders))  # fmt: skip
    if not (server.host in ("localhost", "::1") or server.host.startswith("127.")):
        log.warning(
            "wyoming on %s: the Wyoming protocol has no authentication; anyone who can reach "
            "this port may stream audio (keep it on a trusted network)",
            server.host,
        )
    return server


@dataclass
class _Request:
    """One transcribe request: its input format, pipeline and the results so far."""

    stream: str
    rate_hz: int
    width: int
    channels: int
    language: str | None
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
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, owner: WyomingServer
    ) -> None:
        super().__init__(reader, writer)
        self.owner = owner
        self.transcribe = Transcribe()
        self.request: _Request | None = None
        self.closing = False
        self._outbox: deque[Event] = deque()
        self._write_lock = asyncio.Lock()
        self._flushers: set[asyncio.Task[None]] = set()

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; return False to close the connection."""
        if self.closing:
            return False
        try:
            await self._dispatch(event)
        except BadRequestError as exc:
            log.info("wyoming: %s: %s", exc.code, exc)
            self.owner.services.metrics.error(exc.code)
            await self._send(WyomingError(text=str(exc), code=exc.code))
            return False
        return True

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
            await self._send(self.owner.info)
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
        if (chunk.rate, chunk.width, chunk.channels) != (req.rate_hz, req.width, req.channels):
            raise BadRequestError(
                proto.UNSUPPORTED_FORMAT, "audio-chunk format differs from audio-start"
            )
        if not isinstance(chunk.audio, bytes):
            raise BadRequestError(proto.BAD_AUDIO_FRAME, "audio-chunk without a byte payload")
        frame = req.width * req.channels
        data = req.leftover + chunk.audio
        usable = len(data) - len(data) % frame
        req.leftover = data[usable:]
        if usable and req.pipeline is not None:
            req.pipeline.feed_samples(
                decode_pcm(data[:usable], width=req.width, channels=req.channels)
            )
            await req.pipeline.wait_backlog(BACKLOG)

    async def _open(self, rate_hz: object, width: object, channels: object) -> _Request:
        if not (isinstance(rate_hz, int) and MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ):
            raise BadRequestError(
                proto.UNSUPPORTED_FORMAT,
                f"rate {rate_hz!r} Hz is not supported ({MIN_RATE_HZ}-{MAX_RATE_HZ})",
            )
        if not (isinstance(width, int) and width in WIDTHS) or not (
            isinstance(channels, int) and 1 <= channels <= MAX_CHANNELS
        ):
            raise BadRequestError(
                proto.UNSUPPORTED_FORMAT,
                f"width {width!r} / channels {channels!r} not supported "
                f"(1-4 bytes, 1-{MAX_CHANNELS} channels)",
            )
        services = self.owner.services
        models = self._models()
        try:
            overload.admit_stream(services)  # the engine is far behind: refuse, as ingest does
        except ProtocolError as exc:
            raise BadRequestError(exc.code, str(exc)) from None
        req = _Request(self.owner.next_stream(), rate_hz, width, channels, self._language())
        req.pipeline = sample_pipeline(
            services,
            stream=req.stream,
            rate_hz=rate_hz,
            models=models,
            emit=functools.partial(self._emit, req),
        )
        services.streams[req.stream] = req.pipeline
        self.request = req
        log.info("wyoming: %s opened at %d Hz, %d byte(s), %d channel(s)", req.stream, rate_hz,
                 width, channels)  # fmt: skip
        await self._send(TranscriptStart(language=req.language))
        return req

    def _models(self) -> tuple[str, ...]:
        encoders = self.owner.services.runner.encoders
        name = self.transcribe.name
        if name is None:
            return tuple(encoders)
        if name not in encoders:
            raise BadRequestError(proto.UNKNOWN_MODEL, f"unknown model {name!r}")
        return (name,)

    def _language(self) -> str | None:
        return self.transcribe.language or self.owner.language

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
            self.owner.services.streams.pop(req.stream, None)
        texts = [u.transcript.text for u in req.utterances if u.transcript and u.transcript.text]
        await self._send(Transcript(text=" ".join(texts), language=req.language))
        await self._send(TranscriptStop())
        for message in intent_events(req.utterances):
            await self._send(message)
        log.info("wyoming: %s done: %d utterance(s), %d error(s)", req.stream,
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
                self.owner.services.streams.pop(req.stream, None)
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


def _parse(cls: type[_E], event: Event) -> _E:
    """Read ``event`` as ``cls``; a missing or mistyped field is a bad request."""
    try:
        parsed = cls.from_event(event)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadRequestError(proto.BAD_MESSAGE, f"malformed {event.type} event: {exc!r}") from None
    return typing.cast(_E, parsed)


def intent_events(utterances: Sequence[proto.Utterance]) -> list[Eventable]:
    """The Wyoming intent events for one request's utterances (empty: no intent bundle ran).

    One confident intent becomes ``intent``; several become ``intents-start``, one ``intent``
    each, ``intents-stop``; none confident (every one abstained) becomes ``not-recognized``.
    The other label sets of a multi-head bundle become entities ``label_1``, ``label_2``...
    """
    found = [u.intent for u in utterances if u.intent is not None]
    if not found:
        return []
    intents = [
        Intent(
            name=u.intent.name,
            entities=[
                Entity(name=f"label_{i}", value=label.name)
                for i, label in enumerate(u.labels or (), start=1)
                if not label.abstain
            ],
        )
        for u in utterances
        if u.intent is not None and not u.intent.abstain
    ]
    if not intents:
        return [NotRecognized()]
    if len(intents) == 1:
        return [intents[0]]
    return [IntentsStart(), *intents, IntentsStop()]

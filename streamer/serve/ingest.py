"""One ``/v1/stream`` connection: the ingest protocol state, its stream and its outgoing queue.

The client's ``start`` names the stream; the registry (:mod:`streamer.streams.registry`) admits
it or refuses it (``stream_in_use``, ``busy``) exactly as for every other source. Binary frames
feed the stream's :class:`~streamer.streams.pipeline.StreamPipeline`; its results come back
through one ordered outbox. A protocol error sends an ``error`` event, closes with the
documented code and costs at most one (rate-limited) log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from streamer import overload, protocol as proto
from streamer.endpoints import IngestState
from streamer.errors import ProtocolError, StreamerError
from streamer.segmenter_config import SegmenterConfig
from streamer.serve.client_errors import close_discarding
from streamer.streams.pipeline import StreamPipeline, stream_segmenter_config
from streamer.streams.registry import StreamClaim
from streamer.streams.services import Services
from streamer.wire import quote

log = logging.getLogger(__name__)


class Ingest:
    """One ``/v1/stream`` connection: protocol state, its pipeline, and its outgoing queue."""

    def __init__(self, services: Services, ws: ServerConnection) -> None:
        """Serve ``ws`` with ``services``; :meth:`run` does the work."""
        self.services = services
        self.ws = ws
        cfg = services.config.server
        self.state = IngestState(
            models=services.decoders.keys(),
            max_message_bytes=cfg.max_message_bytes,
            max_frame_bytes=cfg.max_message_bytes,
        )
        self.pipeline: StreamPipeline | None = None
        self.claim: StreamClaim | None = None
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.idle = asyncio.Event()
        self.idle.set()

    async def run(self) -> None:
        """Serve the connection until it ends, fails or closes."""
        sender = asyncio.create_task(self._send_loop(), name=f"send-{self.ws.id}")
        try:
            await self._receive_loop()
        finally:
            try:
                if self.pipeline is not None:
                    self.pipeline.emit = None  # the client is gone; subscribers may still listen
                    await self.pipeline.finish()  # a vanished client's last utterance still counts
            finally:
                if self.claim is not None:
                    self.claim.end()
            self.outbox.put_nowait(None)
            await asyncio.gather(sender, return_exceptions=True)

    async def _receive_loop(self) -> None:
        timeout = self.services.config.server.start_timeout_s
        try:
            async with asyncio.timeout(timeout):
                first = await self.ws.recv()
        except TimeoutError:
            await self._fail(
                ProtocolError(
                    proto.UNEXPECTED_MESSAGE,
                    f"no start message within {timeout:g} s",
                    close_code=proto.CLOSE_POLICY,
                )
            )
            return
        async for message in _prepend(first, self.ws):
            try:
                if await self._on_message(message):
                    return
            except ProtocolError as exc:
                await self._fail(exc)
                return

    async def _on_message(self, message: str | bytes) -> bool:
        """Handle one frame; return True when the connection is finished."""
        if isinstance(message, bytes):
            self.state.on_binary(message)
            if self.pipeline is not None:
                self.pipeline.feed_pcm(message)
            return False
        msg = self.state.on_text(message)
        if isinstance(msg, proto.Start):
            self._open(msg)
        elif isinstance(msg, proto.Flush) and self.pipeline is not None:
            self.pipeline.flush()
        elif isinstance(msg, proto.End) and self.pipeline is not None:
            await self.pipeline.finish()
            self.pipeline.publish(
                proto.Ended(stream=self.pipeline.stream, n_utterances=self.pipeline.n_utterances)
            )
            await self._flush_outbox()
            await close_discarding(self.ws, proto.CLOSE_NORMAL, "end of stream")
            return True
        return False

    def _open(self, start: proto.Start) -> None:
        services = self.services
        claim = services.streams.admit(start.stream)  # stream_in_use, busy
        try:
            overload.check_endpointing(services.config.segmenter, start.endpointing)
            models = start.models or tuple(services.decoders)
            seg = segmenter_config(services, start.endpointing, models)
            context = stream_context(services, start.context, models)
            check_partial(services, start.want, models)
            pipeline = StreamPipeline(
                services,
                stream=start.stream,
                fmt=start.audio_format,
                models=models,
                segmenter=seg,
                emit=self._send,
                want=start.want,
                context=context,
            )
        except BaseException:
            claim.end()
            raise
        claim.attach(pipeline)
        self.claim, self.pipeline = claim, pipeline
        # through the pipeline: subscribers see streams come (started) and go (ended)
        pipeline.publish(_started(services, start, models, seg, context))

    def _send(self, event: proto.ServerEvent) -> None:
        self.idle.clear()
        self.outbox.put_nowait(event.encode())

    async def _send_loop(self) -> None:
        while (text := await self.outbox.get()) is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(text)
            if self.outbox.empty():
                self.idle.set()
        self.idle.set()

    async def _flush_outbox(self) -> None:
        await self.idle.wait()

    async def settle(self) -> None:
        """Wait until everything queued for this client was written to the socket."""
        await self._flush_outbox()

    async def end_with(self, exc: ProtocolError) -> None:
        """End this stream from outside (another replica took its name): tell the client, close."""
        await self._fail(exc)

    async def _fail(self, exc: ProtocolError) -> None:
        stream = self.pipeline.stream if self.pipeline is not None else None
        self.services.client_errors.report(log, f"connection {self.ws.id}", exc.code, str(exc))
        self._send(proto.Error.from_exception(exc, stream=stream))
        self.services.metrics.error(exc.code)
        await self._flush_outbox()
        await close_discarding(self.ws, exc.close_code or proto.CLOSE_POLICY, exc.code)


def _started(
    services: Services,
    start: proto.Start,
    models: Iterable[str],
    seg: SegmenterConfig,
    context: str | None,
) -> proto.Started:
    """The ``started`` event answering ``start``: models, limits and endpointing in force."""
    cfg = services.config.server
    return proto.Started(
        stream=start.stream,
        sample_rate=start.sample_rate,
        encoding=start.encoding,
        channels=start.channels,
        models=tuple(
            proto.ModelInfo(
                name=m,
                task=services.runner.encoders[m].manifest.task,
                arch=services.runner.encoders[m].manifest.arch,
            )
            for m in models
        ),
        limits={
            "max_message_bytes": cfg.max_message_bytes,
            "max_frame_bytes": cfg.max_message_bytes,
            "max_utterance_s": seg.max_utterance_s,
            "subscriber_queue": cfg.subscriber_queue,
        },
        endpointing={k: float(getattr(seg, k)) for k in proto.ENDPOINTING_KNOBS},
        want=start.want,
        context=context,
    )


def check_partial(services: Services, want: Iterable[str], models: Iterable[str]) -> None:
    """Check that a stream asking for ``partial`` events runs a ctc model (they are transcripts).

    Raises:
        ProtocolError: ``bad_field`` (1007).
    """
    if "partial" in want and not any(
        services.runner.encoders[m].manifest.task == "ctc" for m in models
    ):
        raise ProtocolError(
            proto.BAD_FIELD,
            "want partial needs a ctc model among the stream's models",
            close_code=proto.CLOSE_INVALID_DATA,
            field="want",
        )


def stream_context(services: Services, name: str | None, models: Iterable[str]) -> str | None:
    """The context a stream's utterances are understood in: ``name``, else the server's default.

    Raises:
        ProtocolError: ``bad_field`` (1007): no context of that name was compiled at start, or
            none of the stream's models is a ctc model it was compiled for.
    """
    chosen = name or services.default_context
    if chosen is None:
        return None
    if chosen not in services.contexts:
        known = ", ".join(services.contexts) or "none"
        raise ProtocolError(
            proto.BAD_FIELD,
            f"no context named {quote(chosen)} (known: {known})",
            close_code=proto.CLOSE_INVALID_DATA,
            field="context",
        )
    if not any(m in services.contexts[chosen] for m in models):
        if name is None:
            return None  # the default context does not apply to a stream without a ctc model
        raise ProtocolError(
            proto.BAD_FIELD,
            f"context {quote(chosen)} needs a ctc model in the stream's models",
            close_code=proto.CLOSE_INVALID_DATA,
            field="context",
        )
    return chosen


def segmenter_config(
    services: Services, endpointing: dict[str, float], models: Iterable[str]
) -> SegmenterConfig:
    """A stream's segmenter settings from the client's ``endpointing`` overrides.

    Raises:
        ProtocolError: ``bad_field`` (1007): an override is unknown or out of range.
    """
    # the wire's knob names are SegmenterConfig field names (tests/test_config.py checks)
    values: dict[str, Any] = dict(endpointing)
    if "vad_mode" in values:
        values["vad_mode"] = int(values["vad_mode"])
    try:
        return stream_segmenter_config(services, models, values)
    except StreamerError as exc:
        raise ProtocolError(
            proto.BAD_FIELD,
            f"endpointing: {exc}",
            close_code=proto.CLOSE_INVALID_DATA,
            field="endpointing",
        ) from None


async def _prepend(first: str | bytes, ws: ServerConnection) -> AsyncIterator[str | bytes]:
    yield first
    async for message in ws:
        yield message

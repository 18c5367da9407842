"""The WebSocket server: thin I/O around the protocol state machines, the pipeline and the hub.

Endpoints: ``/v1/stream`` (ingest), ``/v1/events`` (subscribe), and plain HTTP ``/healthz`` and
``/readyz``. Each connection is independent: a protocol error closes that connection with the
documented code, an unexpected exception is logged and closes it with 1011 (no details), and
nothing a client sends can reach another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamer import overload, protocol as proto
from streamer.audio import AudioFormat
from streamer.errors import ProtocolError, StreamerError
from streamer.pubsub import Subscriber
from streamer.segmenter import SegmenterConfig
from streamer.serve.security import Guard, refusal, tls_context
from streamer.streams.pipeline import Services, StreamPipeline, stream_segmenter_config

log = logging.getLogger(__name__)


class StreamerServer:
    """Owns the websockets server and every live connection's bookkeeping."""

    def __init__(
        self,
        services: Services,
        *,
        info: dict[str, Any],
        routes: dict[str, Callable[[Request], Response]] | None = None,
    ) -> None:
        """Create the server; ``routes`` adds plain-HTTP GET endpoints (path -> handler)."""
        self.services = services
        self.info = info
        self.routes = dict(routes or {})
        self.server: Server | None = None
        self.draining = False
        self.guard = Guard.from_config(services.config.security)
        self._connections: set[ServerConnection] = set()
        self._handlers: set[Ingest | Subscription] = set()

    async def start(self) -> Server:
        """Bind and start serving; return the websockets Server (its sockets give the port)."""
        cfg = self.services.config.server
        self.server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            max_size=cfg.max_message_bytes,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s,
            open_timeout=cfg.open_timeout_s,
            close_timeout=cfg.close_timeout_s,
            ssl=tls_context(self.services.config.security),
            compression=None,  # PCM does not compress; deflate would only cost CPU
            process_request=self._screen_request,
        )
        return self.server

    @property
    def ports(self) -> list[int]:
        """The bound TCP ports (the real ones when port 0 was asked for)."""
        if self.server is None:
            return []
        return sorted({s.getsockname()[1] for s in self.server.sockets})

    # ------------------------------------------------------------------ HTTP

    async def _screen_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if conn.protocol.eof_sent:
            # Bytes after the request that are no WebSocket frame made websockets fail the
            # connection already; answering it anyway trips an assertion that websockets 17 logs
            # at ERROR (a log flood for anyone who sends garbage). Drop it quietly instead.
            conn.transport.abort()
            await asyncio.shield(conn.connection_lost_waiter)
            return refusal(http.HTTPStatus.BAD_REQUEST)
        return self._process_request(conn, request)

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if (refused := self.guard.check(request)) is not None:
            return refused
        path = request.path.partition("?")[0]
        if path == "/healthz":
            return _json_response(http.HTTPStatus.OK, {"status": "ok"})
        if path == "/readyz":
            ready = not self.draining and overload.accepting_streams(self.services)
            status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return _json_response(status, {"ready": ready, **self.info})
        if path in self.routes:
            return self.routes[path](request)
        if path not in (proto.INGEST_PATH, proto.EVENTS_PATH):
            return _json_response(http.HTTPStatus.NOT_FOUND, {"error": f"no endpoint {path}"})
        if self.draining:
            return _json_response(
                http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "shutting down"}, retry_after=5
            )
        if len(self._connections) >= self.services.config.server.max_connections:
            return _json_response(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                {"error": "too many connections"},
                retry_after=1,
            )
        return None

    # ------------------------------------------------------------------ WebSocket

    async def _handle(self, ws: ServerConnection) -> None:
        self._connections.add(ws)
        path = ws.request.path.partition("?")[0] if ws.request else ""
        self.services.metrics.connection_opened(path)
        try:
            handler = Ingest(self, ws) if path == proto.INGEST_PATH else Subscription(self, ws)
            self._handlers.add(handler)
            await handler.run()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection %s: unexpected failure", ws.id)
            self.services.metrics.error(proto.INTERNAL)
            await ws.close(proto.CLOSE_INTERNAL, "internal error")
        finally:
            self._connections.discard(ws)
            self.services.metrics.connection_closed(path)
            self._handlers = {h for h in self._handlers if h.ws is not ws}

    async def drain(self, timeout_s: float) -> None:
        """Graceful stop: refuse new connections, finish in-flight utterances, close with 1001."""
        self.draining = True
        if self.server is not None:
            self.server.close(close_connections=False)
        pipelines = list(self.services.streams.values())
        log.info("draining: %d stream(s), %d connection(s)", len(pipelines), len(self._connections))
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(p.finish() for p in pipelines), return_exceptions=True)
                await asyncio.gather(*(h.settle() for h in list(self._handlers)))
        except TimeoutError:
            log.warning("drain timed out after %.1f s; closing anyway", timeout_s)
        await asyncio.gather(
            *(ws.close(proto.CLOSE_GOING_AWAY, "server shutting down") for ws in self._connections),
            return_exceptions=True,
        )
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Ingest:
    """One ``/v1/stream`` connection: protocol state, its pipeline, and its outgoing queue."""

    def __init__(self, owner: StreamerServer, ws: ServerConnection) -> None:
        self.owner = owner
        self.ws = ws
        cfg = owner.services.config.server
        self.state = proto.IngestState(
            models=owner.services.decoders.keys(),
            max_message_bytes=cfg.max_message_bytes,
            max_frame_bytes=cfg.max_message_bytes,
        )
        self.pipeline: StreamPipeline | None = None
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.idle = asyncio.Event()
        self.idle.set()

    async def run(self) -> None:
        """Serve the connection until it ends, fails or closes."""
        sender = asyncio.create_task(self._send_loop(), name=f"send-{self.ws.id}")
        try:
            await self._receive_loop()
        finally:
            if self.pipeline is not None:
                self.pipeline.emit = None  # the client is gone; subscribers may still listen
                await self.pipeline.finish()  # a vanished client's last utterance still counts
                self.owner.services.streams.pop(self.pipeline.stream, None)
            self.outbox.put_nowait(None)
            await asyncio.gather(sender, return_exceptions=True)

    async def _receive_loop(self) -> None:
        timeout = self.owner.services.config.server.start_timeout_s
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
        messages = _prepend(first, self.ws)
        async for message in messages:
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
        services = self.owner.services
        if start.stream in services.streams:
            raise ProtocolError(
                proto.STREAM_IN_USE,
                f"stream {start.stream!r} is already live",
                close_code=proto.CLOSE_POLICY,
            )
        overload.admit_stream(services)
        overload.check_endpointing(services.config.segmenter, start.endpointing)
        models = start.models or tuple(services.decoders)
        seg = _segmenter_config(services, start.endpointing, models)
        fmt = AudioFormat(start.sample_rate, start.encoding, start.channels)
        self.pipeline = StreamPipeline(
            services,
            stream=start.stream,
            fmt=fmt,
            models=models,
            segmenter=seg,
            emit=self._emit,
            want=start.want,
        )
        services.streams[start.stream] = self.pipeline
        cfg = services.config.server
        # through the pipeline: subscribers see streams come (started) and go (ended)
        self.pipeline.publish(
            proto.Started(
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
            )
        )

    def _emit(self, event: proto.ServerEvent) -> None:
        self._send(event)

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

    async def _fail(self, exc: ProtocolError) -> None:
        stream = self.pipeline.stream if self.pipeline is not None else None
        log.info("connection %s: %s: %s", self.ws.id, exc.code, exc)
        self._send(proto.Error(code=exc.code, message=str(exc), stream=stream))
        self.owner.services.metrics.error(exc.code)
        await self._flush_outbox()
        await close_discarding(self.ws, exc.close_code or proto.CLOSE_POLICY, exc.code)


class Subscription:
    """One ``/v1/events`` connection: a hub subscriber and the task that forwards its events."""

    def __init__(self, owner: StreamerServer, ws: ServerConnection) -> None:
        self.owner = owner
        self.ws = ws
        cfg = owner.services.config.server
        self.state = proto.EventsState(max_message_bytes=cfg.max_message_bytes)
        self.wake = asyncio.Event()
        self.sent = asyncio.Event()
        self.sent.set()
        self.current: Subscriber[str] | None = None

    async def run(self) -> None:
        """Read subscribe messages; forward matching events until the connection closes."""
        hub = self.owner.services.hub
        loop = asyncio.get_running_loop()
        forwarder: asyncio.Task[None] | None = None
        try:
            async for message in self.ws:
                try:
                    if isinstance(message, bytes):
                        self.state.on_binary(message)
                    msg = self.state.on_text(message)
                except ProtocolError as exc:
                    self.owner.services.metrics.error(exc.code)
                    await self.ws.send(proto.Error(code=exc.code, message=str(exc)).encode())
                    await close_discarding(self.ws, exc.close_code or proto.CLOSE_POLICY, exc.code)
                    return
                if self.current is not None:
                    self.owner.services.metrics.subscriber_removed(self.current)
                    hub.unsubscribe(self.current)
                self.current = hub.subscribe(
                    streams=msg.streams,
                    events=msg.events,
                    queue_len=self.owner.services.config.server.subscriber_queue,
                    notify=self._waker(loop),
                )
                self.owner.services.metrics.subscriber_added(str(self.ws.id)[:8], self.current)
                await self.ws.send(
                    proto.Subscribed(streams=msg.streams, events=msg.events).encode()
                )
                if forwarder is None:
                    forwarder = asyncio.create_task(self._forward(), name=f"fwd-{self.ws.id}")
        finally:
            if self.current is not None:
                self.owner.services.metrics.subscriber_removed(self.current)
                hub.unsubscribe(self.current)
            if forwarder is not None:
                forwarder.cancel()
                await asyncio.gather(forwarder, return_exceptions=True)

    def _waker(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        def wake() -> None:
            loop.call_soon_threadsafe(self.wake.set)

        return wake

    async def settle(self) -> None:
        """Wait until every event queued for this subscriber was written to the socket."""
        # Polling is bounded by the drain timeout and runs only during shutdown.
        while self.current is not None and (len(self.current) or not self.sent.is_set()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def _forward(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.current is None:
                continue
            self.sent.clear()
            items, lost = self.current.drain()
            if lost:
                await self.ws.send(proto.Dropped(count=lost).encode())
            for text in items:
                await self.ws.send(text)
            self.sent.set()


def _segmenter_config(
    services: Services, endpointing: dict[str, float], models: Iterable[str]
) -> SegmenterConfig:
    # the wire's knob names are SegmenterConfig field names (tests/test_config.py checks)
    values: dict[str, Any] = dict(endpointing)
    if "vad_mode" in values:
        values["vad_mode"] = int(values["vad_mode"])
    try:
        return stream_segmenter_config(services, models, values)
    except StreamerError as exc:
        raise ProtocolError(
            proto.BAD_FIELD, f"endpointing: {exc}", close_code=proto.CLOSE_INVALID_DATA
        ) from None


async def close_discarding(ws: ServerConnection, code: int, reason: str) -> None:
    """Close with ``code``, reading and dropping whatever the peer still sends meanwhile.

    Why: a peer that kept sending after an error fills the receive queue; websockets then stops
    reading the socket and would not see the peer's close frame before ``close_timeout_s``.
    """

    async def discard() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    reader = asyncio.create_task(discard(), name=f"discard-{ws.id}")
    try:
        await ws.close(code, reason)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _prepend(first: str | bytes, ws: ServerConnection) -> Any:
    yield first
    async for message in ws:
        yield message


def _json_response(
    status: http.HTTPStatus, body: dict[str, Any], *, retry_after: int | None = None
) -> Response:
    headers = Headers([("Content-Type", "application/json")])
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    data = (json.dumps(body) + "\n").encode()
    headers["Content-Length"] = str(len(data))
    return Response(status.value, status.phrase, headers, data)

"""The WebSocket server: thin I/O around the protocol state machines, the pipeline and the hub.

Endpoints: ``/v1/stream`` (ingest, :mod:`streamer.serve.ingest`), ``/v1/events`` (subscribe,
:mod:`streamer.serve.subscription`), and plain HTTP ``/healthz`` and ``/readyz``. Each
connection is independent: a protocol error closes that connection with the documented code
(and costs at most one rate-limited log line), an unexpected exception is logged and closes it
with 1011 (no details), and nothing a client sends can reach another connection.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamer import protocol as proto
from streamer.serve.ingest import Ingest
from streamer.serve.security import Guard, refusal, tls_context
from streamer.serve.subscription import Subscription
from streamer.streams.services import Services, accepting_streams

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
        if path in self.routes:  # first: a route may answer /readyz (a daemon on a bus does)
            return self.routes[path](request)
        if path == "/healthz":
            return _json_response(http.HTTPStatus.OK, {"status": "ok"})
        if path == "/readyz":
            ready = not self.draining and accepting_streams(self.services)
            status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return _json_response(status, {"ready": ready, **self.info})
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
            handler: Ingest | Subscription = (
                Ingest(self.services, ws)
                if path == proto.INGEST_PATH
                else Subscription(self.services, ws)
            )
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

    def ingest_of(self, stream: str) -> Ingest | None:
        """The live ingest connection carrying ``stream`` on this server, if any."""
        for handler in self._handlers:
            if isinstance(handler, Ingest) and handler.claim is not None:  # noqa: SIM102
                if handler.claim.name == stream:
                    return handler
        return None

    async def drain(self, timeout_s: float) -> None:
        """Graceful stop: refuse new connections, finish in-flight utterances, close with 1001."""
        self.draining = True
        if self.server is not None:
            self.server.close(close_connections=False)
        pipelines = self.services.streams.pipelines()
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
        self.services.client_errors.close()


def _json_response(
    status: http.HTTPStatus, body: dict[str, Any], *, retry_after: int | None = None
) -> Response:
    headers = Headers([("Content-Type", "application/json")])
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    data = (json.dumps(body) + "\n").encode()
    headers["Content-Length"] = str(len(data))
    return Response(status.value, status.phrase, headers, data)

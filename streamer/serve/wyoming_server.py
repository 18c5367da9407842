"""The Wyoming TCP server: binds ``tcp://HOST:PORT``, accepts connections and drains them.

Each connection is a :class:`~streamer.serve.wyoming.WyomingHandler` (the protocol and the
message flow are described in :mod:`streamer.serve.wyoming`). Shutdown answers every request in
progress with what it has, then closes, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from urllib.parse import urlparse

from streamer import protocol as proto
from streamer.errors import ConfigError
from streamer.serve.wyoming import ENDPOINT, WyomingHandler
from streamer.serve.wyoming_events import build_info
from streamer.streams.services import Services

log = logging.getLogger(__name__)


def parse_uri(uri: str) -> tuple[str, int]:
    """Return (host, port) of a ``tcp://HOST:PORT`` URI; port 0 picks a free one.

    Raises:
        ConfigError: not a tcp:// URI with a host and a port.
    """
    try:
        parsed = urlparse(uri)
        port = parsed.port
    except ValueError:  # an unclosed IPv6 bracket, a port out of range
        raise ConfigError(f"--wyoming needs tcp://HOST:PORT, got {uri!r}") from None
    if parsed.scheme != "tcp" or not parsed.hostname or port is None:
        raise ConfigError(f"--wyoming needs tcp://HOST:PORT, got {uri!r}")
    return parsed.hostname, port


class WyomingServer:
    """A TCP server speaking Wyoming; every request runs through a :class:`StreamPipeline`."""

    def __init__(self, services: Services, uri: str, *, languages: Sequence[str] = ("en",)) -> None:
        """Create the server for ``uri`` (``tcp://HOST:PORT``); :meth:`start` binds it.

        Raises:
            ConfigError: ``uri`` is not a tcp:// URI with a port.
        """
        self.services = services
        self.host, self.port = parse_uri(uri)
        self.info = build_info(services.runner.encoders, languages=languages)
        self.language = languages[0] if languages else None
        self.server: asyncio.Server | None = None
        self._handlers: set[WyomingHandler] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self.server = await asyncio.start_server(self._accept, self.host, self.port)

    @property
    def ports(self) -> list[int]:
        """The bound TCP ports (the real ones when port 0 was asked for)."""
        if self.server is None:
            return []
        return sorted({s.getsockname()[1] for s in self.server.sockets})

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = WyomingHandler(
            reader, writer, services=self.services, info=self.info, language=self.language
        )
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

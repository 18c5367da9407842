"""Wiring of one replica to the event bus: the bus, the name leases, ``/readyz`` and lost names.

``streamer serve --bus URL`` (and the tests) call :func:`join_bus` once the services are built,
before any stream is admitted, then :meth:`Cluster.serve_with` once the server exists, and
:meth:`Cluster.close` after the server drained. See :mod:`streamer.serve.bus`.
"""

from __future__ import annotations

import asyncio
import logging

from streamer import protocol as proto
from streamer.errors import ConfigError, ProtocolError
from streamer.serve.bus import Bus, BusHub, Leases
from streamer.serve.routes import bus_readyz_route
from streamer.serve.websocket import StreamerServer
from streamer.streams.services import Services

log = logging.getLogger(__name__)


class Cluster:
    """One replica's membership: its :class:`Bus` and its :class:`Leases`."""

    def __init__(self, services: Services, bus: Bus, leases: Leases) -> None:
        """Hold the parts; use :func:`join_bus`."""
        self.services = services
        self.bus = bus
        self.leases = leases
        self.server: StreamerServer | None = None
        self._endings: set[asyncio.Task[None]] = set()

    def serve_with(self, server: StreamerServer) -> None:
        """Answer ``/readyz`` with the bus's state, and end streams whose name was taken."""
        self.server = server
        server.routes.update(
            bus_readyz_route(
                self.services, self.bus, info=server.info, draining=lambda: server.draining
            )
        )

    async def close(self) -> None:
        """Free the leases, write what is queued and leave the bus."""
        self.services.streams.leases = None
        await self.leases.close()
        await self.bus.close()
        await asyncio.gather(*self._endings, return_exceptions=True)

    def lost(self, name: str) -> None:
        """Another replica took ``name``: end its stream here with ``stream_in_use``."""
        error = ProtocolError(
            proto.STREAM_IN_USE,
            f"stream {name!r}: another replica took its name (this one lost the bus lease)",
            close_code=proto.CLOSE_POLICY,
        )
        ingest = self.server.ingest_of(name) if self.server is not None else None
        if ingest is not None:
            task = asyncio.create_task(ingest.end_with(error))
            self._endings.add(task)
            task.add_done_callback(self._endings.discard)
            return
        log.error("stream %r goes on here without its name's lease", name)


async def join_bus(services: Services) -> Cluster:
    """Connect ``services`` to the bus of ``services.config.bus`` (retried in the background).

    Raises:
        ConfigError: no ``bus.url``, or the services' hub is no :class:`BusHub`
            (build them with :func:`streamer.app.build_services`).
    """
    if not isinstance(services.hub, BusHub):
        raise ConfigError("the services were built without a bus (bus.url unset)")
    bus = Bus(services.config.bus, services.hub)
    await bus.start()
    cluster = Cluster(services, bus, Leases(bus))
    cluster.leases.on_lost = cluster.lost
    services.streams.leases = cluster.leases
    cluster.leases.start()
    return cluster

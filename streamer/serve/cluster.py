"""Wiring of one replica to the event bus: the bus, the name leases, ``/readyz`` and lost names.

``streamer serve --bus URL`` (and the tests) call :func:`join_bus` once the services are built,
before any stream is admitted, then :meth:`Cluster.serve_with` once the server exists, and
:meth:`Cluster.close` after the server drained. See :mod:`streamer.serve.bus`.

Stream names: :class:`Leases` holds one lease per live name (``SET NX PX``, renewed every third
of ``bus.lease_ms``), so a name live on any replica is ``stream_in_use`` on every other. Taking a
lease is synchronous (one round trip on the event loop, bounded by ``bus.timeout_s``) because
admitting a stream is: every source asks :meth:`StreamRegistry.admit` before it feeds audio, and
the answer must be final. Renewing and freeing leases run on the bus's asynchronous client, so a
stalled bus never holds the event loop for them. While the bus is down a name is held locally
and taken on the bus once it is back. A replica that finds its lease taken calls ``on_lost``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis
import redis.asyncio as aredis

from streamer import protocol as proto
from streamer.errors import ConfigError, ProtocolError
from streamer.serve import bus_wire as wire
from streamer.serve.bus import Bus, BusHub
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
        """Free the leases, write what is queued (``server.shutdown_timeout_s`` at most), leave."""
        self.services.streams.leases = None
        await self.leases.close()
        await self.bus.close(self.services.config.server.shutdown_timeout_s)
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


class Leases:
    """Cluster-wide stream names: one lease per live name on this replica (a registry hook)."""

    def __init__(self, bus: Bus, *, on_lost: Callable[[str], None] | None = None) -> None:
        """Hold names on ``bus``; ``on_lost(name)`` is called when another replica took one."""
        self.bus = bus
        self.config = bus.config
        self.on_lost = on_lost
        url = self.config.url or ""
        options = {**bus.options, "socket_timeout": self.config.timeout_s}  # no blocking reads
        self.client = redis.Redis.from_url(url, **options)  # acquire only: admission is synchronous
        self.aclient = aredis.Redis.from_url(url, **options)  # renewing and freeing
        self._renew = self.aclient.register_script(wire.RENEW_SCRIPT)
        self._release = self.aclient.register_script(wire.RELEASE_SCRIPT)
        self._held: dict[str, str] = {}  # name -> this claim's token
        self._task: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        self._n = 0

    @property
    def replica(self) -> str:
        """This replica's id on the bus."""
        return self.bus.origin

    def key(self, name: str) -> str:
        """The Redis key of ``name``'s lease."""
        return f"{self.config.key}:lease:{name}"

    def acquire(self, name: str) -> None:
        """Take ``name``'s lease (held locally only while the bus is down).

        Synchronous, as :meth:`StreamRegistry.admit` is: one round trip on the event loop,
        bounded by ``bus.timeout_s``.

        Raises:
            ProtocolError: ``stream_in_use`` (close code 1008): another replica holds it.
        """
        self._n += 1
        token = f"{self.bus.origin}:{self._n}"
        if self.bus.up:
            try:
                taken = self.client.set(self.key(name), token, nx=True, px=self.config.lease_ms)
            except (redis.RedisError, OSError) as exc:
                log.warning("bus: lease of stream %r not taken (%s); held locally", name, exc)
            else:
                if not taken:
                    raise ProtocolError(
                        proto.STREAM_IN_USE,
                        f"stream {name!r} is already live on another replica",
                        close_code=proto.CLOSE_POLICY,
                    )
        self._held[name] = token

    def release(self, name: str) -> None:
        """Free ``name``'s lease in the background if this replica still holds it.

        Call contract: from the event loop; :meth:`close` waits for the ones under way.
        """
        token = self._held.pop(name, None)
        if token is None or not self.bus.up:
            return  # an unreleased lease expires after bus.lease_ms
        self._spawn_free(name, token)

    def start(self) -> None:
        """Renew the held leases every third of ``bus.lease_ms`` from now on."""
        self._task = asyncio.create_task(self._renew_loop(), name="bus-leases")

    async def close(self) -> None:
        """Stop renewing and free every held lease (and wait for the frees under way)."""
        if (task := self._task) is not None:
            self._task = None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for name in list(self._held):
            self.release(name)
        await asyncio.gather(*self._releasing, return_exceptions=True)
        self.client.close()
        await self.aclient.aclose()

    async def renew(self) -> list[str]:
        """Renew (or take again) every held lease now; return the names another replica took."""
        if not self.bus.up or not self._held:
            return []
        held = list(self._held.items())
        try:
            pipe = self.aclient.pipeline(transaction=False)
            for name, token in held:
                await self._renew(
                    keys=[self.key(name)], args=[token, self.config.lease_ms], client=pipe
                )
            answers = await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("bus: leases not renewed: %s", exc)
            return []
        lost = []
        for (name, token), ok in zip(held, answers, strict=True):
            if self._held.get(name) != token:  # freed meanwhile: free what the renewal took again
                if ok:
                    self._spawn_free(name, token)
            elif not ok:
                lost.append(name)
                del self._held[name]
        return lost

    def _spawn_free(self, name: str, token: str) -> None:
        task = asyncio.create_task(self._free(name, token), name=f"bus-release-{name}")
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _free(self, name: str, token: str) -> None:
        try:
            await self._release(keys=[self.key(name)], args=[token])
        except (redis.RedisError, OSError) as exc:
            log.warning("bus: lease of stream %r not freed (%s); it expires", name, exc)

    async def _renew_loop(self) -> None:
        while self._task is not None:  # None once closing (a cancellation may be swallowed)
            await asyncio.sleep(self.config.lease_ms / 3000)
            for name in await self.renew():
                log.error("bus: stream %r: another replica took its name; ending it here", name)
                if self.on_lost is not None:
                    self.on_lost(name)

"""The event bus: several replicas share their events and stream names through Redis / Valkey.

With ``bus.url`` set, the daemon's hub is a :class:`BusHub`: :meth:`BusHub.publish` hands each
event to :class:`Bus`, whose writer appends it to one Redis Stream (cursor assigned atomically,
see :mod:`streamer.serve.bus_wire`); the bus's one reader (``XREAD BLOCK``) feeds every entry,
this replica's own included, to the local hub, so every subscriber on every replica sees every
stream in one order. Slow subscribers lose their oldest events exactly as without a bus.

Bus down: publishing falls back to local delivery (this replica's subscribers still get its own
streams; the other replicas do not), each such event is counted as the *gap* and logged when
the bus is back, ``/readyz`` answers 503, and the bus is retried with a doubling backoff.

Stream names: :class:`Leases` holds one lease per live name (``SET NX PX``, renewed every third
of ``bus.lease_ms``), so a name live on any replica is ``stream_in_use`` on every other. Lease
commands run synchronously on the event loop (one round trip each, bounded by
``bus.timeout_s``, skipped while the bus is down: the name is then held locally and taken on the
bus once it is back). A replica that finds its lease taken by another calls ``on_lost``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis

from streamer import protocol as proto
from streamer.errors import ConfigError, ProtocolError
from streamer.pubsub import Hub
from streamer.serve import bus_wire as wire
from streamer.serving_config import BusConfig

log = logging.getLogger(__name__)

#: Entries one read or one replay page takes at most.
READ_COUNT = 500
APPEND_BATCH = 200  # events one append script carries at most


def client_options(config: BusConfig, *, blocking: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``Redis.from_url`` for ``config`` (password file, CA, timeouts).

    ``blocking``: the client also makes blocking reads (``XREAD BLOCK``), so its reads may last
    ``bus.block_ms`` longer.

    Raises:
        ConfigError: the password file cannot be read.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": config.timeout_s,
        "socket_timeout": config.timeout_s + (config.block_ms / 1000 if blocking else 0.0),
    }
    if config.password_file is not None:
        try:
            options["password"] = Path(config.password_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"bus.password_file {config.password_file}: {exc}") from None
    if config.ca_file is not None:
        options["ssl_ca_certs"] = config.ca_file
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


class BusHub(Hub[str]):
    """A hub whose publishing goes through the bus (when one is attached and up).

    :meth:`publish` never blocks: it queues the event for the bus writer, or delivers it
    locally while the bus is down. :meth:`deliver` is the plain hub's publish (the bus reader's).
    """

    def __init__(self, *, queue_len: int) -> None:
        """Create the hub; until :attr:`bus` is set it behaves as a plain :class:`Hub`."""
        super().__init__(queue_len=queue_len)
        self.bus: Bus | None = None

    def publish(self, event_type: str, stream: str, payload: str) -> int:
        """Send the event to the bus, or to the local subscribers while the bus is down."""
        bus = self.bus
        if bus is not None and bus.append(event_type, stream, payload):
            return 0  # delivered (to every replica) once the bus has it
        return self.deliver(event_type, stream, payload)

    def deliver(self, event_type: str, stream: str, payload: str) -> int:
        """Offer ``payload`` to the local subscribers (see :meth:`Hub.publish`)."""
        return super().publish(event_type, stream, payload)


class Bus:
    """One replica's connection to the bus: its writer, its reader and its state."""

    def __init__(self, config: BusConfig, hub: BusHub, *, origin: str | None = None) -> None:
        """Prepare the bus for ``hub``; :meth:`start` connects."""
        if config.url is None:
            raise ConfigError("bus.url is not set")
        self.config = config
        self.hub = hub
        self.origin = origin or uuid.uuid4().hex[:12]
        self.client = aredis.Redis.from_url(config.url, **client_options(config))
        self.up = False
        self.durability: dict[str, str] = {}
        self.n_gap = 0
        self.n_appended = 0
        self.last_cursor = 0
        self._gap_since_up = 0
        self._down_at: float | None = time.monotonic()
        self._pending: collections.deque[tuple[str, str, str]] = collections.deque()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._append = self.client.register_script(wire.APPEND_SCRIPT)
        self._seq_key = f"{config.key}:seq"

    async def start(self) -> None:
        """Connect (or keep trying in the background) and start the reader and the writer."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await self._connect()
        self.hub.bus = self
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="bus-reader"),
            asyncio.create_task(self._write_loop(), name="bus-writer"),
        ]

    async def close(self) -> None:
        """Write what is queued (if the bus is up), stop the tasks and disconnect."""
        self.hub.bus = None
        if self.up and self._pending:
            await self._flush()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` reports of the bus."""
        return {
            "url": wire.redact_url(self.config.url or ""),
            "state": "up" if self.up else "down",
            "durability": self.durability,
            "gap_events": self.n_gap,
            "cursor": self.last_cursor,
            "replica": self.origin,
        }

    def append(self, event_type: str, stream: str, payload: str) -> bool:
        """Queue an event for the bus; False while the bus is down (deliver it locally)."""
        if not self.up:
            self.n_gap += 1
            self._gap_since_up += 1
            return False
        self._pending.append((event_type, stream, payload))
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        return True

    async def history(
        self, *, after: int = 0, since_time: float | None = None
    ) -> AsyncIterator[wire.Entry]:
        """Yield the entries after cursor ``after`` (and from ``since_time`` on), oldest first."""
        if since_time is not None:
            after = max(after, await self.cursor_before(since_time))
        start = wire.entry_id(after + 1)
        while True:
            page = wire.entries(
                await self.client.xrange(self.config.key, min=start, count=READ_COUNT)
            )
            for entry_id, fields in page:
                entry = wire.parse_entry(entry_id, fields)
                if entry is not None:
                    yield entry
            if len(page) < READ_COUNT:
                return
            start = wire.entry_id(wire.cursor_of_id(page[-1][0]) + 1)

    async def cursor_before(self, when: float) -> int:
        """The cursor of the last entry appended before ``when`` (0: none), by binary search."""
        first = wire.entries(await self.client.xrange(self.config.key, count=1))
        last = wire.entries(await self.client.xrevrange(self.config.key, count=1))
        if not first:
            return 0
        lo, hi = wire.cursor_of_id(first[0][0]), wire.cursor_of_id(last[0][0])
        answer = lo - 1
        while lo <= hi:  # find the last entry with t < when
            mid = (lo + hi) // 2
            page = wire.entries(
                await self.client.xrange(self.config.key, min=wire.entry_id(mid), count=1)
            )
            entry = wire.parse_entry(*page[0]) if page else None
            if entry is not None and entry.time < when:
                answer, lo = entry.cursor, entry.cursor + 1
            else:
                hi = mid - 1
        return max(answer, 0)

    async def _connect(self) -> bool:
        try:
            await self.client.ping()
            self.durability = await _durability(self.client)
            if not self._tasks:  # the first connection: read from the bus's end
                self.last_cursor = await self._end_cursor()
            elif await self._end_cursor() < self.last_cursor:
                log.error(
                    "bus %s lost its history (restarted without persistence?): reading it "
                    "from its start; cursors start over",
                    wire.redact_url(self.config.url or ""),
                )
                self.last_cursor = 0
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)
            return False
        down_s = time.monotonic() - (self._down_at or time.monotonic())
        self.up, self._down_at = True, None
        log.info(
            "bus %s up (replica %s, durability %s)%s",
            wire.redact_url(self.config.url or ""),
            self.origin,
            self.durability,
            f" after {down_s:.1f} s down; {self._gap_since_up} event(s) meanwhile reached "
            "this replica's subscribers only (the gap)"
            if self._tasks
            else "",
        )
        self._gap_since_up = 0
        return True

    def _went_down(self, exc: BaseException) -> None:
        if self.up or not self._tasks:
            log.error(
                "bus %s down: %s; delivering locally", wire.redact_url(self.config.url or ""), exc
            )
        self.up = False
        if self._down_at is None:
            self._down_at = time.monotonic()

    async def _end_cursor(self) -> int:
        last = wire.entries(await self.client.xrevrange(self.config.key, count=1))
        return wire.cursor_of_id(last[0][0]) if last else 0

    async def _reconnect(self) -> None:
        attempt = 0
        while not await self._connect():
            await asyncio.sleep(wire.reconnect_delay_s(attempt, self.config.reconnect_max_s))
            attempt += 1

    async def _read_loop(self) -> None:
        while True:
            if not self.up:
                await self._reconnect()
            try:
                answer = await self.client.xread(
                    {self.config.key: wire.entry_id(self.last_cursor)},
                    count=READ_COUNT,
                    block=self.config.block_ms,
                )
            except (redis.RedisError, OSError) as exc:
                self._went_down(exc)
                continue
            for stream_answer in answer if isinstance(answer, list) else ():
                for entry_id, fields in wire.entries(stream_answer[1]):
                    self.last_cursor = wire.cursor_of_id(entry_id)
                    entry = wire.parse_entry(entry_id, fields)
                    if entry is not None:
                        self.hub.deliver(entry.type, entry.stream, entry.payload)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._flush()

    async def _flush(self) -> None:
        batch = [self._pending.popleft() for _ in range(min(APPEND_BATCH, len(self._pending)))]
        try:
            await self._append(
                keys=[self.config.key, self._seq_key],
                args=wire.append_args(self.config.max_events, batch, self.origin),
            )
            self.n_appended += len(batch)
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)
            batch += [self._pending.popleft() for _ in range(len(self._pending))]
            self.n_gap += len(batch)
            self._gap_since_up += len(batch)
            for kind, stream, payload in batch:
                self.hub.deliver(kind, stream, payload)


async def _durability(client: aredis.Redis) -> dict[str, str]:
    """The bus server's persistence settings (``appendonly``, ``appendfsync``); may be hidden."""
    try:
        found = await client.config_get("appendonly", "appendfsync")
    except redis.ResponseError:  # managed servers may forbid CONFIG
        return {"appendonly": "unknown", "appendfsync": "unknown"}
    return {str(k): str(v) for k, v in found.items()}


class Leases:
    """Cluster-wide stream names: one lease per live name on this replica (a registry hook)."""

    def __init__(self, bus: Bus, *, on_lost: Callable[[str], None] | None = None) -> None:
        """Hold names on ``bus``; ``on_lost(name)`` is called when another replica took one."""
        self.bus = bus
        self.config = bus.config
        self.on_lost = on_lost
        self.client = redis.Redis.from_url(
            self.bus.config.url or "", **client_options(bus.config, blocking=False)
        )
        self._renew = self.client.register_script(wire.RENEW_SCRIPT)
        self._release = self.client.register_script(wire.RELEASE_SCRIPT)
        self._held: dict[str, str] = {}  # name -> this claim's token
        self._task: asyncio.Task[None] | None = None
        self._n = 0

    def key(self, name: str) -> str:
        """The Redis key of ``name``'s lease."""
        return f"{self.config.key}:lease:{name}"

    def acquire(self, name: str) -> None:
        """Take ``name``'s lease (held locally only while the bus is down).

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
        """Free ``name``'s lease if this replica still holds it."""
        token = self._held.pop(name, None)
        if token is None or not self.bus.up:
            return  # an unreleased lease expires after bus.lease_ms
        try:
            self._release(keys=[self.key(name)], args=[token])
        except (redis.RedisError, OSError) as exc:
            log.warning("bus: lease of stream %r not freed (%s); it expires", name, exc)

    def start(self) -> None:
        """Renew the held leases every third of ``bus.lease_ms`` from now on."""
        self._task = asyncio.create_task(self._renew_loop(), name="bus-leases")

    async def close(self) -> None:
        """Stop renewing and free every held lease."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for name in list(self._held):
            self.release(name)
        self.client.close()

    def renew(self) -> list[str]:
        """Renew (or take again) every held lease now; return the names another replica took."""
        if not self.bus.up or not self._held:
            return []
        held = list(self._held.items())
        try:
            pipe = self.client.pipeline(transaction=False)
            for name, token in held:
                self._renew(keys=[self.key(name)], args=[token, self.config.lease_ms], client=pipe)
            answers = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("bus: leases not renewed: %s", exc)
            return []
        lost = [name for (name, _), ok in zip(held, answers, strict=True) if not ok]
        for name in lost:
            self._held.pop(name, None)
        return lost

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_ms / 3000)
            for name in self.renew():
                log.error("bus: stream %r: another replica took its name; ending it here", name)
                if self.on_lost is not None:
                    self.on_lost(name)

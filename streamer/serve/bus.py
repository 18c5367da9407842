"""The event bus: several replicas share their events and stream names through Redis / Valkey.

With ``bus.url`` set, the daemon's hub is a :class:`BusHub`: :meth:`BusHub.publish` hands each
event to :class:`Bus`, whose writer appends it to one Redis Stream (cursor assigned atomically,
see :mod:`streamer.serve.bus_wire`); the bus's one reader (``XREAD BLOCK``) feeds every entry,
this replica's own included, to the local hub, so every subscriber on every replica sees every
stream in one order. Slow subscribers lose their oldest events exactly as without a bus.

Bus down: publishing falls back to local delivery (this replica's subscribers still get its own
streams; the other replicas do not), each such event is counted as the *gap* and logged when
the bus is back, ``/readyz`` answers 503, and the bus is retried with a doubling backoff.

An append whose answer timed out may or may not have reached the bus: its events are left to
the reader (delivered if the bus took them) and counted as *unconfirmed*, never delivered twice.
:meth:`Bus.close` writes what is queued before it stops (bounded), and :meth:`Bus.caught_up`
waits until the reader delivered this replica's last events (a draining daemon's subscribers).

Stream names are leased on the bus too: see :class:`streamer.serve.cluster.Leases`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis

from streamer.errors import ConfigError
from streamer.protocol import OPT_IN_EVENTS
from streamer.pubsub import Hub
from streamer.serve import bus_wire as wire
from streamer.serving_config import BusConfig

log = logging.getLogger(__name__)

#: Entries one read or one replay page takes at most.
READ_COUNT = 500
APPEND_BATCH = 200  # events one append script carries at most


def client_options(config: BusConfig) -> dict[str, Any]:
    """Keyword arguments of ``Redis.from_url`` for ``config`` (password file, CA, timeouts).

    The client also makes blocking reads (``XREAD BLOCK``), so its reads may last
    ``bus.block_ms`` longer than ``bus.timeout_s``.

    Raises:
        ConfigError: the password file cannot be read.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": config.timeout_s,
        "socket_timeout": config.timeout_s + config.block_ms / 1000,
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
        """Send the event to the bus, or to the local subscribers while the bus is down.

        Live revisions (``partial``, ``eager``, ``resumed``) stay on this replica: they are
        superseded within a second, and the bus stream is the journal.
        """
        bus = self.bus
        live = event_type in OPT_IN_EVENTS
        if bus is not None and not live and bus.append(event_type, stream, payload):
            return 0  # delivered (to every replica) once the bus has it
        return self.deliver(event_type, stream, payload)

    def deliver(self, event_type: str, stream: str, payload: str) -> int:
        """Offer ``payload`` to the local subscribers (see :meth:`Hub.publish`)."""
        return super().publish(event_type, stream, payload)


class Bus:
    """One replica's connection to the bus: its writer, its reader and its state."""

    def __init__(self, config: BusConfig, hub: BusHub) -> None:
        """Prepare the bus for ``hub``; :meth:`start` connects.

        Raises:
            ConfigError: no ``bus.url``, or the password file cannot be read.
        """
        if config.url is None:
            raise ConfigError("bus.url is not set")
        self.config = config
        self.hub = hub
        #: This replica's id on the bus (entries' ``origin``, lease tokens, generated names).
        self.origin = uuid.uuid4().hex[:12]
        #: The bus's URL without its password, for logs and ``/readyz``.
        self.shown_url = wire.redact_url(config.url)
        #: ``Redis.from_url`` options of the bus (the password file is read once, here).
        self.options = client_options(config)
        self.client = aredis.Redis.from_url(config.url, **self.options)
        self.up = False
        self.durability: dict[str, str] = {}
        self.n_gap = 0
        #: Events whose append timed out: on the bus or not, the reader delivers them if so.
        self.n_unconfirmed = 0
        self._cursor: int | None = None  # None: never connected, start reading at the end
        self._appended_to = 0  # the last cursor this replica's appends were given
        self._flushing = False
        self._closing = False
        self._told_down = False
        self._gap_since_up = 0
        self._down_at: float | None = time.monotonic()
        self._pending: collections.deque[tuple[str, str, str]] = collections.deque()
        self._wake = asyncio.Event()
        self._moved = asyncio.Event()  # set whenever the reader or the writer got further
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._append = self.client.register_script(wire.APPEND_SCRIPT)
        self._seq_key = f"{config.key}:seq"

    @property
    def last_cursor(self) -> int:
        """The cursor of the last entry the reader delivered (0: none yet)."""
        return self._cursor or 0

    async def start(self) -> None:
        """Connect (or keep trying in the background) and start the reader and the writer."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await self._connect()
        self.hub.bus = self
        self._reader = asyncio.create_task(self._read_loop(), name="bus-reader")
        self._writer = asyncio.create_task(self._write_loop(), name="bus-writer")

    async def close(self, timeout_s: float) -> None:
        """Write what is queued (waiting ``timeout_s`` at most), stop reading and disconnect.

        Events published from now on reach the local subscribers only.
        """
        self.hub.bus = None
        self._closing = True
        self._wake.set()
        if self._writer is not None:  # it ends once nothing is queued (or the bus failed)
            await asyncio.wait([self._writer], timeout=timeout_s)
            if not self._writer.done():
                log.error(
                    "bus %s: %d event(s) not written within %.1f s; closing anyway",
                    self.shown_url,
                    len(self._pending),
                    timeout_s,
                )
        # Python 3.11's asyncio.wait_for (inside redis-py) can swallow a cancellation; the
        # reader then stops at its next turn, having seen _closing.
        tasks = [t for t in (self._reader, self._writer) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()

    async def caught_up(self, timeout_s: float) -> bool:
        """Wait until the reader delivered every event queued so far (True), or ``timeout_s``.

        Also True at once while the bus is down: its events were delivered locally.
        """
        try:
            async with asyncio.timeout(timeout_s):
                while self.up and (
                    self._pending or self._flushing or self.last_cursor < self._appended_to
                ):
                    self._moved.clear()
                    await self._moved.wait()
        except TimeoutError:
            return False
        return True

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` reports of the bus."""
        return {
            "url": self.shown_url,
            "state": "up" if self.up else "down",
            "durability": self.durability,
            "gap_events": self.n_gap,
            "unconfirmed_events": self.n_unconfirmed,
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
            if self._told_down:  # pooled connections may predate a restart of the bus
                await self.client.connection_pool.disconnect(inuse_connections=False)
            await self.client.ping()
            self.durability = await _durability(self.client)
            end = await self._end_cursor()
            if self._cursor is None:  # the first connection: read from the bus's end
                self._cursor = end
            elif end < self._cursor:  # restarted empty or from an older state, a lossy failover
                log.error(
                    "bus %s lost its events after cursor %d (it ends at %d): reading on from "
                    "there; those cursors will be given again",
                    self.shown_url,
                    self._cursor,
                    end,
                )
                self._cursor = self._appended_to = end
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)
            return False
        down_s = time.monotonic() - (self._down_at or time.monotonic())
        log.info(
            "bus %s up (replica %s, durability %s)%s",
            self.shown_url,
            self.origin,
            self.durability,
            f" after {down_s:.1f} s down; {self._gap_since_up} event(s) meanwhile reached "
            "this replica's subscribers only (the gap)"
            if self._told_down
            else "",
        )
        self.up, self._down_at, self._told_down = True, None, False
        self._gap_since_up = 0
        return True

    def _went_down(self, exc: BaseException) -> None:
        if self.up or not self._told_down:  # once per outage
            log.error("bus %s down: %s; delivering locally", self.shown_url, exc)
            self._told_down = True
        self.up = False
        self._moved.set()
        if self._down_at is None:
            self._down_at = time.monotonic()

    async def _end_cursor(self) -> int:
        last = wire.entries(await self.client.xrevrange(self.config.key, count=1))
        return wire.cursor_of_id(last[0][0]) if last else 0

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closing and not await self._connect():
            await asyncio.sleep(wire.reconnect_delay_s(attempt, self.config.reconnect_max_s))
            attempt += 1

    async def _read_loop(self) -> None:
        while not self._closing:
            if not self.up:
                await self._reconnect()
                continue
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
                    entry = wire.parse_entry(entry_id, fields)
                    if entry is None:  # foreign: skipped
                        self._cursor = wire.cursor_of_id(entry_id)
                        continue
                    self._cursor = entry.cursor
                    self.hub.deliver(entry.type, entry.stream, entry.payload)
            self._moved.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._flush()
            if self._closing:
                return

    async def _flush(self) -> None:
        batch = [self._pending.popleft() for _ in range(min(APPEND_BATCH, len(self._pending)))]
        self._flushing = True
        try:
            cursor = await self._append(
                keys=[self.config.key, self._seq_key],
                args=wire.append_args(
                    batch,
                    self.origin,
                    max_events=self.config.max_events,
                    retention_s=self.config.retention_s,
                ),
            )
            self._appended_to = max(self._appended_to, int(cursor))
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)
            if isinstance(exc, redis.TimeoutError | TimeoutError):  # it may have run: the reader
                self.n_unconfirmed += len(batch)
                log.warning(
                    "bus %s: %d event(s) unconfirmed (no answer in time); they reach the "
                    "subscribers through the bus if it took them",
                    self.shown_url,
                    len(batch),
                )
                batch = []
            batch += [self._pending.popleft() for _ in range(len(self._pending))]
            self.n_gap += len(batch)
            self._gap_since_up += len(batch)
            for kind, stream, payload in batch:
                self.hub.deliver(kind, stream, payload)
        finally:
            self._flushing = False
            self._moved.set()


async def _durability(client: aredis.Redis) -> dict[str, str]:
    """The bus server's persistence settings (``appendonly``, ``appendfsync``); may be hidden."""
    try:
        found = await client.config_get("appendonly", "appendfsync")
    except redis.ResponseError:  # managed servers may forbid CONFIG
        return {"appendonly": "unknown", "appendfsync": "unknown"}
    return {str(k): str(v) for k, v in found.items()}

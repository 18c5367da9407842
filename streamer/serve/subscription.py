"""One ``/v1/events`` connection: a hub subscriber and the task that forwards its events.

Each ``subscribe`` message replaces the connection's filter. Events reach the socket in publish
order; a subscriber that reads too slowly loses its oldest events and is told how many
(``dropped``). A malformed message gets an ``error`` event, closes the connection with the
documented code and costs at most one (rate-limited) log line.

Resuming (daemons on an event bus, :mod:`streamer.serve.bus`): every event then carries its bus
``cursor``, and a client that connects to ``/v1/events?since=CURSOR`` (or ``?since=TIME``, ISO
8601 or Unix seconds with a decimal point) first gets the events after that point that match its
first ``subscribe``, then the live ones, each exactly once. A gap older than
``bus.replay_max_events`` is reported as ``dropped`` before the replay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis
from websockets.asyncio.server import ServerConnection

from streamer import protocol as proto
from streamer.endpoints import EventsState
from streamer.errors import ConfigError, ProtocolError
from streamer.pubsub import Subscriber
from streamer.serve.bus import Bus, BusHub
from streamer.serve.bus_wire import cursor_of
from streamer.serve.client_errors import close_discarding
from streamer.serve.journal import parse_since
from streamer.serve.security import query_param
from streamer.streams.services import Services

log = logging.getLogger(__name__)


class Subscription:
    """One ``/v1/events`` connection: a hub subscriber and the task that forwards its events."""

    def __init__(self, services: Services, ws: ServerConnection) -> None:
        """Serve ``ws`` with ``services``; :meth:`run` does the work."""
        self.services = services
        self.ws = ws
        self.state = EventsState(max_message_bytes=services.config.server.max_message_bytes)
        self.wake = asyncio.Event()
        self.sent = asyncio.Event()
        self.sent.set()
        self.current: Subscriber[str] | None = None
        #: Live events up to this bus cursor were sent by the replay already.
        self.replayed_to = 0

    async def run(self) -> None:
        """Read subscribe messages; forward matching events until the connection closes."""
        loop = asyncio.get_running_loop()
        forwarder: asyncio.Task[None] | None = None
        try:
            since = self._since()
        except ProtocolError as exc:
            await self._fail(exc)
            return
        try:
            async for message in self.ws:
                try:
                    if isinstance(message, bytes):
                        self.state.on_binary(message)
                    msg = self.state.on_text(message)
                except ProtocolError as exc:
                    await self._fail(exc)
                    return
                self._resubscribe(msg, loop)
                await self.ws.send(
                    proto.Subscribed(streams=msg.streams, events=msg.events).encode()
                )
                if since is not None:
                    await self._replay(msg, *since)
                    since = None
                if forwarder is None:
                    forwarder = asyncio.create_task(self._forward(), name=f"fwd-{self.ws.id}")
        finally:
            self._unsubscribe()
            if forwarder is not None:
                forwarder.cancel()
                await asyncio.gather(forwarder, return_exceptions=True)

    def _bus(self) -> Bus | None:
        hub = self.services.hub
        return hub.bus if isinstance(hub, BusHub) else None

    def _since(self) -> tuple[int | None, float | None] | None:
        """The ``since`` of the connection's URL, None without one.

        Raises:
            ProtocolError: ``bad_field``: unreadable, or the daemon has no bus to replay.
        """
        try:
            value = query_param(self.ws.request.path if self.ws.request else "", "since")
        except ValueError as exc:
            raise ProtocolError(
                proto.BAD_FIELD, f"the URL's query: {exc}", close_code=proto.CLOSE_INVALID_DATA
            ) from None
        if value is None:
            return None
        if self._bus() is None:
            raise ProtocolError(
                proto.BAD_FIELD,
                "since: only on a daemon with an event bus",
                close_code=proto.CLOSE_INVALID_DATA,
            )
        try:
            return parse_since(value)
        except ConfigError as exc:
            raise ProtocolError(
                proto.BAD_FIELD,
                str(exc).replace("--since", "since"),
                close_code=proto.CLOSE_INVALID_DATA,
            ) from None

    async def _replay(
        self, msg: proto.Subscribe, since_seq: int | None, since_time: float | None
    ) -> None:
        """Send the bus's events after ``since`` that ``msg`` asks for, before any live one."""
        bus, sub = self._bus(), self.current
        if bus is None or sub is None:
            return
        after, limit = since_seq or 0, self.services.config.bus.replay_max_events
        try:
            if since_time is not None:
                after = max(after, await bus.cursor_before(since_time))
            after = min(after, end := bus.last_cursor)  # none after the end: the live ones
            if end - after > limit:
                await self.ws.send(proto.Dropped(count=end - after - limit).encode())
                after = end - limit
            self.replayed_to = after
            async for entry in bus.history(after=after):
                if sub.matches(entry.type, entry.stream):
                    await self.ws.send(entry.payload)
                self.replayed_to = entry.cursor
        except (redis.RedisError, OSError) as exc:
            log.warning("connection %s: replay from the bus failed: %s", self.ws.id, exc)
            error = proto.Error(code=proto.INTERNAL, message="the bus is down: no replay")
            await self.ws.send(error.encode())

    def _resubscribe(self, msg: proto.Subscribe, loop: asyncio.AbstractEventLoop) -> None:
        self._unsubscribe()
        self.current = self.services.hub.subscribe(
            streams=msg.streams,
            events=msg.events,
            queue_len=self.services.config.server.subscriber_queue,
            notify=self._waker(loop),
        )
        self.services.metrics.subscriber_added(str(self.ws.id)[:8], self.current)

    def _unsubscribe(self) -> None:
        if self.current is not None:
            self.services.metrics.subscriber_removed(self.current)
            self.services.hub.unsubscribe(self.current)

    async def _fail(self, exc: ProtocolError) -> None:
        self.services.client_errors.report(log, f"connection {self.ws.id}", exc.code, str(exc))
        self.services.metrics.error(exc.code)
        await self.ws.send(proto.Error.from_exception(exc).encode())
        await close_discarding(self.ws, exc.close_code or proto.CLOSE_POLICY, exc.code)

    def _waker(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        def wake() -> None:
            loop.call_soon_threadsafe(self.wake.set)

        return wake

    async def settle(self) -> None:
        """Wait until every event queued for this subscriber was written to the socket.

        On a bus, first until the bus delivered this replica's last events (the drain finished
        the streams just before: their final events are still travelling through the bus).
        """
        if (bus := self._bus()) is not None:
            await bus.caught_up(self.services.config.server.shutdown_timeout_s)
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
                cursor = cursor_of(text)
                if cursor is not None and cursor <= self.replayed_to:
                    continue  # the replay sent it
                await self.ws.send(text)
            self.sent.set()

"""One ``/v1/events`` connection: a hub subscriber and the task that forwards its events.

Each ``subscribe`` message replaces the connection's filter. Events reach the socket in publish
order; a subscriber that reads too slowly loses its oldest events and is told how many
(``dropped``). A malformed message gets an ``error`` event, closes the connection with the
documented code and costs at most one (rate-limited) log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection

from streamer import protocol as proto
from streamer.endpoints import EventsState
from streamer.errors import ProtocolError
from streamer.pubsub import Subscriber
from streamer.serve.client_errors import close_discarding
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

    async def run(self) -> None:
        """Read subscribe messages; forward matching events until the connection closes."""
        loop = asyncio.get_running_loop()
        forwarder: asyncio.Task[None] | None = None
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
                if forwarder is None:
                    forwarder = asyncio.create_task(self._forward(), name=f"fwd-{self.ws.id}")
        finally:
            self._unsubscribe()
            if forwarder is not None:
                forwarder.cancel()
                await asyncio.gather(forwarder, return_exceptions=True)

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
        await self.ws.send(proto.Error(code=exc.code, message=str(exc)).encode())
        await close_discarding(self.ws, exc.close_code or proto.CLOSE_POLICY, exc.code)

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

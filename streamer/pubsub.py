"""The pub/sub hub: every published event goes to each subscriber whose filter matches, no I/O.

Each subscriber owns a bounded queue. Publishing never blocks and never fails: when a queue is
full its oldest event is dropped and counted, so a slow subscriber loses old events (and is told
how many) while ingest and every other subscriber go on at full speed. The I/O layer learns that
a queue has something through the subscriber's ``notify`` callback and then calls
:meth:`Subscriber.drain`.

Thread safety: publishing, subscribing and draining may happen on different threads (one lock
per subscriber, taken for a few deque operations; the subscriber list is copied on write).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from streamer.protocol import OPT_IN_EVENTS

log = logging.getLogger(__name__)

T = TypeVar("T")
ALL = "*"
DEFAULT_QUEUE_LEN = 256


class Subscriber(Generic[T]):
    """One subscriber: a filter on stream name and event type, and a bounded queue of payloads.

    Contract: the hub calls ``notify`` (on the publishing thread) when the queue goes from
    empty to non-empty, and only then. The consumer must therefore reset its own wake-up flag
    *before* calling :meth:`drain` (e.g. ``event.clear(); items, lost = sub.drain()``), and drain
    until the queue is empty, or it may sleep with events waiting. ``notify`` must not block; an
    exception it raises is logged and swallowed.
    """

    def __init__(
        self,
        *,
        streams: Iterable[str] = (ALL,),
        events: Iterable[str] = (ALL,),
        queue_len: int = DEFAULT_QUEUE_LEN,
        notify: Callable[[], None] | None = None,
    ) -> None:
        """Create a subscriber; use :meth:`Hub.subscribe` rather than this directly.

        Args:
            streams: stream names to receive, or ``"*"`` among them for every stream.
            events: event types to receive, or ``"*"`` among them for every type.
            queue_len: how many undelivered events to keep before dropping the oldest.
            notify: called when the queue goes from empty to non-empty.

        Raises:
            ValueError: queue_len is not positive.
        """
        if queue_len < 1:
            raise ValueError(f"queue_len must be at least 1, got {queue_len}")
        stream_set, event_set = frozenset(streams), frozenset(events)
        #: With ``"*"``: the event types left out anyway (live revisions such as ``partial``,
        #: which a subscriber names explicitly; :data:`streamer.protocol.OPT_IN_EVENTS`).
        self.opt_in = OPT_IN_EVENTS - event_set
        self.streams: frozenset[str] | None = None if ALL in stream_set else stream_set
        self.events: frozenset[str] | None = None if ALL in event_set else event_set
        self.queue_len = queue_len
        self.notify = notify
        self.n_delivered = 0
        self.n_dropped = 0
        self._lost = 0
        self._queue: deque[T] = deque()
        self._lock = threading.Lock()

    def matches(self, event_type: str, stream: str) -> bool:
        """Whether an event of ``event_type`` from ``stream`` passes this subscriber's filter."""
        if self.streams is not None and stream not in self.streams:
            return False
        if self.events is None:
            return event_type not in self.opt_in
        return event_type in self.events

    def offer(self, payload: T) -> None:
        """Queue ``payload``, dropping the oldest queued one if full; never blocks."""
        with self._lock:
            was_empty = not self._queue
            if len(self._queue) >= self.queue_len:
                self._queue.popleft()
                self._lost += 1
                self.n_dropped += 1
            self._queue.append(payload)
        if was_empty and self.notify is not None:
            try:
                self.notify()
            except Exception:
                log.exception("subscriber notify callback failed")

    def drain(self) -> tuple[list[T], int]:
        """Take every queued payload, oldest first.

        Returns:
            The payloads and how many older ones were dropped since the previous drain (those
            were lost before the first returned payload).
        """
        with self._lock:
            items, lost = list(self._queue), self._lost
            self._queue.clear()
            self._lost = 0
        self.n_delivered += len(items)
        return items, lost

    def __len__(self) -> int:
        """Number of payloads waiting."""
        return len(self._queue)


class Hub(Generic[T]):
    """Routes published payloads to the matching subscribers.

    Contract: :meth:`publish` is called by producers (typically with an already-encoded JSON
    string, so one encoding serves every subscriber); each subscriber is drained by its own
    consumer. A subscriber gets events in publish order, minus the oldest ones it lost.
    """

    def __init__(self, *, queue_len: int = DEFAULT_QUEUE_LEN) -> None:
        """Create an empty hub; ``queue_len`` is the default per-subscriber queue length."""
        self.queue_len = queue_len
        self._subscribers: tuple[Subscriber[T], ...] = ()
        self._lock = threading.Lock()

    def subscribe(
        self,
        *,
        streams: Iterable[str] = (ALL,),
        events: Iterable[str] = (ALL,),
        queue_len: int | None = None,
        notify: Callable[[], None] | None = None,
    ) -> Subscriber[T]:
        """Add and return a subscriber (see :class:`Subscriber` for the arguments)."""
        sub: Subscriber[T] = Subscriber(
            streams=streams,
            events=events,
            queue_len=self.queue_len if queue_len is None else queue_len,
            notify=notify,
        )
        with self._lock:
            self._subscribers = (*self._subscribers, sub)
        return sub

    def unsubscribe(self, sub: Subscriber[T]) -> None:
        """Remove ``sub``; it receives nothing more. Removing an absent subscriber is a no-op."""
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)

    def publish(self, event_type: str, stream: str, payload: T) -> int:
        """Offer ``payload`` to every subscriber whose filter matches; never blocks.

        Returns:
            How many subscribers it was queued for.
        """
        n = 0
        for sub in self._subscribers:
            if sub.matches(event_type, stream):
                sub.offer(payload)
                n += 1
        return n

    def any_subscriber(self, predicate: Callable[[Subscriber[T]], bool]) -> bool:
        """Whether ``predicate`` holds for at least one current subscriber; never blocks.

        Safe from any thread: the subscriber tuple is replaced, never changed, on (un)subscribe.
        """
        return any(predicate(sub) for sub in self._subscribers)

    def __len__(self) -> int:
        """Number of subscribers."""
        return len(self._subscribers)

"""Tests for the pub/sub hub: filters, bounded queues with drop-oldest, and wake-ups."""

from __future__ import annotations

import logging
import threading

import pytest
from hypothesis import given, strategies as st

from streamer.pubsub import ALL, Hub, Subscriber

STREAMS = ["a", "b", "c"]
TYPES = ["speech_started", "utterance", "error"]

filters = st.lists(st.sampled_from([*STREAMS, ALL]), max_size=3)
type_filters = st.lists(st.sampled_from([*TYPES, ALL]), max_size=3)
publications = st.lists(st.tuples(st.sampled_from(TYPES), st.sampled_from(STREAMS)), max_size=30)


@given(filters, type_filters, publications)
def test_filter_matching(
    streams: list[str], events: list[str], pubs: list[tuple[str, str]]
) -> None:
    """A subscriber gets exactly the events whose stream and type its filter names (or '*')."""
    hub: Hub[int] = Hub(queue_len=100)
    sub = hub.subscribe(streams=streams, events=events)
    expected = [
        i
        for i, (kind, stream) in enumerate(pubs)
        if (ALL in streams or stream in streams) and (ALL in events or kind in events)
    ]
    counts = [hub.publish(kind, stream, i) for i, (kind, stream) in enumerate(pubs)]
    assert sub.drain() == (expected, 0)
    assert sum(counts) == len(expected)


@given(st.integers(1, 8), st.lists(st.integers(0, 12), max_size=12))
def test_drop_oldest_counter_is_exact(queue_len: int, bursts: list[int]) -> None:
    """After any burst/drain sequence, the kept events are the newest and the lost count exact."""
    hub: Hub[int] = Hub()
    sub = hub.subscribe(queue_len=queue_len)
    serial = 0
    total_lost = 0
    for burst in bursts:
        first = serial
        for _ in range(burst):
            hub.publish("utterance", "a", serial)
            serial += 1
        items, lost = sub.drain()
        kept = min(burst, queue_len)
        assert items == list(range(serial - kept, serial))
        assert lost == burst - kept
        assert lost + len(items) == serial - first
        total_lost += lost
    assert sub.n_dropped == total_lost
    assert sub.n_delivered == serial - total_lost
    assert len(sub) == 0


def test_slow_subscriber_does_not_affect_others() -> None:
    """A full queue drops only its own oldest events; a second subscriber gets them all."""
    hub: Hub[str] = Hub()
    slow = hub.subscribe(queue_len=2)
    fast = hub.subscribe(queue_len=100, streams=["a"])
    for i in range(5):
        assert hub.publish("utterance", "a", f"e{i}") == 2
    assert slow.drain() == (["e3", "e4"], 3)
    assert fast.drain() == ([f"e{i}" for i in range(5)], 0)
    assert slow.drain() == ([], 0)


def test_notify_fires_on_empty_to_non_empty_only() -> None:
    """The wake-up hook runs once per batch, again only after a drain emptied the queue."""
    calls: list[int] = []
    hub: Hub[int] = Hub(queue_len=2)
    sub = hub.subscribe(notify=lambda: calls.append(len(sub)))
    for i in range(4):
        hub.publish("utterance", "a", i)
    assert calls == [1]
    sub.drain()
    hub.publish("utterance", "a", 9)
    assert calls == [1, 1]


def test_failing_notify_is_logged_and_publish_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """An exception from notify never escapes publish nor stops delivery to the others."""

    def broken() -> None:
        raise RuntimeError("event loop is closed")

    hub: Hub[int] = Hub()
    bad = hub.subscribe(notify=broken)
    good = hub.subscribe()
    with caplog.at_level(logging.ERROR, logger="streamer.pubsub"):
        assert hub.publish("utterance", "a", 1) == 2
    assert "notify callback failed" in caplog.text
    assert bad.drain() == ([1], 0)
    assert good.drain() == ([1], 0)


def test_unsubscribe() -> None:
    """An unsubscribed subscriber receives nothing; unsubscribing twice is harmless."""
    hub: Hub[int] = Hub()
    sub = hub.subscribe()
    other = hub.subscribe()
    assert len(hub) == 2
    hub.unsubscribe(sub)
    hub.unsubscribe(sub)
    assert len(hub) == 1
    assert hub.publish("utterance", "a", 1) == 1
    assert sub.drain() == ([], 0)
    assert other.drain() == ([1], 0)


def test_queue_len_must_be_positive() -> None:
    """A subscriber with no room at all is refused."""
    with pytest.raises(ValueError, match="queue_len"):
        Hub[int]().subscribe(queue_len=0)
    assert Subscriber[int](queue_len=1).queue_len == 1


def test_publishing_from_threads_loses_nothing() -> None:
    """Concurrent publishers into a roomy queue deliver every event exactly once."""
    hub: Hub[int] = Hub(queue_len=10_000)
    sub = hub.subscribe()

    def produce(base: int) -> None:
        for i in range(2000):
            hub.publish("utterance", "a", base + i)

    threads = [threading.Thread(target=produce, args=(k * 10_000,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items, lost = sub.drain()
    assert lost == 0
    assert sorted(items) == [k * 10_000 + i for k in range(3) for i in range(2000)]


def test_any_subscriber() -> None:
    """any_subscriber asks a predicate of the current subscribers, and only of them."""
    hub: Hub[str] = Hub()
    assert not hub.any_subscriber(lambda s: True)
    sub = hub.subscribe(streams=["a"])
    assert hub.any_subscriber(lambda s: s.matches("utterance", "a"))
    assert not hub.any_subscriber(lambda s: s.matches("utterance", "b"))
    hub.unsubscribe(sub)
    assert not hub.any_subscriber(lambda s: True)

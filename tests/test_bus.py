"""Replicas on one real event bus (redis-server on 127.0.0.1), and the bus's pure parts.

Each replica is a whole daemon (StreamerServer, real onnxruntime on a tiny bundle) on
127.0.0.1 port 0, joined to the bus as ``streamer serve --bus`` joins it; the crash test runs
its replicas as ``python -m streamer serve`` processes (``streamer.tools.bench.Daemon``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aredis
from live_server import (
    UNIT_S,
    Daemon,
    config,
    http_get,
    read_until,
    send_audio,
    speech,
    start_msg,
)
from onnx_graphs import write_bundle
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer import protocol as proto
from streamer.app import build_services, server_info
from streamer.errors import ConfigError
from streamer.serve import bus_wire as wire
from streamer.serve.bus import APPEND_BATCH, Bus
from streamer.serve.cluster import join_bus
from streamer.serve.journal import print_journal
from streamer.serve.websocket import StreamerServer
from streamer.tools.bench import Daemon as DaemonProcess

REDIS = shutil.which("redis-server") or shutil.which("valkey-server")
needs_redis = pytest.mark.skipif(REDIS is None, reason="no redis-server (make install)")

# ---------------------------------------------------------------- pure parts


def test_cursor_ids_and_entries() -> None:
    assert wire.entry_id(41) == "41-0"
    assert wire.cursor_of_id(b"41-0") == 41
    with pytest.raises(ValueError, match="not a stream entry id"):
        wire.cursor_of_id("41")
    fields = {b"t": b"1714563000.5", b"type": b"utterance", b"stream": b"k", b"origin": b"r1"}
    entry = wire.parse_entry(b"7-0", {**fields, b"event": b'{"type":"utterance","seq":0}'})
    assert entry == wire.Entry(
        7, 1714563000.5, "utterance", "k", "r1", '{"type":"utterance","seq":0}'
    )
    assert entry.payload == '{"type":"utterance","seq":0,"cursor":7}'
    assert wire.parse_entry(b"7-0", fields) is None  # no event
    assert wire.parse_entry(b"x", {**fields, b"event": b"{}"}) is None
    assert wire.parse_entry(b"7-0", [1, 2]) is None
    assert wire.entries([[b"1-0", {}], "junk", (b"2-0", {})]) == [(b"1-0", {}), (b"2-0", {})]
    assert wire.entries(None) == []


def test_cursor_rides_on_v1_events() -> None:
    event = proto.Dropped(count=3).encode()
    text = wire.with_cursor(event, 12)
    assert wire.cursor_of(text) == 12
    assert wire.cursor_of(event) is None
    assert proto.decode_event(text) == proto.Dropped(count=3)  # v1 readers ignore it
    assert wire.with_cursor("{}", 1) == '{"cursor":1}'


def test_backoff_and_redaction() -> None:
    delays = [wire.reconnect_delay_s(i, 1.0) for i in range(8)]
    assert delays[0] == 0.05
    assert delays == sorted(delays)
    assert delays[-1] == 1.0
    assert wire.redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert wire.redact_url("redis://u:pw@h") == "redis://u:***@h"
    args = wire.append_args([("a", "s", "{}")], "r", max_events=10, retention_s=60)
    assert args == ["10", "60.0", "a", "s", "r", "{}"]


def test_bus_url_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"bus\.url"):
        config(bus={"url": "http://127.0.0.1:6379"})
    with pytest.raises(ConfigError, match=r"bus\.url"):  # urllib itself refuses this one
        config(bus={"url": "redis://[::1:6379"})


@pytest.mark.parametrize("retention_s", [-1.0, float("nan"), float("inf")])
def test_bus_retention_is_checked(retention_s: float) -> None:
    """bus.retention_s is 0 (off) or a finite number of seconds."""
    with pytest.raises(ConfigError, match=r"bus\.retention_s"):
        config(bus={"retention_s": retention_s})


# ---------------------------------------------------------------- a real bus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """redis-server on 127.0.0.1, append-only with fsync always, restartable on its port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS is not None
        args = [REDIS, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)]
        args += ["--enable-debug-command", "local"]  # DEBUG SLEEP: a stalled bus
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            subprocess.run(["sleep", "0.02"], check=True)
        raise RuntimeError("redis-server did not start")

    async def stall(self, seconds: float) -> None:
        """Freeze the server for ``seconds`` (every client's commands wait, none fails)."""
        client = aredis.Redis.from_url(self.url)
        try:
            await client.execute_command("DEBUG", "SLEEP", str(seconds))
        finally:
            await client.aclose()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=UNIT_S)


@pytest.fixture
def bus_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"ctc": write_bundle(tmp_path_factory.mktemp("bundles") / "ctc")}


@contextlib.asynccontextmanager
async def replica(models: dict[str, Path], url: str, **bus: Any) -> AsyncIterator[Daemon]:
    """One daemon on the bus at ``url``, as ``streamer serve --bus URL`` runs it."""
    services = build_services(config(bus={"url": url, "reconnect_max_s": 0.2, **bus}), models)
    cluster = await join_bus(services)
    server = StreamerServer(services, info=server_info(services))
    cluster.serve_with(server)
    await server.start()
    try:
        yield Daemon(server)
    finally:
        await server.drain(UNIT_S)
        await cluster.close()
        services.runner.close()


async def subscriber(
    d: Daemon, query: str = "", events: tuple[str, ...] = ("*",)
) -> ClientConnection:
    return await subscriber_at(d.url, query, events)


async def subscriber_at(
    url: str, query: str = "", events: tuple[str, ...] = ("*",)
) -> ClientConnection:
    """A /v1/events client of the daemon at ``url``, subscribed to every stream."""
    ws = await connect(url + proto.EVENTS_PATH + query)
    await ws.send(json.dumps({"type": "subscribe", "streams": ["*"], "events": list(events)}))
    assert json.loads(await ws.recv())["type"] == "subscribed"
    return ws


async def ingest(d: Daemon, name: str, samples: np.ndarray) -> list[dict[str, Any]]:
    """Stream ``samples`` as ``name``; return the events its own client got."""
    events = []
    async with connect(d.url + proto.INGEST_PATH) as ws:
        await ws.send(start_msg(name))
        await send_audio(ws, samples)
        await ws.send(json.dumps({"type": "end"}))
        async with asyncio.timeout(3 * UNIT_S):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    events.append(json.loads(await ws.recv()))
    return events


async def read_until_ended(ws: ClientConnection, names: set[str]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(3 * UNIT_S):
        while not names <= {e["stream"] for e in events if e["type"] == "ended"}:
            events.append(json.loads(await ws.recv()))
    return events


async def readyz_becomes(d: Daemon, status: int) -> None:
    """Poll /readyz (as a balancer does) until it answers ``status``."""
    async with asyncio.timeout(2 * UNIT_S):
        while (await http_get(d.port, "/readyz"))[0] != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def lease_freed(bus_server: RedisServer, name: str) -> None:
    """Wait until no replica holds ``name``'s lease."""
    client = aredis.Redis.from_url(bus_server.url)
    try:
        async with asyncio.timeout(UNIT_S):
            while await client.exists(f"streamer:events:lease:{name}"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await client.aclose()


def utterances(events: list[dict[str, Any]], stream: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "utterance" and stream in (None, e["stream"])]


@needs_redis
async def test_three_replicas_one_order(bus_server: RedisServer, models: dict[str, Path]) -> None:
    """A subscriber on A gets B's and C's utterances, once each, in the bus's one order."""
    audio = speech(seconds=10)
    async with (
        replica(models, bus_server.url) as a,
        replica(models, bus_server.url) as b,
        replica(models, bus_server.url) as c,
    ):
        on_a, on_b = await subscriber(a), await subscriber(b)
        own_b, own_c = await asyncio.gather(ingest(b, "b", audio), ingest(c, "c", audio))
        seen_a = await read_until_ended(on_a, {"b", "c"})
        seen_b = await read_until_ended(on_b, {"b", "c"})
        await on_a.close()
        await on_b.close()
    assert len(utterances(own_b)) >= 2
    assert len(utterances(own_c)) >= 2
    for name, own in (("b", own_b), ("c", own_c)):
        got = [{k: v for k, v in u.items() if k != "cursor"} for u in utterances(seen_a, name)]
        assert [u["seq"] for u in got] == [u["seq"] for u in utterances(own, name)]
        assert [u["transcript"] for u in got] == [u["transcript"] for u in utterances(own, name)]
    cursors = [e["cursor"] for e in seen_a]
    assert cursors == sorted(set(cursors))  # one order, each event once
    assert [e["cursor"] for e in seen_b] == cursors  # the same order on every replica


@needs_redis
async def test_one_name_cluster_wide(bus_server: RedisServer, models: dict[str, Path]) -> None:
    """A stream name live on A is stream_in_use on B; free again once A's stream ended."""
    async with replica(models, bus_server.url) as a, replica(models, bus_server.url) as b:
        async with connect(a.url + proto.INGEST_PATH) as first:
            await first.send(start_msg("kitchen"))
            assert json.loads(await first.recv())["type"] == "started"
            async with connect(b.url + proto.INGEST_PATH) as second:
                await second.send(start_msg("kitchen"))
                error = json.loads(await second.recv())
                with contextlib.suppress(ConnectionClosed):
                    await second.recv()
            assert error["code"] == proto.STREAM_IN_USE, error
            assert "another replica" in error["message"]
            assert second.close_code == proto.CLOSE_POLICY
        await lease_freed(bus_server, "kitchen")  # freeing is asynchronous (never on the loop)
        events = await ingest(b, "kitchen", speech(seconds=2))
        assert events[0]["type"] == "started"


@needs_redis
async def test_lost_lease_ends_the_stream(bus_server: RedisServer, models: dict[str, Path]) -> None:
    """A replica whose lease another took ends that stream with stream_in_use."""
    async with replica(models, bus_server.url, lease_ms=300) as a:
        async with connect(a.url + proto.INGEST_PATH) as ws:
            await ws.send(start_msg("hall"))
            assert json.loads(await ws.recv())["type"] == "started"
            other = aredis.Redis.from_url(bus_server.url)
            await other.set("streamer:events:lease:hall", "someone-else")
            await other.aclose()
            async with asyncio.timeout(UNIT_S):
                error = json.loads(await ws.recv())
                with contextlib.suppress(ConnectionClosed):
                    await ws.recv()
        assert error["code"] == proto.STREAM_IN_USE
        assert "lease" in error["message"]
        assert ws.close_code == proto.CLOSE_POLICY


@needs_redis
async def test_since_gets_exactly_the_gap(bus_server: RedisServer, models: dict[str, Path]) -> None:
    """A subscriber back with since=CURSOR gets what it missed, then live events, once each."""
    audio = speech(seconds=10)
    async with replica(models, bus_server.url) as a, replica(models, bus_server.url) as b:
        always = await subscriber(a)
        away = await subscriber(a)
        await ingest(b, "one", audio)
        first = await read_until_ended(away, {"one"})
        await away.close()
        await ingest(b, "two", audio)  # missed
        back = await subscriber(a, f"?since={first[-1]['cursor']}")
        live = asyncio.create_task(ingest(b, "three", audio))
        resumed = await read_until_ended(back, {"two", "three"})
        await live
        everything = await read_until_ended(always, {"one", "two", "three"})
        await back.close()
        await always.close()
    assert first + resumed == everything
    assert utterances(resumed, "two")
    assert utterances(resumed, "three")
    # the same gap through `streamer journal --since`
    cursor = first[-1]["cursor"]
    cfg = config(bus={"url": bus_server.url})
    out = io.StringIO()
    await asyncio.to_thread(
        print_journal, None, since=str(cursor), stream="two", out=out, bus=cfg.bus
    )
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event"] for r in lines] == [
        {k: v for k, v in e.items() if k != "cursor"} for e in resumed if e["stream"] == "two"
    ]
    assert [r["seq"] for r in lines] == [e["cursor"] for e in resumed if e["stream"] == "two"]


@needs_redis
async def test_bus_down_and_back(bus_server: RedisServer, models: dict[str, Path]) -> None:
    """Bus killed: replicas serve their own clients, /readyz says 503; back: 200, gap reported."""
    audio = speech(seconds=6)
    async with replica(models, bus_server.url) as a, replica(models, bus_server.url) as b:
        status, _, body = await http_get(a.port, "/readyz")
        ready = json.loads(body)
        assert status == 200
        assert ready["bus"]["state"] == "up"
        assert ready["bus"]["durability"] == {"appendonly": "yes", "appendfsync": "always"}
        local = await subscriber(a)
        bus_server.kill()
        await readyz_becomes(a, 503)
        own = await ingest(a, "alone", audio)
        assert len(utterances(own)) >= 1
        seen = await read_until_ended(local, {"alone"})
        assert utterances(seen) == utterances(own)  # local delivery, no cursor
        bus_server.start()
        await readyz_becomes(a, 200)
        ready = json.loads((await http_get(a.port, "/readyz"))[2])
        assert ready["bus"]["gap_events"] >= len(own)
        await readyz_becomes(b, 200)
        on_b = await subscriber(b)
        await ingest(a, "again", audio)
        assert utterances(await read_until_ended(on_b, {"again"}))
        await on_b.close()
        await local.close()


def note(stream: str, i: int = 0) -> str:
    """A small event of stream ``stream`` (the hub carries any JSON object)."""
    return json.dumps({"type": "note", "stream": stream, "i": i})


async def recv_json(ws: ClientConnection, timeout_s: float = UNIT_S) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        return dict(json.loads(await ws.recv()))


async def quiet_for(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Whatever ``ws`` gets within ``seconds``."""
    got: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                got.append(json.loads(await ws.recv()))
    return got


def bus_of(d: Daemon) -> Bus:
    bus = getattr(d.services.hub, "bus", None)
    assert isinstance(bus, Bus)
    return bus


@needs_redis
async def test_replica_started_while_bus_down_reads_from_its_end(
    bus_server: RedisServer, models: dict[str, Path]
) -> None:
    """A replica that starts before the bus does not replay the bus's history once it is up."""
    async with replica(models, bus_server.url) as a:
        for i in range(3):
            a.services.hub.publish("note", "history", note("history", i))
        assert await bus_of(a).caught_up(UNIT_S)
        assert bus_of(a).last_cursor == 3
        bus_server.kill()
        async with replica(models, bus_server.url) as b:
            on_b = await subscriber(b)
            bus_server.start()  # the same history (append-only file)
            await readyz_becomes(b, 200)
            await readyz_becomes(a, 200)
            a.services.hub.publish("note", "fresh", note("fresh"))
            first = await recv_json(on_b)
            await on_b.close()
    assert (first["stream"], first["cursor"]) == ("fresh", 4)


@needs_redis
async def test_bus_back_without_its_last_events_is_read_on_from_its_end(
    bus_server: RedisServer, models: dict[str, Path]
) -> None:
    """A bus back with fewer events than a replica read (a lossy failover) is not replayed."""
    async with replica(models, bus_server.url) as a:
        ws = await subscriber(a)
        for i in range(5):
            a.services.hub.publish("note", "before", note("before", i))
        assert [(await recv_json(ws))["cursor"] for _ in range(5)] == [1, 2, 3, 4, 5]
        kept = (await bus_entries(bus_server.url))[:3]  # as a standby that missed 4 and 5
        client = aredis.Redis.from_url(bus_server.url)
        await client.delete("streamer:events")
        for e in kept:
            fields: dict[Any, Any] = {"t": e.time, "type": e.type, "stream": e.stream}
            fields |= {"origin": e.origin, "event": e.event}
            await client.xadd("streamer:events", fields, id=f"{e.cursor}-0")
        await client.set("streamer:events:seq", 3)
        await client.aclose()
        bus_server.kill()
        bus_server.start()
        async with asyncio.timeout(2 * UNIT_S):
            while not (bus_of(a).up and bus_of(a).last_cursor == 3):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        a.services.hub.publish("note", "after", note("after"))
        got = [await recv_json(ws)]
        got += await quiet_for(ws, 0.3)
        await ws.close()
    assert [(e["stream"], e["cursor"]) for e in got] == [("after", 4)]


@needs_redis
async def test_close_writes_every_queued_event_in_order(
    bus_server: RedisServer, models: dict[str, Path]
) -> None:
    """Leaving the bus right after a burst still appends every event, in publish order."""
    services = build_services(config(bus={"url": bus_server.url}), models)
    cluster = await join_bus(services)
    n = 5 * APPEND_BATCH + 7
    for i in range(n):
        services.hub.publish("note", "burst", note("burst", i))
    await cluster.close()
    services.runner.close()
    client = aredis.Redis.from_url(bus_server.url)
    try:
        found = wire.entries(await client.xrange("streamer:events"))
    finally:
        await client.aclose()
    written = [wire.parse_entry(*e) for e in found]
    assert [json.loads(e.event)["i"] for e in written if e is not None] == list(range(n))


@needs_redis
async def test_since_after_the_end_gets_live_events(
    bus_server: RedisServer, models: dict[str, Path]
) -> None:
    """since=CURSOR beyond the bus's last cursor replays nothing and then gets the live events."""
    async with replica(models, bus_server.url) as a:
        a.services.hub.publish("note", "before", note("before"))
        assert await bus_of(a).caught_up(UNIT_S)
        end = bus_of(a).last_cursor
        ws = await subscriber(a, f"?since={end + 100}")
        a.services.hub.publish("note", "live", note("live"))
        live = await recv_json(ws)
        assert await quiet_for(ws, 0.2) == []
        await ws.close()
    assert (live["stream"], live["cursor"]) == ("live", end + 1)


@needs_redis
@pytest.mark.parametrize(
    "query",
    ["?" + "&".join(f"k{i}=v" for i in range(40)), "?since=1&since=2"],
    ids=["too_many_fields", "since_twice"],
)
async def test_bad_events_query_is_bad_field(
    bus_server: RedisServer, models: dict[str, Path], query: str
) -> None:
    """A /v1/events URL whose query cannot be read gets bad_field (1007), not an internal error."""
    async with (
        replica(models, bus_server.url) as a,
        connect(a.url + proto.EVENTS_PATH + query) as ws,
    ):
        error = await recv_json(ws)
        with contextlib.suppress(ConnectionClosed):
            await ws.recv()
    assert error["code"] == proto.BAD_FIELD, error
    assert ws.close_code == proto.CLOSE_INVALID_DATA


@needs_redis
async def test_drain_delivers_the_last_events(
    bus_server: RedisServer, models: dict[str, Path]
) -> None:
    """Shutting down, local subscribers get the events still on their way through the bus."""
    async with replica(models, bus_server.url) as a:
        ws = await subscriber(a)
        for i in range(50):
            a.services.hub.publish("note", "last", note("last", i))
        await a.server.drain(UNIT_S)
        got: list[dict[str, Any]] = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                got.append(await recv_json(ws))
    assert [e["i"] for e in got] == list(range(50))
    assert ws.close_code == proto.CLOSE_GOING_AWAY


@needs_redis
async def test_generated_names_are_unique_cluster_wide(
    bus_server: RedisServer, models: dict[str, Path]
) -> None:
    """Two replicas making up a name (as for Wyoming clients) both get their stream admitted."""
    async with replica(models, bus_server.url) as a, replica(models, bus_server.url) as b:
        names = [d.services.streams.unused_name("wyoming") for d in (a, b)]
        claims = [d.services.streams.admit(n) for d, n in zip((a, b), names, strict=True)]
        for claim in claims:
            claim.end()
    assert names[0] != names[1]
    assert all(n.startswith("wyoming-") for n in names)


@needs_redis
async def test_unanswered_append_is_delivered_once(
    bus_server: RedisServer, models: dict[str, Path]
) -> None:
    """An append whose answer timed out but which the bus took reaches subscribers once."""
    async with replica(models, bus_server.url, timeout_s=0.2, block_ms=200) as a:
        ws = await subscriber(a)
        a.services.hub.publish("note", "warm", note("warm"))
        assert (await recv_json(ws))["stream"] == "warm"
        stall = asyncio.create_task(bus_server.stall(1.0))
        await asyncio.sleep(0.1)
        a.services.hub.publish("note", "late", note("late"))
        got = [await recv_json(ws, 3 * UNIT_S)]
        got += await quiet_for(ws, 0.5)
        await stall
        await ws.close()
        assert bus_of(a).status()["unconfirmed_events"] == 1
    assert [(e["stream"], "cursor" in e) for e in got] == [("late", True)]


@needs_redis
async def test_stalled_bus_never_holds_the_event_loop_for_leases(
    bus_server: RedisServer, models: dict[str, Path]
) -> None:
    """Renewing and freeing leases while the bus is frozen leaves the event loop running."""
    async with (
        replica(models, bus_server.url, lease_ms=300, timeout_s=0.5) as a,
        connect(a.url + proto.INGEST_PATH) as ws,
    ):
        await ws.send(start_msg("hall"))
        assert json.loads(await ws.recv())["type"] == "started"
        stall = asyncio.create_task(bus_server.stall(1.2))
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        longest, tick = 0.0, loop.time()
        for step in range(40):  # renewals every 100 ms, and the stream ends halfway
            await asyncio.sleep(0.02)
            longest, tick = max(longest, loop.time() - tick), loop.time()
            if step == 20:
                await ws.close()
        await stall
    assert longest < 0.25


@needs_redis
async def test_leases_are_freed_at_shutdown(
    bus_server: RedisServer, models: dict[str, Path]
) -> None:
    """A replica shutting down with a live stream frees its name on the bus."""
    async with replica(models, bus_server.url) as a:
        ws = await connect(a.url + proto.INGEST_PATH)
        await ws.send(start_msg("porch"))
        assert json.loads(await ws.recv())["type"] == "started"
    await ws.close()
    client = aredis.Redis.from_url(bus_server.url)
    try:
        assert not await client.exists("streamer:events:lease:porch")
    finally:
        await client.aclose()


# ---------------------------------------------------------------- retention by age


async def bus_entries(url: str) -> list[wire.Entry]:
    """Every entry of the bus stream, oldest first, read straight from the server."""
    client = aredis.Redis.from_url(url)
    try:
        found = wire.entries(await client.xrange("streamer:events"))
    finally:
        await client.aclose()
    return [e for e in (wire.parse_entry(*f) for f in found) if e is not None]


async def bus_time_passes(url: str, when: float) -> None:
    """Wait until the bus server's own clock reads ``when`` or later."""
    client = aredis.Redis.from_url(url)
    try:
        async with asyncio.timeout(2 * UNIT_S):
            while True:
                seconds, micros = await client.time()
                if seconds + micros / 1e6 >= when:
                    return
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


@needs_redis
@pytest.mark.parametrize("retention_s", [1.0, 0.0], ids=["one_second", "off"])
async def test_retention_trims_by_age(
    bus_server: RedisServer, models: dict[str, Path], retention_s: float
) -> None:
    """Events older than bus.retention_s leave the bus with the next append; 0 keeps them."""
    node = 10  # entries per stream node: "MINID ~" trims whole nodes
    client = aredis.Redis.from_url(bus_server.url)
    await client.config_set("stream-node-max-entries", node)
    await client.aclose()
    async with replica(models, bus_server.url, retention_s=retention_s) as a:
        for i in range(250):
            a.services.hub.publish("note", "old", note("old", i))
        assert await bus_of(a).caught_up(UNIT_S)
        old = await bus_entries(bus_server.url)
        await bus_time_passes(bus_server.url, old[-1].time + 1.05)
        for i in range(30):
            a.services.hub.publish("note", "young", note("young", i))
        assert await bus_of(a).caught_up(UNIT_S)
        kept = await bus_entries(bus_server.url)
        replay = await subscriber(a, "?since=0")
        replayed = await read_until(replay, lambda got: len(got) == len(kept))
        await replay.close()
    assert [e.cursor for e in old] == list(range(1, 251))
    young = [json.loads(e.event)["i"] for e in kept if e.stream == "young"]
    assert young == list(range(30))  # none younger than the retention is trimmed
    stale = [e for e in kept if e.stream == "old"]
    if retention_s:
        assert len(stale) <= node  # the rest of one node at most
        assert kept[0].cursor == 251 - len(stale)
    else:
        assert len(stale) == 250
    assert [e["cursor"] for e in replayed] == [e.cursor for e in kept]  # since=0: what is kept


# ---------------------------------------------------------------- replicas as processes


class Collector:
    """Reads one WebSocket in the background into :attr:`events` until it closes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                self.events.append(json.loads(message))

    async def until(self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float) -> None:
        """Poll until ``done(events)`` holds (the reading goes on)."""
        async with asyncio.timeout(timeout_s):
            while not done(self.events):  # noqa: ASYNC110 - the reader task appends
                await asyncio.sleep(0.02)

    async def close(self) -> list[dict[str, Any]]:
        await self.ws.close()
        await self.task
        return self.events


def ended(name: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: any(e["type"] == "ended" and e["stream"] == name for e in events)


async def stream_live(url: str, name: str, samples: np.ndarray) -> list[dict[str, Any]]:
    """Stream ``samples`` as ``name`` in real time; the events its client got until it closed."""
    ws = await connect(url + proto.INGEST_PATH)
    own = Collector(ws)
    with contextlib.suppress(ConnectionClosed):  # the replica may die under it
        await ws.send(start_msg(name))
        await send_audio(ws, samples, pace_s=0.1)
        await ws.send(json.dumps({"type": "end"}))
    async with asyncio.timeout(3 * UNIT_S):
        await own.task
    return own.events


def without_cursor(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "cursor"}


@needs_redis
async def test_replica_killed_mid_stream(bus_server: RedisServer, models: dict[str, Path]) -> None:
    """SIGKILL of replica B mid-stream: A and C go on, B's appended results stay on the bus."""
    env = {"STREAMER_BUS": bus_server.url, "STREAMER_BUS_RECONNECT_MAX_S": "0.5"}
    procs = [DaemonProcess(["--model", f"ctc={models['ctc']}"], env=env) for _ in range(3)]
    try:
        a, b, c = await asyncio.gather(*(p.wait_ready(6 * UNIT_S) for p in procs))
        on_a, on_c, away = [Collector(await subscriber_at(url)) for url in (a, c, a)]
        to_b = asyncio.create_task(stream_live(b, "b", speech(seconds=14)))
        to_c = asyncio.create_task(stream_live(c, "c", speech(seconds=12)))
        await on_a.until(lambda events: bool(utterances(events, "b")), 3 * UNIT_S)
        procs[1].process.kill()  # SIGKILL: no drain, no goodbye to the bus
        await away.until(lambda events: bool(utterances(events, "b")), UNIT_S)
        left = await away.close()  # a subscriber that goes away with B
        own_b, own_c = await asyncio.gather(to_b, to_c)
        await on_a.until(ended("c"), 3 * UNIT_S)
        await on_c.until(ended("c"), 3 * UNIT_S)
        back = Collector(await subscriber_at(c, f"?since={left[-1]['cursor']}"))
        await back.until(ended("c"), 3 * UNIT_S)
        seen_a, seen_c, resumed = [await s.close() for s in (on_a, on_c, back)]
        journal = io.StringIO()
        cfg = config(bus={"url": bus_server.url})
        await asyncio.to_thread(
            print_journal, None, since="0", stream=None, out=journal, bus=cfg.bus
        )
    finally:
        for proc in procs:
            proc.stop()
    on_bus = [json.loads(line) for line in journal.getvalue().splitlines()]
    # every replica's subscribers see the bus in one order, each event once, no hole
    assert [e["cursor"] for e in seen_a] == [r["seq"] for r in on_bus]
    assert [e["cursor"] for e in seen_a] == list(range(1, len(on_bus) + 1))
    assert seen_c == seen_a
    # C's stream went on, whole, on A and on C
    assert [without_cursor(u) for u in utterances(seen_a, "c")] == utterances(own_c, "c")
    assert [u["seq"] for u in utterances(own_c)] == list(range(len(utterances(own_c))))
    assert ended("c")(own_c)
    # B died mid-stream; what it appended is on the bus, in the order its client got it
    assert not ended("b")(own_b)
    b_on_bus = [r["event"] for r in on_bus if r["event"]["stream"] == "b"]
    assert utterances(b_on_bus)
    assert b_on_bus == [without_cursor(e) for e in seen_a if e["stream"] == "b"]
    assert utterances(b_on_bus) == utterances(own_b)[: len(utterances(b_on_bus))]
    assert len(utterances(own_b)) - len(utterances(b_on_bus)) <= 1  # one in flight at most
    # a subscriber back with since= gets exactly what it missed
    assert left + resumed == seen_a
    assert left
    assert resumed

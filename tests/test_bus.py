"""Replicas on one real event bus (redis-server on 127.0.0.1), and the bus's pure parts.

Each replica is a whole daemon (StreamerServer, real onnxruntime on a tiny bundle) on
127.0.0.1 port 0, joined to the bus as ``streamer serve --bus`` joins it.
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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_server import UNIT_S, Daemon, config, http_get, send_audio, speech, start_msg
from onnx_graphs import write_bundle
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer import protocol as proto
from streamer.app import build_services, server_info
from streamer.errors import ConfigError
from streamer.serve import bus_wire as wire
from streamer.serve.cluster import join_bus
from streamer.serve.journal import print_journal
from streamer.serve.websocket import StreamerServer

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
    assert wire.append_args(10, [("a", "s", "{}")], "r") == ["10", "a", "s", "r", "{}"]


def test_bus_url_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"bus\.url"):
        config(bus={"url": "http://127.0.0.1:6379"})


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
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            subprocess.run(["sleep", "0.02"], check=True)
        raise RuntimeError("redis-server did not start")

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
    ws = await connect(d.url + proto.EVENTS_PATH + query)
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
        events = await ingest(b, "kitchen", speech(seconds=2))
        assert events[0]["type"] == "started"


@needs_redis
async def test_lost_lease_ends_the_stream(bus_server: RedisServer, models: dict[str, Path]) -> None:
    """A replica whose lease another took ends that stream with stream_in_use."""
    async with replica(models, bus_server.url, lease_ms=300) as a:
        async with connect(a.url + proto.INGEST_PATH) as ws:
            await ws.send(start_msg("hall"))
            assert json.loads(await ws.recv())["type"] == "started"
            import redis.asyncio as aredis

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

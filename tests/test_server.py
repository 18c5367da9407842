"""The daemon over real WebSockets on 127.0.0.1 port 0, with real onnxruntime on tiny bundles."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_server import (
    UNIT_S,
    Daemon,
    collect,
    config,
    running,
    send_audio,
    speech as live_speech,
    start_msg,
)
from onnx_graphs import write_bundle
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer import protocol as proto
from streamer.app import build_services, server_info
from streamer.config import Config, ServerConfig
from streamer.serve.client_errors import ClientErrorLog
from streamer.serve.websocket import StreamerServer


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "ctc": write_bundle(root / "ctc"),
        "intent": write_bundle(
            root / "intent",
            task="classify",
            labels=(("lights_on", "lights_off"), ("kitchen", "hall")),
        ),
    }


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Three utterances of real speech (the first 14 s of stream_clean.wav), 16 kHz float32."""
    return live_speech(seconds=14)


@pytest.fixture
async def daemon(models: dict[str, Path], request: pytest.FixtureRequest) -> AsyncIterator[Daemon]:
    async with running(config(server=getattr(request, "param", {})), models) as d:
        yield d


async def read_until_quiet(ws: ClientConnection, quiet_s: float = 0.5) -> list[dict[str, Any]]:
    """Read events until none arrives for ``quiet_s``."""
    events = []
    while True:
        try:
            async with asyncio.timeout(quiet_s):
                message = await ws.recv()
        except TimeoutError:
            return events
        events.append(json.loads(message))


async def test_ingest_stream_gets_transcript_and_intent(daemon: Daemon, speech: np.ndarray) -> None:
    """A real-speech stream yields started, speech_started and utterance events, then ended/1000."""
    async with connect(daemon.url + proto.INGEST_PATH) as ws:
        await ws.send(start_msg())
        started = json.loads(await ws.recv())
        assert started["type"] == "started"
        assert {m["name"] for m in started["models"]} == {"ctc", "intent"}
        await send_audio(ws, speech)
        await ws.send(json.dumps({"type": "end"}))
        events = await collect(ws)
        assert ws.close_code == 1000
    utterances = [e for e in events if e["type"] == "utterance"]
    assert events[-1] == {"type": "ended", "stream": "s1", "n_utterances": len(utterances)}
    assert 2 <= len(utterances) <= 4, [(u["start_ms"], u["end_ms"]) for u in utterances]
    for i, u in enumerate(utterances):
        event = proto.decode_event(json.dumps(u))
        assert isinstance(event, proto.Utterance)
        assert event.seq == i
        assert event.transcript is not None
        assert event.intent is not None
        assert event.intent.name in ("lights_on", "lights_off")
        assert event.labels is not None
        assert event.labels[0].name in ("kitchen", "hall")
        assert 0 <= event.start_ms < event.end_ms <= 14000
        assert event.latency_ms.encode > 0
    # truth: speech at 1.0-4.0 s and 7.0-10.12 s, then 11.42-13.37 s
    assert abs(utterances[0]["start_ms"] - 1000) < 200
    assert abs(utterances[0]["end_ms"] - 4000) < 300


async def test_two_streams_three_subscribers(daemon: Daemon, speech: np.ndarray) -> None:
    """Subscribers receive exactly the streams and event types their filters ask for."""
    filters = [(["a"], ["utterance"]), (["b"], ["*"]), (["*"], ["utterance", "ended"])]
    subs = []
    for streams, events in filters:
        ws = await connect(daemon.url + proto.EVENTS_PATH)
        await ws.send(json.dumps({"type": "subscribe", "streams": streams, "events": events}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        subs.append(ws)

    async def ingest(name: str, samples: np.ndarray) -> list[dict[str, Any]]:
        async with connect(daemon.url + proto.INGEST_PATH) as ws:
            await ws.send(start_msg(name))
            await ws.recv()
            await send_audio(ws, samples)
            await ws.send(json.dumps({"type": "end"}))
            return await collect(ws)

    got_a, got_b = await asyncio.gather(ingest("a", speech), ingest("b", speech[: 6 * 16000]))
    n_a = sum(e["type"] == "utterance" for e in got_a)
    n_b = sum(e["type"] == "utterance" for e in got_b)
    assert n_a >= 2
    assert n_b == 1
    received: list[list[dict[str, Any]]] = []
    for ws in subs:
        received.append(await read_until_quiet(ws))
        await ws.close()
    only_a, only_b, everything = received
    assert [e["stream"] for e in only_a] == ["a"] * n_a
    assert {e["type"] for e in only_a} == {"utterance"}
    assert {e["stream"] for e in only_b} == {"b"}
    assert {e["type"] for e in only_b} >= {"speech_started", "utterance", "ended"}
    assert sorted(e["type"] for e in everything) == sorted(
        ["utterance"] * (n_a + n_b) + ["ended"] * 2
    )


@pytest.mark.parametrize("daemon", [{"subscriber_queue": 1}], indirect=True)
async def test_slow_subscriber_loses_oldest_and_is_told(daemon: Daemon, speech: np.ndarray) -> None:
    """A subscriber that does not read loses events (counted), and ingest is not slowed."""
    slow = await connect(daemon.url + proto.EVENTS_PATH, max_queue=1)
    await slow.send(json.dumps({"type": "subscribe", "streams": ["*"]}))
    assert json.loads(await slow.recv())["type"] == "subscribed"
    async with connect(daemon.url + proto.INGEST_PATH) as ws:
        await ws.send(start_msg())
        await ws.recv()
        await send_audio(ws, speech)
        await ws.send(json.dumps({"type": "end"}))
        own = await collect(ws)
    # the `started` answer was read before `own` was collected; subscribers get it too
    published = 1 + sum(e["type"] in ("speech_started", "utterance", "ended") for e in own)
    events = await read_until_quiet(slow)
    lost = sum(e["count"] for e in events if e["type"] == "dropped")
    seen = sum(e["type"] != "dropped" for e in events)
    await slow.close()
    assert seen + lost == published
    assert own[-1]["type"] == "ended"


@pytest.mark.parametrize(
    ("frames", "code", "close"),
    [
        (["not json"], "bad_json", 1007),
        (['{"type": "dance"}'], "unknown_type", 1008),
        ([b"\x00\x00"], "audio_before_start", 1008),
        ([start_msg(), b"\x00\x00\x00"], "bad_audio_frame", 1007),
        ([start_msg(sample_rate=1000)], "unsupported_format", 1008),
        ([start_msg(encoding="mp3")], "unsupported_format", 1008),
        ([start_msg(models=["/etc/passwd"])], "bad_field", 1007),
        ([start_msg(models=["nope"])], "unknown_model", 1008),
        ([start_msg(endpointing={"min_silence_ms": -5})], "bad_field", 1007),
        ([start_msg(), start_msg()], "unexpected_message", 1008),
    ],
)
async def test_bad_input_closes_only_that_connection(
    daemon: Daemon, speech: np.ndarray, frames: list[str | bytes], code: str, close: int
) -> None:
    """Each bad input gets an error event and its documented close code; others are unaffected."""
    async with connect(daemon.url + proto.INGEST_PATH) as good:
        await good.send(start_msg("good"))
        await good.recv()
        async with connect(daemon.url + proto.INGEST_PATH) as bad:
            for frame in frames:
                await bad.send(frame)
            events = await collect(bad)
            assert bad.close_code == close
        errors = [e for e in events if e["type"] == "error"]
        assert errors
        assert errors[-1]["code"] == code
        await send_audio(good, speech[: 6 * 16000])
        await good.send(json.dumps({"type": "end"}))
        got = await collect(good)
    assert [e["type"] for e in got].count("utterance") == 1
    assert got[-1]["type"] == "ended"


@pytest.mark.parametrize("daemon", [{"max_message_bytes": 4096}], indirect=True)
async def test_oversize_frame_closes_with_1009(daemon: Daemon) -> None:
    """A frame above max_message_bytes closes the connection with 1009."""
    async with connect(daemon.url + proto.INGEST_PATH) as ws:
        await ws.send(start_msg())
        await ws.recv()
        await ws.send(b"\x00" * 8192)
        await collect(ws)
        assert ws.close_code == 1009


async def test_shutdown_delivers_in_flight_utterance(daemon: Daemon, speech: np.ndarray) -> None:
    """Draining the server finishes the utterance in progress, sends it, and closes with 1001."""
    sub = await connect(daemon.url + proto.EVENTS_PATH)
    await sub.send(json.dumps({"type": "subscribe", "streams": ["*"], "events": ["utterance"]}))
    await sub.recv()
    ws = await connect(daemon.url + proto.INGEST_PATH)
    await ws.send(start_msg())
    await ws.recv()
    await send_audio(ws, speech[: int(3.0 * 16000)])  # stops mid-utterance (speech 1.0-4.0 s)
    await asyncio.sleep(0.2)
    await daemon.server.drain(UNIT_S)
    own = await collect(ws)
    theirs = await collect(sub)
    assert [e["type"] for e in own if e["type"] == "utterance"] == ["utterance"]
    assert [e["type"] for e in theirs] == ["utterance"]
    assert ws.close_code == 1001
    assert sub.close_code == 1001


async def test_health_and_readiness(daemon: Daemon) -> None:
    """/healthz answers ok; /readyz lists the models, their provider and parity."""
    base = daemon.url.replace("ws://", "http://")

    def get(path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(base + path, timeout=UNIT_S) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert await asyncio.to_thread(get, "/healthz") == (200, {"status": "ok"})
    status, body = await asyncio.to_thread(get, "/readyz")
    assert status == 200
    assert body["ready"] is True
    assert {m["provider"] for m in body["models"]} == {"CPUExecutionProvider"}
    assert (await asyncio.to_thread(get, "/nope"))[0] == 404


@pytest.mark.export
async def test_really_exported_bundles_end_to_end(
    tiny_ctc_bundle: Path, tiny_intent_bundle: Path, speech: np.ndarray
) -> None:
    """Bundles made by bin/export_onnx (SEW-D CTC + SEGUE [4,3]) serve a real-speech stream."""
    from conftest import INTENT_LABELS

    config = Config(server=ServerConfig(host="127.0.0.1", port=0))
    services = build_services(config, {"ctc": tiny_ctc_bundle, "intent": tiny_intent_bundle})
    server = StreamerServer(services, info=server_info(services))
    await server.start()
    try:
        async with connect(f"ws://127.0.0.1:{server.ports[0]}{proto.INGEST_PATH}") as ws:
            await ws.send(start_msg(want=["embedding"]))
            started = json.loads(await ws.recv())
            assert {(m["name"], m["arch"]) for m in started["models"]} == {
                ("ctc", "sew-d"),
                ("intent", "segue"),
            }
            await send_audio(ws, speech)
            await ws.send(json.dumps({"type": "end"}))
            events = await collect(ws)
    finally:
        await server.drain(UNIT_S)
        services.runner.close()
    utterances = [proto.decode_event(json.dumps(e)) for e in events if e["type"] == "utterance"]
    assert len(utterances) == 3
    for u in utterances:
        assert isinstance(u, proto.Utterance)
        assert u.transcript is not None
        # word times lie within the audio the model heard: the speech plus pre/post-roll
        roll_ms = 1000
        for w in u.transcript.words:
            assert u.start_ms - roll_ms <= w.start_ms <= w.end_ms <= u.end_ms + roll_ms
        assert u.intent is not None
        assert u.intent.name in INTENT_LABELS[0]
        assert u.labels is not None
        assert u.labels[0].name in INTENT_LABELS[1]
        assert u.embedding is not None
        assert len(u.embedding) == services.runner.encoders["intent"].manifest.embedding_dim


async def test_a_hostile_client_costs_at_most_two_log_lines(
    models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """100 malformed frames on one connection, then on 100 connections: two INFO lines at most.

    Every one is still answered with an error event and counted; the log gets the first one
    and, at shutdown, how many it held back.
    """
    caplog.set_level(logging.DEBUG, logger="streamer")
    async with running(config(), models) as d:
        first = len(caplog.records)
        async with connect(d.url + proto.INGEST_PATH) as ws:
            with contextlib.suppress(ConnectionClosed):
                for _ in range(100):  # the server closes after the first: the rest are discarded
                    await ws.send("{not json")
            events = await collect(ws)
        assert [e["type"] for e in events] == ["error"]
        for path in [proto.INGEST_PATH] * 50 + [proto.EVENTS_PATH] * 50:
            async with connect(d.url + path) as ws:
                await ws.send("[1, 2]")
                assert [e["type"] for e in await collect(ws)] == ["error"]
            assert ws.close_code in (proto.CLOSE_INVALID_DATA, proto.CLOSE_POLICY)
        during = [r.getMessage() for r in caplog.records[first:]]
        assert d.services.client_errors.n_reported == 101
    assert len(during) == 1, during
    assert during[0].startswith("connection ")
    assert ": bad_json: " in during[0]
    summary = [r.getMessage() for r in caplog.records if r.name == "streamer.serve.client_errors"]
    assert summary == ["100 more client error(s) not logged (see streamer_errors)"]


def test_client_error_log_writes_one_line_per_interval() -> None:
    """Errors within interval_s of a logged one are counted, and the next line says how many."""
    now = [0.0]
    errors = ClientErrorLog(interval_s=10.0, clock=lambda: now[0])
    logger = logging.getLogger("test.client_errors")
    with _records(logger) as records:
        for t in (0.0, 1.0, 2.0, 9.9, 10.0, 10.5, 30.0):
            now[0] = t
            errors.report(logger, "peer", "bad_message", "nope")
        errors.close()
    assert [r.getMessage() for r in records] == [
        "peer: bad_message: nope",
        "peer: bad_message: nope (3 other client error(s) in the last 10 s not logged)",
        "peer: bad_message: nope (1 other client error(s) in the last 10 s not logged)",
    ]
    assert (errors.n_reported, errors.n_held_back) == (7, 0)
    with pytest.raises(ValueError, match="interval_s"):
        ClientErrorLog(interval_s=-1)


@contextlib.contextmanager
def _records(logger: logging.Logger) -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)

"""Faults and overload against a live daemon: the daemon keeps serving everyone else."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from live_server import (
    UNIT_S,
    collect,
    config,
    http_get,
    read_until,
    running,
    send_audio,
    speech,
    start_msg,
    subscribe_msg,
)
from onnx import helper, numpy_helper
from onnx_graphs import write_bundle
from websockets.asyncio.client import ClientConnection, connect

from streamer import overload, protocol as proto
from streamer.app import build_services
from streamer.audio import AudioFormat
from streamer.config import Config, EngineConfig
from streamer.errors import ConfigError, ModelError, OverloadedError, ProtocolError
from streamer.pubsub import Hub
from streamer.serve.journal import Journal, read_journal
from streamer.serve.subscription import Subscription
from streamer.streams.pipeline import StreamPipeline, stream_segmenter_config

#: Utterances longer than this make the fragile model fail inside onnxruntime.
FRAGILE_LIMIT_S = 2.5


def fragile_bundle(out: Path, *, limit_samples: int) -> Path:
    """A CTC bundle whose graph starts with a Reshape that fails for inputs above the limit."""
    write_bundle(out)
    model = onnx.load(str(out / "model.onnx"))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["checked" if name == "input_values" else name for name in node.input]
    guard = [
        helper.make_node("Shape", ["input_values"], ["fr_shape"]),
        helper.make_node("Gather", ["fr_shape", "fr_axis0"], ["fr_batch"], axis=0),
        helper.make_node("Gather", ["fr_shape", "fr_axis1"], ["fr_n"], axis=0),
        helper.make_node("Min", ["fr_n", "fr_limit"], ["fr_m"]),
        helper.make_node("Concat", ["fr_batch", "fr_m"], ["fr_target"], axis=0),
        # [batch, n] -> [batch, min(n, limit)]: impossible, so a run-time error, when n > limit
        helper.make_node("Reshape", ["input_values", "fr_target"], ["checked"]),
    ]
    nodes = [*guard, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), "fr_axis0"),
            numpy_helper.from_array(np.array([1], np.int64), "fr_axis1"),
            numpy_helper.from_array(np.array([limit_samples], np.int64), "fr_limit"),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "ctc": write_bundle(root / "ctc"),
        "fragile": fragile_bundle(root / "fragile", limit_samples=int(FRAGILE_LIMIT_S * 16000)),
    }


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Any:
    """Fail the test if anything logged at ERROR or above (an unhandled exception)."""
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    bad = [r for r in records if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def by_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


async def subscriber(url: str, streams: list[str], events: list[str]) -> ClientConnection:
    ws = await connect(url + proto.EVENTS_PATH)
    await ws.send(subscribe_msg(streams, events))
    assert json.loads(await ws.recv())["type"] == "subscribed"
    return ws


async def full_stream(
    url: str, name: str, audio: np.ndarray, models: tuple[str, ...] = ("ctc",)
) -> list[dict[str, Any]]:
    async with connect(url + proto.INGEST_PATH) as ws:
        await ws.send(start_msg(name, models=list(models)))
        await send_audio(ws, audio)
        await ws.send(json.dumps({"type": "end"}))
        return await collect(ws)


async def wait_for(condition: Any, timeout_s: float = UNIT_S) -> float:
    """Poll ``condition()`` until true; return the seconds it took."""
    began = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (state owned by the server; polling is simplest)
            await asyncio.sleep(0.02)
    return time.monotonic() - began


@pytest.mark.usefixtures("no_errors_logged")
async def test_client_killed_mid_utterance(models: dict[str, Path]) -> None:
    """A client whose socket dies without a close frame: subscribers still get its utterance."""
    async with running(config(), models) as d:
        sub = await subscriber(d.url, ["victim"], ["speech_started", "utterance"])
        other = asyncio.create_task(full_stream(d.url, "other", speech(seconds=14)))
        victim = await connect(d.url + proto.INGEST_PATH)
        await victim.send(start_msg("victim", models=["ctc"]))
        await send_audio(victim, speech(seconds=2.5))  # speech runs 1.0-4.0 s
        started = await read_until(sub, lambda ev: bool(ev))
        assert started[0]["type"] == "speech_started"
        victim.transport.abort()  # no close frame, no FIN handshake
        rest = await read_until(sub, lambda ev: bool(by_type(ev, "utterance")))
        utterance = by_type(rest, "utterance")[0]
        assert utterance["utterance_id"] == started[0]["utterance_id"]
        assert 2400 <= utterance["end_ms"] <= 2600  # cut where the audio stopped
        got = await other
        assert len(by_type(got, "utterance")) == got[-1]["n_utterances"] >= 2
        await wait_for(lambda: "victim" not in d.services.streams)
        await sub.close()


@pytest.mark.usefixtures("no_errors_logged")
async def test_silent_dead_peer_is_reaped_by_keepalive(models: dict[str, Path]) -> None:
    """A peer that stops answering pings is dropped within ping + pong + close timeouts."""
    keepalive = {"ping_interval_s": 0.2, "ping_timeout_s": 0.2, "close_timeout_s": 0.2}
    async with running(config(server=keepalive), models) as d:
        sub = await subscriber(d.url, ["mute"], ["speech_started", "utterance"])
        mute = await connect(d.url + proto.INGEST_PATH, ping_interval=None)
        await mute.send(start_msg("mute", models=["ctc"]))
        await send_audio(mute, speech(seconds=2.5))
        await read_until(sub, lambda ev: bool(ev))
        mute.transport.pause_reading()  # alive at TCP level, deaf to pings
        reaped_s = await wait_for(lambda: "mute" not in d.services.streams, timeout_s=5)
        assert reaped_s < 2.0
        events = await read_until(sub, lambda ev: bool(by_type(ev, "utterance")))
        assert by_type(events, "utterance")[0]["stream"] == "mute"
        mute.transport.abort()
        await sub.close()


@pytest.mark.parametrize("last", [b"\x00", '{"type":"end"}'])
async def test_client_that_keeps_sending_after_the_end_is_closed_at_once(
    models: dict[str, Path], last: str | bytes
) -> None:
    """Frames sent after an error or end do not hold the connection open until close_timeout."""
    async with running(config(server={"close_timeout_s": 5.0}), models) as d:
        ws = await connect(d.url + proto.INGEST_PATH)
        await ws.send(start_msg(models=["ctc"]))
        await ws.send(last)
        for _ in range(100):  # enough to fill the server's receive queue
            await ws.send(b"\x00\x00" * 100)
        began = time.monotonic()
        await collect(ws)
        assert time.monotonic() - began < 1.0
        assert ws.close_code in (1000, 1007)


@pytest.mark.usefixtures("no_errors_logged")
async def test_garbage_after_an_http_request_is_dropped_quietly(models: dict[str, Path]) -> None:
    """Bytes that are no frame right after a request: the connection is dropped, nothing logged."""
    async with running(config(security={"token": "tok"}), models) as d:
        for path in ("/healthz", "/readyz", "/nope", proto.INGEST_PATH):
            reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\nXYZ".encode())
            async with asyncio.timeout(UNIT_S):
                assert await reader.read() == b""
            writer.close()
        assert (await http_get(d.port, "/healthz"))[0] == 200


@pytest.mark.usefixtures("no_errors_logged")
async def test_subscriber_that_never_reads(models: dict[str, Path]) -> None:
    """A subscriber that stops reading slows nobody: streams and other subscribers get it all."""
    async with running(config(server={"subscriber_queue": 4}), models) as d:
        stuck = await subscriber(d.url, ["*"], ["*"])
        stuck.transport.pause_reading()
        good = await subscriber(d.url, ["*"], ["utterance"])
        a, b = await asyncio.gather(
            full_stream(d.url, "a", speech(seconds=14)),
            full_stream(d.url, "b", speech(seconds=11)),
        )
        n = len(by_type(a, "utterance")) + len(by_type(b, "utterance"))
        assert n >= 4
        received = await read_until(good, lambda ev: len(ev) == n)
        assert {e["stream"] for e in received} == {"a", "b"}
        subs = [h for h in d.server._handlers if isinstance(h, Subscription)]
        assert all(h.current is not None and len(h.current) <= 4 for h in subs)
        stuck.transport.resume_reading()
        await stuck.close()
        await good.close()


@pytest.mark.usefixtures("no_errors_logged")
async def test_bundle_that_raises_inside_onnxruntime(models: dict[str, Path]) -> None:
    """Runs that fail inside ORT cost their utterance an error event; nothing else changes."""
    gap = np.zeros(16000, np.float32)
    clips = ["cmd_cards_001.wav", "sent_ljspeech_LJ050-0131.wav", "cmd_cards_002.wav"]
    audio = np.concatenate([part for name in clips for part in (speech(name), gap)])
    async with running(config(), models) as d:
        fragile, healthy = await asyncio.gather(
            full_stream(d.url, "fragile", audio, models=("fragile",)),
            full_stream(d.url, "healthy", audio),
        )
    errors, results = by_type(fragile, "error"), by_type(fragile, "utterance")
    assert errors
    assert results
    assert {e["code"] for e in errors} == {"model_failed"}
    assert all("inference failed" in e["message"] for e in errors)
    starts = {e["utterance_id"] for e in by_type(fragile, "speech_started")}
    assert {e["utterance_id"] for e in errors + results} == starts
    assert all(r["end_ms"] - r["start_ms"] < FRAGILE_LIMIT_S * 1000 for r in results)
    assert fragile[-1] == {"type": "ended", "stream": "fragile", "n_utterances": len(starts)}
    assert len(by_type(healthy, "utterance")) == len(starts)
    assert not by_type(healthy, "error")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: (b / "manifest.json").unlink(), "manifest"),
        (lambda b: (b / "manifest.json").write_text("{not json"), "manifest"),
        (lambda b: (b / "model.onnx").unlink(), "is missing"),
        (
            lambda b: (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:200]),
            "cannot load",
        ),
        (
            lambda b: (b / "manifest.json").write_text(
                (b / "manifest.json").read_text().replace('"logits"', '"scores"')
            ),
            "lacks the manifest's outputs",
        ),
    ],
)
def test_corrupt_or_missing_bundle_refuses_to_start(
    tmp_path: Path, damage: Any, message: str
) -> None:
    """A damaged bundle stops the daemon at start with a ModelError naming the problem."""
    good = write_bundle(tmp_path / "good")
    bad = write_bundle(tmp_path / "bad")
    damage(bad)
    with pytest.raises(ModelError, match=message):
        build_services(Config(), {"good": good, "bad": bad})


async def test_engine_behind_refuses_new_streams_then_recovers(models: dict[str, Path]) -> None:
    """Past refuse_streams_at a start gets busy/1013 and /readyz 503; open streams go on."""
    engine = {"max_pending_utterances": 8, "shed_unwatched_at": 0.25, "refuse_streams_at": 0.375}
    async with running(config(engine=engine), models) as d:
        runner = d.services.runner
        early = await connect(d.url + proto.INGEST_PATH)
        await early.send(start_msg("early", models=["ctc"]))
        assert json.loads(await early.recv())["type"] == "started"
        for _ in range(3):
            runner.reserve()  # the engine now holds 3 of 8: behind enough
        async with connect(d.url + proto.INGEST_PATH) as late:
            await late.send(start_msg("late"))
            events = await collect(late)
            assert late.close_code == overload.CLOSE_TRY_AGAIN_LATER
        assert events[-1]["code"] == overload.BUSY
        assert (await http_get(d.port, "/readyz"))[0] == 503
        await send_audio(early, speech(seconds=11))
        await early.send(json.dumps({"type": "end"}))
        got = await collect(early)
        assert len(by_type(got, "utterance")) == got[-1]["n_utterances"] >= 2
        for _ in range(3):
            runner.release()
        assert (await http_get(d.port, "/readyz"))[0] == 200
        async with connect(d.url + proto.INGEST_PATH) as again:
            await again.send(start_msg("late", models=["ctc"]))
            assert json.loads(await again.recv())["type"] == "started"


async def test_unwatched_utterances_are_shed_first(models: dict[str, Path], tmp_path: Path) -> None:
    """Past shed_unwatched_at, a stream nobody receives is not run (the journal shows why)."""
    engine = {"max_pending_utterances": 4, "shed_unwatched_at": 0.5, "refuse_streams_at": 1.0}
    cfg = config(engine=engine, journal={"path": str(tmp_path / "j.jsonl")})
    async with running(cfg, models) as d:
        services = d.services
        services.journal = Journal.open(cfg.journal, services.hub)
        services.runner.reserve()
        services.runner.reserve()  # load 0.5

        async def orphan_stream(name: str) -> StreamPipeline:
            pipe = StreamPipeline(
                services,
                stream=name,
                fmt=AudioFormat(16000, "pcm_f32le", 1),
                models=("ctc",),
                segmenter=stream_segmenter_config(services, ("ctc",), {}),
            )
            pipe.feed_samples(speech(seconds=11))
            await pipe.finish()
            return pipe

        shed = await orphan_stream("nobody")
        sub = services.hub.subscribe(streams=["somebody"], events=["utterance"])
        kept = await orphan_stream("somebody")
        live = await full_stream(d.url, "live", speech(seconds=11))
        services.journal.close()
    assert shed.n_utterances >= 2
    assert shed.n_errors == shed.n_utterances
    assert kept.n_errors == 0
    assert len(sub.drain()[0]) == kept.n_utterances
    assert not by_type(live, "error")
    journal = [r.event for r in read_journal(tmp_path / "j.jsonl")]
    dropped = [e for e in journal if e["type"] == "error" and e["stream"] == "nobody"]
    assert len(dropped) == shed.n_utterances
    assert all(e["code"] == "overloaded" and "nobody receives" in e["message"] for e in dropped)


async def test_results_carry_lag_when_the_engine_falls_behind(models: dict[str, Path]) -> None:
    """An utterance that waited for a busy engine carries lag_ms; one that did not, none."""
    async with running(config(engine={"workers": 1, "lag_report_ms": 200.0}), models) as d:
        gate = threading.Event()
        blocker = asyncio.get_running_loop().run_in_executor(d.services.runner._pool, gate.wait, 10)
        async with connect(d.url + proto.INGEST_PATH) as ws:
            await ws.send(start_msg("slow", models=["ctc"]))
            await send_audio(ws, speech(seconds=5))
            await ws.send(json.dumps({"type": "flush"}))
            # the engine stays busy 1 s from here; the utterance must wait at least 400 ms of
            # it even on a loaded machine, where the server queues it late (0.5 s fell short)
            await asyncio.sleep(1.0)
            gate.set()
            await send_audio(ws, speech(seconds=14)[5 * 16000 :])
            await ws.send(json.dumps({"type": "end"}))
            events = by_type(await collect(ws), "utterance")
        assert await blocker
    assert len(events) >= 2
    assert events[0]["lag_ms"] >= 400
    assert events[0]["latency_ms"]["queued"] >= 400
    assert all("lag_ms" not in e for e in events[1:])


def test_with_lag_and_endpointing_ceiling() -> None:
    """lag_ms is the wait beyond an utterance's compute; clients cannot raise max_utterance_s."""
    event = proto.Utterance(
        stream="s",
        utterance_id="u",
        seq=0,
        start_ms=0,
        end_ms=1,
        models=(),
        latency_ms=proto.Latency(end_of_speech_to_emit=900, queued=700, encode=150, decode=50),
    )
    assert overload.with_lag(event, since_decision_ms=900, report_ms=700).lag_ms == 700
    assert overload.with_lag(event, since_decision_ms=900, report_ms=701).lag_ms is None
    base = Config().segmenter
    overload.check_endpointing(base, {"max_utterance_s": base.max_utterance_s})
    overload.check_endpointing(base, {"min_silence_ms": 500})
    with pytest.raises(ProtocolError) as info:
        overload.check_endpointing(base, {"max_utterance_s": base.max_utterance_s + 1})
    assert (info.value.code, info.value.close_code) == ("bad_field", 1007)
    with pytest.raises(ConfigError):
        EngineConfig(shed_unwatched_at=0.9, refuse_streams_at=0.5)
    with pytest.raises(ConfigError):
        EngineConfig(refuse_streams_at=1.5)


def test_overload_rules_are_plain_functions() -> None:
    """The degradation order over plain numbers: refuse streams, then shed the unwatched."""
    assert overload.load_fraction(32, 64) == 0.5
    assert overload.accepting_streams(0.79, refuse_at=0.8)
    assert not overload.accepting_streams(0.8, refuse_at=0.8)
    overload.check_new_stream(0.79, refuse_at=0.8)
    with pytest.raises(ProtocolError) as info:
        overload.check_new_stream(0.8, refuse_at=0.8)
    assert (info.value.code, info.value.close_code) == (overload.BUSY, 1013)
    overload.check_utterance(0.4, shed_at=0.5, stream="s", live=False, watched=False)
    overload.check_utterance(0.5, shed_at=0.5, stream="s", live=True, watched=False)
    overload.check_utterance(0.5, shed_at=0.5, stream="s", live=False, watched=True)
    with pytest.raises(OverloadedError, match="nobody receives it"):
        overload.check_utterance(0.5, shed_at=0.5, stream="s", live=False, watched=False)


def test_watched_ignores_the_excluded_subscriber_and_other_streams() -> None:
    """Only a subscriber (not the journal) whose filter takes the stream's utterances counts."""
    hub: Hub[str] = Hub()
    journal = hub.subscribe()
    assert not overload.watched(hub, "s", exclude=journal)
    assert overload.watched(hub, "s")
    hub.subscribe(streams=["s"], events=["started"])
    hub.subscribe(streams=["other"], events=["utterance"])
    assert not overload.watched(hub, "s", exclude=journal)
    hub.subscribe(streams=["s"], events=["utterance"])
    assert overload.watched(hub, "s", exclude=journal)

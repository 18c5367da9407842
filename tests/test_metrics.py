"""/metrics in Prometheus text format, scraped from a real server after real traffic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from onnx_graphs import write_bundle
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamer import protocol as proto
from streamer.app import build_services, server_info
from streamer.audio import float_to_pcm16
from streamer.config import Config, ServerConfig
from streamer.serve.metrics import METRICS_PATH
from streamer.serve.routes import metrics_route
from streamer.serve.websocket import StreamerServer
from streamer.streams.sources import read_audio_file

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
UNIT_S = 10.0 * float(os.environ.get("STREAMER_TEST_TIMEOUT_FACTOR", "1"))
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("metrics")
    return {
        "ctc": write_bundle(root / "ctc"),
        "intent": write_bundle(root / "intent", task="classify", labels=(("on", "off"),)),
    }


@pytest.fixture
async def server(models: dict[str, Path]) -> AsyncIterator[StreamerServer]:
    config = Config(server=ServerConfig(host="127.0.0.1", port=0, subscriber_queue=1))
    services = build_services(config, models)
    srv = StreamerServer(services, info=server_info(services), routes=metrics_route(services))
    await srv.start()
    yield srv
    await srv.drain(UNIT_S)
    services.runner.close()


async def scrape(srv: StreamerServer) -> Samples:
    url = f"http://127.0.0.1:{srv.ports[0]}{METRICS_PATH}"

    def get() -> tuple[str, str]:
        with urllib.request.urlopen(url, timeout=UNIT_S) as r:
            return r.headers["Content-Type"], r.read().decode()

    content_type, text = await asyncio.to_thread(get)
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def stream(url: str, name: str, samples: np.ndarray) -> list[dict[str, object]]:
    async with connect(url + proto.INGEST_PATH) as ws:
        start = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1}
        await ws.send(json.dumps({**start, "stream": name}))
        await ws.recv()
        data = float_to_pcm16(samples)
        for i in range(0, len(data), 3200):  # 100 ms frames, as a live client sends
            await ws.send(data[i : i + 3200])
        await ws.send(json.dumps({"type": "end"}))
        events = []
        while True:
            try:
                events.append(json.loads(await ws.recv()))
            except ConnectionClosed:
                return events


async def test_metrics_after_real_traffic(server: StreamerServer) -> None:
    """Latency, engine, error, connection, subscriber and model metrics reflect what happened."""
    url = f"ws://127.0.0.1:{server.ports[0]}"
    speech = read_audio_file(AUDIO / "stream_clean.wav").samples[: 14 * 16000]
    slow = await connect(url + proto.EVENTS_PATH, max_queue=1)
    await slow.send(json.dumps({"type": "subscribe", "streams": ["*"]}))
    await slow.recv()
    events = await stream(url, "m1", speech)
    n = sum(e["type"] == "utterance" for e in events)
    async with connect(url + proto.INGEST_PATH) as bad:
        await bad.send("not json")
        await bad.wait_closed()
    live = await scrape(server)
    with contextlib.suppress(TimeoutError):
        while True:  # read what is left, or closing waits for the close frame behind it
            await asyncio.wait_for(slow.recv(), 0.3)
    await slow.close()
    after = await scrape(server)

    assert n >= 2
    assert live[("streamer_end_of_speech_to_final_seconds_count", ())] == n
    for model in ("ctc", "intent"):
        key = (("model", model),)
        assert live[("streamer_encode_seconds_count", key)] == n
        assert live[("streamer_encode_seconds_sum", key)] > 0
        assert live[("streamer_batch_size_sum", key)] == n  # one stream: every run alone
    assert live[("streamer_utterances_total", (("outcome", "ok"),))] == n
    assert live[("streamer_errors_total", (("code", "bad_json"),))] == 1
    assert live[("streamer_connections_accepted_total", (("endpoint", "/v1/stream"),))] == 2
    assert live[("streamer_connections", (("endpoint", "/v1/events"),))] == 1
    assert live[("streamer_connections", (("endpoint", "/v1/stream"),))] == 0
    assert live[("streamer_runner_pending_utterances", ())] == 0
    assert live[("streamer_runner_max_pending_utterances", ())] == 64
    assert live[("streamer_subscribers", ())] == 1
    [(name, dropped)] = [
        (k[1], v) for k, v in live.items() if k[0] == "streamer_subscriber_dropped_events_total"
    ]
    assert dropped >= 1  # queue of 1, never read: it lost events
    assert 0 <= live[("streamer_subscriber_queue_depth", name)] <= 1  # queue_len 1
    info = {k[1]: v for k, v in live.items() if k[0] == "streamer_model_info"}
    assert {dict(labels)["model"] for labels in info} == {"ctc", "intent"}
    assert {dict(labels)["provider"] for labels in info} == {"CPUExecutionProvider"}
    # the subscriber is gone: per-subscriber series vanish, the all-time total keeps its drops
    assert after[("streamer_subscribers", ())] == 0
    assert not [k for k in after if k[0] == "streamer_subscriber_dropped_events_total"]
    assert after[("streamer_dropped_events_total", ())] == dropped
    assert after[("streamer_connections", (("endpoint", "/v1/events"),))] == 0


async def test_backlog_and_lag_per_live_stream(server: StreamerServer) -> None:
    """A live stream has a backlog and lag series; an utterance waiting for the engine shows."""
    services = server.services
    url = f"ws://127.0.0.1:{server.ports[0]}"
    async with connect(url + proto.INGEST_PATH) as ws:
        start = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1}
        await ws.send(json.dumps({**start, "stream": "live"}))
        await ws.recv()
        services.metrics.utterance_pending("live", 99)  # as the pipeline does when it cuts one
        await asyncio.sleep(0.05)
        got = await scrape(server)
    assert got[("streamer_streams", ())] == 1
    assert got[("streamer_stream_backlog_utterances", (("stream", "live"),))] == 0
    assert got[("streamer_stream_lag_seconds", (("stream", "live"),))] >= 0.05


async def test_each_server_has_its_own_registry(
    server: StreamerServer, models: dict[str, Path]
) -> None:
    """Two daemons in one process count separately (no global registry)."""
    other = build_services(Config(), models)
    try:
        other.metrics.error("bad_json")
        mine = await scrape(server)
        assert ("streamer_errors_total", (("code", "bad_json"),)) not in mine
        assert other.metrics.registry is not server.services.metrics.registry
    finally:
        other.runner.close()

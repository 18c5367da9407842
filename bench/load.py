"""Load a live daemon on loopback: 64 real-time streams of real speech, 10% killed at random.

Starts ``python -m streamer serve`` on 127.0.0.1 (tiny onnx.helper bundles from
tests/onnx_graphs.py, or ``--model`` bundles), then runs ``--streams`` ingest clients at once,
each sending ``--seconds`` of real speech (a different window of the shared recordings) in
100 ms frames at real-time pace. ``--kill`` of them, chosen at random, lose their socket at a
random moment without a close frame. One subscriber follows every stream. It checks:

* every utterance of a surviving stream gets exactly one result (seq 0..n-1, each once, one
  per ``speech_started``), as many as the segmenter alone finds in the same audio;
* every utterance a killed stream had begun still reaches the subscriber;
* the daemon's memory stays bounded (RSS sampled every second) and it exits 0 on SIGTERM.

Usage: ``nice -n 5 .venv/bin/python bench/load.py [--streams 64] [--seconds 60] [--kill 6]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from fuzz import REPO, rss_mib, start_daemon
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(REPO / "tests"))
from onnx_graphs import write_bundle

from streamer.audio import AudioFormat, float_to_pcm16, pcm_to_float
from streamer.config import Config
from streamer.segmenter import Segmenter, UtteranceReady
from streamer.streams.sources import read_audio_file

AUDIO = REPO.parent / "shared" / "audio"
RECORDINGS = [
    "stream_clean.wav",
    "stream_noise1_snr10.wav",
    "stream_digits_noise2_snr20.wav",
    "long_lecture_silero_test.wav",
    "long_meeting_icsi_chan3.wav",
    "long_jfk.wav",
]
CHUNK_S = 0.1


def windows(n: int, seconds: float, seed: int) -> list[np.ndarray]:
    """``n`` windows of ``seconds`` each from the recordings laid end to end, spread apart."""
    corpus = np.concatenate([read_audio_file(AUDIO / name).samples for name in RECORDINGS])
    span = len(corpus) - int(seconds * 16000)
    rng = random.Random(seed)
    starts = [rng.randrange(0, span, 160) for _ in range(n)]
    return [corpus[s : s + int(seconds * 16000)] for s in starts]


def expected_utterances(audio: np.ndarray) -> int:
    """How many utterances the segmenter alone cuts from ``audio`` (no engine, no network)."""
    seg = Segmenter(Config().segmenter)
    samples = pcm_to_float(float_to_pcm16(audio), AudioFormat(16000, "pcm_s16le", 1))
    events = [*seg.feed(samples), *seg.flush()]
    return sum(isinstance(e, UtteranceReady) for e in events)


async def ingest(
    url: str, name: str, pcm: bytes, kill_at_s: float | None, began: float
) -> list[dict[str, Any]]:
    """Stream ``pcm`` in real time; abort the socket at ``kill_at_s``; return what came back."""
    events: list[dict[str, Any]] = []
    async with connect(f"{url}/v1/stream") as ws:
        await ws.send(
            json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le",
                        "channels": 1, "stream": name})
        )  # fmt: skip

        async def reader() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    events.append(json.loads(message))  # noqa: PERF401 (kept if the socket dies)

        task = asyncio.create_task(reader())
        step = int(16000 * CHUNK_S) * 2
        t0 = time.monotonic()
        for i, offset in enumerate(range(0, len(pcm), step)):
            if kill_at_s is not None and time.monotonic() - t0 >= kill_at_s:
                ws.transport.abort()
                await asyncio.gather(task, return_exceptions=True)
                return events
            await ws.send(pcm[offset : offset + step])
            await asyncio.sleep(max(0.0, t0 + (i + 1) * CHUNK_S - time.monotonic()))
        await ws.send('{"type":"end"}')
        async with asyncio.timeout(120):
            await task
    return events


async def follow(url: str, sink: list[dict[str, Any]], ready: asyncio.Event) -> None:
    async with connect(f"{url}/v1/events", max_queue=None) as ws:
        await ws.send('{"type":"subscribe","streams":["*"]}')
        await ws.recv()
        ready.set()
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                sink.append(json.loads(message))  # noqa: PERF401 (kept when cancelled)


def exactly_one_result(events: list[dict[str, Any]]) -> tuple[bool, int, int]:
    """Whether utterances 0..n-1 each got exactly one result; also (results, errors)."""
    results = [
        e
        for e in events
        if e["type"] == "utterance" or ("utterance_id" in e and e["type"] == "error")
    ]
    starts = [e for e in events if e["type"] == "speech_started"]
    started = Counter(e["utterance_id"] for e in starts)
    ended = [e["n_utterances"] for e in events if e["type"] == "ended"]
    ok = (
        sorted(e["seq"] for e in starts) == list(range(len(starts)))
        and Counter(e["utterance_id"] for e in results) == started
        and max(started.values(), default=1) == 1
        and ended == [len(starts)]
    )
    return ok, len(results), sum(e["type"] == "error" for e in results)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return (int(fields[13]) + int(fields[14])) / 100


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--kill", type=int, default=None, help="default: 10%% of --streams")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", action="append", default=[], help="[NAME=]BUNDLE (default: tiny)")
    args = ap.parse_args()
    kill = round(args.streams / 10) if args.kill is None else args.kill
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="streamer-load-"))
    models = args.model or [
        f"ctc={write_bundle(work / 'ctc')}",
        f"intent={write_bundle(work / 'intent', task='classify', labels=(('on', 'off'),))}",
    ]
    audio = windows(args.streams, args.seconds, args.seed)
    expected = [expected_utterances(a) for a in audio]
    killed = set(rng.sample(range(args.streams), kill))
    kill_at = {i: rng.uniform(0.1, 0.9) * args.seconds for i in killed}
    proc, port, pump = await start_daemon(
        [a for m in models for a in ("--model", m)], work / "daemon.log"
    )
    url = f"ws://127.0.0.1:{port}"
    rss: list[float] = [rss_mib(proc.pid)]
    try:
        feed: list[dict[str, Any]] = []
        ready = asyncio.Event()
        follower = asyncio.create_task(follow(url, feed, ready))
        await ready.wait()

        async def sample_rss() -> None:
            while True:
                await asyncio.sleep(1)
                rss.append(rss_mib(proc.pid))

        sampler = asyncio.create_task(sample_rss())
        began = time.monotonic()
        got = await asyncio.gather(
            *(
                ingest(url, f"s{i:02d}", float_to_pcm16(audio[i]), kill_at.get(i), began)
                for i in range(args.streams)
            )
        )
        wall_s = time.monotonic() - began
        await asyncio.sleep(2)  # the killed streams' last results, to the subscriber
        sampler.cancel()
        cpu_s = cpu_seconds(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60)
        await pump
    follower.cancel()
    return report(args, audio, expected, killed, got, feed, rss, wall_s, cpu_s, code)


def report(
    args: argparse.Namespace,
    audio: list[np.ndarray],
    expected: list[int],
    killed: set[int],
    got: list[list[dict[str, Any]]],
    feed: list[dict[str, Any]],
    rss: list[float],
    wall_s: float,
    cpu_s: float,
    code: int | None,
) -> int:
    survivors = [i for i in range(args.streams) if i not in killed]
    checks = [exactly_one_result(got[i]) for i in survivors]
    n_ok = sum(ok for ok, _, _ in checks)
    n_results = sum(n for _, n, _ in checks)
    n_errors = sum(e for _, _, e in checks)
    same_as_segmenter = sum(
        checks[k][1] == expected[i] and got[i][-1].get("type") == "ended"
        for k, i in enumerate(survivors)
    )
    by_stream: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in feed:
        by_stream[e.get("stream", "")].append(e)
    killed_begun = killed_done = 0
    for i in killed:
        events = by_stream[f"s{i:02d}"]
        starts = {e["utterance_id"] for e in events if e["type"] == "speech_started"}
        done = Counter(e["utterance_id"] for e in events if e["type"] in ("utterance", "error"))
        killed_begun += len(starts)
        killed_done += sum(done[u] == 1 for u in starts)
    latencies = [
        e["latency_ms"]["end_of_speech_to_emit"] for g in got for e in g if e["type"] == "utterance"
    ]
    lagged = sum("lag_ms" in e for g in got for e in g if e["type"] == "utterance")
    warm = rss[min(5, len(rss) - 1)]
    latency = "/".join(f"{percentile(latencies, q):.0f}" for q in (50, 95, 100))
    memory = f"{rss[0]:.0f} / {warm:.0f} / {max(rss):.0f} / {rss[-1]:.0f} MiB"
    survived = len(survivors)
    rows = [
        (
            "streams / killed (no close frame) / survived",
            f"{args.streams} / {len(killed)} / {survived}",
        ),
        ("real-time speech per stream / wall time", f"{args.seconds:.0f} s / {wall_s:.0f} s"),
        ("survivors with exactly one result per utterance", f"{n_ok} / {survived}"),
        ("survivors' results (of which errors)", f"{n_results} ({n_errors})"),
        ("survivors with as many results as the segmenter", f"{same_as_segmenter} / {survived}"),
        ("killed streams' begun utterances, delivered", f"{killed_done} / {killed_begun}"),
        ("end of speech to result, p50 / p95 / max", f"{latency} ms"),
        ("results carrying lag_ms", str(lagged)),
        ("daemon RSS start / after 5 s / peak / end", memory),
        ("daemon CPU (user + system)", f"{cpu_s:.0f} s = {100 * cpu_s / wall_s:.0f}% of a core"),
        ("daemon exit code on SIGTERM", str(code)),
    ]
    print("| Load | Result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    ok = (
        n_ok == len(survivors)
        and same_as_segmenter == len(survivors)
        and n_errors == 0
        and killed_done == killed_begun
        and code == 0
        and max(rss) - warm < 200
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

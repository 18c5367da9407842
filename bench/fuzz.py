"""Fuzz a live daemon on loopback with random and mutated messages while a real stream runs.

Starts ``python -m streamer serve --token ...`` on 127.0.0.1 (tiny onnx.helper bundles from
tests/onnx_graphs.py, or the bundles given with ``--model``), records one well-behaved stream of
real speech alone (the baseline), then runs that stream again, over and over, while ``--workers``
fuzzers send at least ``--messages`` frames: mutated and random ``start``/``subscribe`` messages,
audio frames of every length, garbage text and bytes, stolen stream names, oversize frames, odd
HTTP handshakes with wrong or damaged tokens, and raw TCP garbage. It checks:

* the daemon never crashes, answers /healthz afterwards, and exits 0 on SIGTERM;
* its log holds no ERROR, CRITICAL or Traceback line (no unhandled exception);
* every run of the well-behaved stream gets byte-identical events to the baseline, once
  ``latency_ms``, ``lag_ms`` and ``utterance_id`` are left out.

Usage: ``nice -n 5 .venv/bin/python bench/fuzz.py [--messages 100000] [--workers 8]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from onnx_graphs import write_bundle  # noqa: E402

from streamer.audio import float_to_pcm16  # noqa: E402
from streamer.streams.sources import read_audio_file  # noqa: E402

AUDIO = REPO.parent / "shared" / "audio"
GOOD = "good-stream"
#: A stream held open for the whole run, whose name the fuzzers try to steal.
HELD = "held-stream"
#: The daemon runs with this token; well-behaved connections and most fuzzers send it.
TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IGNORED = ("latency_ms", "lag_ms", "utterance_id")
#: Seconds between the well-behaved stream's 100 ms chunks (5x faster than real time).
PACE_S = 0.02
STARTS = [
    {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, "stream": "f"},
    {"type": "start", "sample_rate": 44100, "encoding": "pcm_f32le", "channels": 2, "stream": "f",
     "models": ["ctc"], "endpointing": {"min_silence_ms": 300, "vad_mode": 1},
     "want": ["embedding"]},
    {"type": "start", "sample_rate": 8000, "encoding": "pcm_s16le", "channels": 2, "stream": "f",
     "endpointing": {"max_utterance_s": 2}},
]  # fmt: skip
TEXTS = [
    '{"type":"flush"}',
    '{"type":"end"}',
    '{"type":"subscribe","streams":["*"],"events":["utterance","error"]}',
    '{"type":"subscribe","streams":["f","good-stream"]}',
]


def mutate(rng: random.Random, text: str) -> bytes:
    """Flip, delete, insert, duplicate or cut a few bytes of ``text``."""
    data = bytearray(text.encode())
    for _ in range(rng.randint(1, 4)):
        i = rng.randint(0, len(data))
        op = rng.randrange(5)
        if op == 0 and i < len(data):
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del data[i : i + rng.randint(1, 8)]
        elif op == 2:
            data[i:i] = rng.choice([b'"', b"{", b"}", b",", b"\\", b"\xff", rng.randbytes(3)])
        elif op == 3:
            data[i:i] = data[max(0, i - 8) : i]
        else:
            del data[i:]
    return bytes(data)


def as_frame(data: bytes) -> str | bytes:
    """Send valid UTF-8 as a text frame, anything else as binary."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def normalise(events: list[dict[str, Any]]) -> list[str]:
    """Events without timing fields and ids, in a canonical order (by their JSON text).

    Events of one type leave in seq order; how types interleave (a ``speech_started`` before or
    after the previous ``utterance``) depends on timing, so the order across types is dropped.
    """
    return sorted(
        json.dumps({k: v for k, v in e.items() if k not in IGNORED}, sort_keys=True) for e in events
    )


class Fuzzer:
    """One fuzzing worker: picks a scenario, runs it, counts what it sent and what came back."""

    def __init__(self, port: int, seed: int, stats: Counter[str], budget: list[int]) -> None:
        self.url = f"ws://127.0.0.1:{port}"
        self.port = port
        self.rng = random.Random(seed)
        self.stats = stats
        self.budget = budget  # shared: messages still to send

    async def run(self) -> None:
        scenarios = [self.ingest] * 10 + [self.events] * 3 + [self.steal] + [self.handshake]
        scenarios += [self.raw_tcp]
        while self.budget[0] > 0:
            scenario = self.rng.choice(scenarios)
            self.stats[f"scenario {scenario.__name__}"] += 1
            try:
                async with asyncio.timeout(30):
                    await scenario()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else "none (aborted)"
                self.stats[f"close code {code}"] += 1
            except (InvalidHandshake, OSError, TimeoutError) as exc:
                self.stats[f"client saw {type(exc).__name__}"] += 1

    async def send(self, ws: ClientConnection, frame: str | bytes) -> None:
        await ws.send(frame)
        self.budget[0] -= 1
        self.stats["messages"] += 1

    async def finish(self, ws: ClientConnection) -> None:
        """End the connection one of three ways; record the close code when there is one."""
        how = self.rng.randrange(3)
        if how == 0:
            ws.transport.abort()
            self.stats["aborted without close frame"] += 1
            return
        if how == 1:
            await ws.close()
        else:  # ask the server to end (ingest) and read until it closes
            with contextlib.suppress(ConnectionClosed):
                await self.send(ws, '{"type":"end"}')
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                async with asyncio.timeout(5):
                    async for _ in ws:
                        pass
            await ws.close()
        self.stats[f"close code {ws.close_code}"] += 1

    def frame(self, start: dict[str, Any]) -> str | bytes:
        rng = self.rng
        width = {"pcm_s16le": 2, "pcm_f32le": 4}[start["encoding"]] * start["channels"]
        pick = rng.random()
        if pick < 0.55:  # valid audio: noise, a tone or silence
            n = rng.randint(0, 600)
            if start["encoding"] == "pcm_s16le":
                return rng.choice([rng.randbytes(n * width), bytes(n * width)])
            amp = rng.choice([0.0, 0.01, 0.5, 1.0])
            samples = np.sin(np.arange(n * start["channels"]) * 0.1) * amp
            return samples.astype("<f4").tobytes()
        if pick < 0.62:
            return '{"type":"flush"}'
        if pick < 0.67:
            return rng.randbytes(rng.randint(1, 40) * width + rng.randint(1, width - 1))
        if pick < 0.85:
            return as_frame(mutate(rng, rng.choice([*TEXTS, json.dumps(start)])))
        if pick < 0.93:
            return rng.choice(
                [rng.randbytes(rng.randint(0, 64)), "".join(map(chr, rng.randbytes(20)))]
            )
        if pick < 0.96:
            return json.dumps(start)
        if pick < 0.965:
            return b"\0" * (1 << 20) + b"\0\0"  # over max_message_bytes: 1009
        return '{"type":"end"}'

    async def ingest(self) -> None:
        rng = self.rng
        start = dict(rng.choice(STARTS), stream=f"f{rng.randrange(1000)}")
        async with connect(
            self.url + "/v1/stream", additional_headers=AUTH, ping_interval=None
        ) as ws:
            first = (
                json.dumps(start)
                if rng.random() < 0.8
                else as_frame(mutate(rng, json.dumps(start)))
            )
            await self.send(ws, first)
            for _ in range(rng.randint(1, 80)):
                await self.send(ws, self.frame(start))
            await self.finish(ws)

    async def events(self) -> None:
        rng = self.rng
        async with connect(
            self.url + "/v1/events", additional_headers=AUTH, ping_interval=None
        ) as ws:
            for _ in range(rng.randint(1, 10)):
                choice = rng.random()
                if choice < 0.5:
                    frame = as_frame(mutate(rng, rng.choice(TEXTS)))
                elif choice < 0.8:
                    frame = rng.choice(TEXTS[2:])
                else:
                    frame = rng.randbytes(rng.randint(0, 32))
                await self.send(ws, frame)
            await self.finish(ws)

    async def steal(self) -> None:
        """Try to open a live stream's name: must be refused with stream_in_use."""
        async with connect(
            self.url + "/v1/stream", additional_headers=AUTH, ping_interval=None
        ) as ws:
            await self.send(ws, json.dumps(dict(STARTS[0], stream=HELD)))
            reply = json.loads(await ws.recv())
            self.stats[f"steal answered {reply.get('code', reply['type'])}"] += 1

    async def handshake(self) -> None:
        rng = self.rng
        path = rng.choice(["/v1/stream", "/v1/events", "/readyz", "/", "/x" * 50])
        if rng.random() < 0.3:
            path += rng.choice(["?token=", f"?token={TOKEN}&token=", "?token=%ff&"]) + TOKEN
        name = rng.choice(["Origin", "Authorization", "X-Junk"])
        headers = {name: mutate(rng, f"Bearer {TOKEN}").decode("latin-1")}
        try:
            async with connect(
                self.url + path, additional_headers=headers, ping_interval=None
            ) as ws:
                await self.send(ws, rng.choice(TEXTS))
                await self.finish(ws)
        except InvalidStatus as exc:
            self.stats[f"HTTP {exc.response.status_code}"] += 1
        except ValueError:  # a header value the client library refuses to send
            self.stats["client refused header"] += 1

    async def raw_tcp(self) -> None:
        rng = self.rng
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        payload = rng.choice(
            [
                rng.randbytes(rng.randint(1, 400)),
                b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" + rng.randbytes(40),
                mutate(rng, "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
                b"POST /v1/stream HTTP/1.0\r\nContent-Length: 99999\r\n\r\n" + rng.randbytes(100),
            ]
        )
        writer.write(payload)
        self.budget[0] -= 1
        self.stats["messages"] += 1
        self.stats["raw TCP payloads"] += 1
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(0.3):
                await reader.read(4096)
        writer.close()


async def good_stream(port: int, audio: bytes, pace_s: float) -> list[str]:
    """Stream ``audio`` as the well-behaved client; return its normalised events."""
    async with connect(f"ws://127.0.0.1:{port}/v1/stream", additional_headers=AUTH) as ws:
        await ws.send(json.dumps(dict(STARTS[0], stream=GOOD)))
        events: list[dict[str, Any]] = []

        async def reader() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    events.append(json.loads(message))  # noqa: PERF401 (kept if the socket dies)

        task = asyncio.create_task(reader())
        step = 3200  # 100 ms of 16 kHz 16-bit audio
        for i in range(0, len(audio), step):
            await ws.send(audio[i : i + step])
            await asyncio.sleep(pace_s)
        await ws.send('{"type":"end"}')
        async with asyncio.timeout(60):
            await task
        assert ws.close_code == 1000, ws.close_code
    return normalise(events)


async def start_daemon(
    models: list[str], log_path: Path, *serve: str
) -> tuple[asyncio.subprocess.Process, int, asyncio.Task[None]]:
    log = log_path.open("wb")
    argv = ["-m", "streamer", *models, "--log-level", "info", "serve", "--port", "0", *serve]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stderr=asyncio.subprocess.PIPE, cwd=REPO
    )
    assert proc.stderr is not None
    while True:
        line = await proc.stderr.readline()
        log.write(line)
        if not line:
            raise SystemExit(f"daemon exited before listening; see {log_path}")
        if m := re.search(rb"listening on ws://127\.0\.0\.1:(\d+)", line):
            break

    async def pump() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            log.write(line)
        log.close()

    return proc, int(m.group(1)), asyncio.create_task(pump())


def rss_row(start: float, at: dict[int, float], end: float) -> str:
    """RSS before, after each quarter of the messages, and at the end."""
    total = max(at, default=0)
    quarters = [
        next((v for k, v in sorted(at.items()) if k >= q * total / 4), end) for q in (1, 2, 3)
    ]
    return " / ".join(f"{v:.0f}" for v in (start, *quarters, end)) + " MiB"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=30.0, help="speech per good-stream run")
    ap.add_argument("--model", action="append", default=[], help="[NAME=]BUNDLE (default: tiny)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="streamer-fuzz-"))
    models = args.model or [
        f"ctc={write_bundle(work / 'ctc')}",
        f"intent={write_bundle(work / 'intent', task='classify', labels=(('on', 'off'),))}",
    ]
    audio = read_audio_file(AUDIO / "stream_clean.wav").samples[: int(args.seconds * 16000)]
    pcm = float_to_pcm16(audio)
    proc, port, pump = await start_daemon(
        [a for m in models for a in ("--model", m)], work / "daemon.log", "--token", TOKEN
    )
    rss_start = rss_mib(proc.pid)
    began = time.monotonic()
    baseline = await good_stream(port, pcm, PACE_S)
    stats: Counter[str] = Counter()
    budget = [args.messages]
    fuzzers = [Fuzzer(port, args.seed * 1000 + i, stats, budget) for i in range(args.workers)]
    held = await connect(f"ws://127.0.0.1:{port}/v1/stream", additional_headers=AUTH)
    await held.send(json.dumps(dict(STARTS[0], stream=HELD)))
    await held.recv()
    fuzz = asyncio.gather(*(f.run() for f in fuzzers))
    rss_at: dict[int, float] = {}  # messages sent -> daemon RSS

    async def sample_rss() -> None:
        while True:
            rss_at[stats["messages"]] = rss_mib(proc.pid)
            await asyncio.sleep(1)

    sampler = asyncio.create_task(sample_rss())
    runs = identical = 0
    first_diff: tuple[int, str, str] | None = None
    while not fuzz.done():
        got = await good_stream(port, pcm, PACE_S)
        runs += 1
        identical += got == baseline
        if got != baseline and runs - identical == 1:
            pairs = zip([*got, ""], [*baseline, ""], strict=False)
            first_diff = next((i, a, b) for i, (a, b) in enumerate(pairs) if a != b)
    await fuzz
    sampler.cancel()
    await held.close()
    fuzz_s = time.monotonic() - began
    alive = proc.returncode is None
    rss_end = rss_mib(proc.pid) if alive else float("nan")
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), 60)
    await pump
    log = (work / "daemon.log").read_text(errors="replace")
    bad = [line for line in log.splitlines() if re.search(r" (ERROR|CRITICAL) |Traceback", line)]
    n_utt = sum('"type": "utterance"' in e for e in baseline)
    rows = [
        ("messages sent (frames + raw TCP payloads)", f"{stats['messages']:,}"),
        ("fuzzing workers / wall time", f"{args.workers} / {fuzz_s:.0f} s"),
        *((k, f"{v:,}") for k, v in sorted(stats.items()) if k != "messages"),
        ("daemon alive after fuzzing / exit code on SIGTERM", f"{alive} / {code}"),
        ("ERROR, CRITICAL or Traceback lines in the daemon log", str(len(bad))),
        ("daemon RSS before fuzzing, then per quarter of it", rss_row(rss_start, rss_at, rss_end)),
        ("well-behaved runs identical to the baseline", f"{identical} / {runs}"),
        ("baseline: events / utterances", f"{len(baseline)} / {n_utt}"),
    ]
    print("| Fuzz | Result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    for line in bad[:20]:
        print("log:", line)
    if first_diff is not None:
        i, got_line, base_line = first_diff
        print(f"first difference at event {i}:\n  got      {got_line}\n  baseline {base_line}")
    ok = alive and code == 0 and not bad and runs > 0 and identical == runs and n_utt > 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

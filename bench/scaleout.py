"""Scale-out: 1, 2 and 3 replicas on one event bus, the same total load, and the bus's own cost.

Usage (from the repository root; about 5 minutes with the defaults)::

    .venv/bin/python bench/scaleout.py [--replicas 1,2,3] [--streams 12] [--duration-s 60]
        [--json OUT]

One ``redis-server`` (append-only, ``appendfsync everysec``) on a free loopback port serves as the
bus for every part:

1. **Scale-out rows.** For each replica count N, N ``python -m streamer serve --port 0``
   processes (``STREAMER_BUS`` set, the shipped bundles of ``exported/``, defaults otherwise)
   share ``--streams`` real-time streams of real speech (``../shared/audio``; stream ``i`` goes
   to replica ``i % N`` and loops its file for ``--duration-s``), and one ``/v1/events``
   subscriber on every replica takes every event. Reported: the events on the bus, what each
   subscriber got (duplicates and missing ones by cursor: each must get each event exactly
   once), the bus latency (append, the entry's ``t`` from the bus server's clock, to arrival at a
   subscriber on *another* replica, on this process's clock: one machine, one clock; for N = 1,
   the same replica), end of speech to final at the ingest client, and the CPU seconds per audio
   second of the replicas and of the bus server (``/proc``).
2. **Reader cost.** One, then three replicas with no streams and one subscriber each while
   ``--rate`` events/s are appended through the daemon's own append script, one event per call
   (as many replicas each appending a few events would): the CPU each replica spends per event
   it reads and delivers, the bus server's CPU per event (so, by difference, per reading
   replica), both beyond what they cost idle, and the latency at that rate.
3. **Append throughput.** ``redis-benchmark`` (8 connections, pipelined 16) calls the append
   script with 1 or 20 events per call, retention off, the default 86,400 s (the oldest entry is
   checked, nothing trimmed) and 1 s (trimming all along); with ``appendfsync always`` once.
   Reported: events/s and the bus server's CPU per event (its one thread is the shard's limit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402
import redis.asyncio as aredis  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from streamer import protocol as proto  # noqa: E402
from streamer.serve import bus_wire as wire  # noqa: E402
from streamer.tools import bench  # noqa: E402
from streamer.tools.replay import play  # noqa: E402

AUDIO = ROOT.parent / "shared" / "audio"
#: Real speech the streams loop (long files with pauses: many utterances per stream).
FILES = (
    "stream_clean.wav",
    "stream_digits_noise2_snr20.wav",
    "stream_noise1_snr10.wav",
    "long_jfk.wav",
    "long_lecture_silero_test.wav",
    "long_meeting_icsi_chan3.wav",
)
KEY = "streamer:events"
REDIS_ARGS = ("--save", "", "--appendonly", "yes", "--appendfsync", "everysec")
#: Seconds every subscriber gets to catch up with the bus's last entry after the streams end.
CATCH_UP_S = 60.0
#: Seconds the reader part first measures an idle replica and bus (their cost is subtracted).
IDLE_S = 3.0


class Bus:
    """``redis-server`` on a free 127.0.0.1 port in a temporary folder."""

    def __init__(self, folder: Path) -> None:
        server = shutil.which("redis-server") or shutil.which("valkey-server")
        if server is None:
            raise SystemExit("no redis-server (make install)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        args = [server, "--bind", "127.0.0.1", "--port", str(self.port), *REDIS_ARGS]
        self.process = subprocess.Popen([*args, "--dir", str(folder)], stdout=subprocess.DEVNULL)
        self.probe = bench.ProcessProbe(self.process.pid)
        self.client = redis.Redis.from_url(self.url)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                self.client.ping()
                return
            time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def entries(self) -> list[wire.Entry]:
        found = [wire.parse_entry(*e) for e in wire.entries(self.client.xrange(KEY))]
        return [e for e in found if e is not None]

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(30)


@dataclass
class Tap:
    """One ``/v1/events`` subscriber: when each event arrived, by cursor."""

    url: str
    origin: str
    arrivals: list[tuple[int, float]] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with connect(self.url + proto.EVENTS_PATH, max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "streams": ["*"], "events": ["*"]}))
            await ws.recv()  # subscribed
            self.ready.set()
            with contextlib.suppress(ConnectionClosed):
                await self._read(ws)

    async def _read(self, ws: ClientConnection) -> None:
        async for message in ws:
            now = time.time()
            cursor = wire.cursor_of(message if isinstance(message, str) else message.decode())
            if cursor is not None:
                self.arrivals.append((cursor, now))

    def last(self) -> int:
        return self.arrivals[-1][0] if self.arrivals else 0


def origin_of(ws_url: str) -> str:
    """The replica's bus id, from its ``/readyz``."""
    with urllib.request.urlopen(ws_url.replace("ws://", "http://") + "/readyz", timeout=10) as r:
        return str(json.load(r)["bus"]["replica"])


@contextlib.asynccontextmanager
async def replicas(bus: Bus, n: int) -> Any:
    """N daemon processes on ``bus``, ready, each with a subscribing :class:`Tap` running."""
    bus.client.flushdb()
    daemons = [
        bench.Daemon(["--log-level", "info"], env={"STREAMER_BUS": bus.url}) for _ in range(n)
    ]
    tasks: list[asyncio.Task[None]] = []
    try:
        urls = await asyncio.gather(*(d.wait_ready() for d in daemons))
        taps = [Tap(u, await asyncio.to_thread(origin_of, u)) for u in urls]
        tasks = [asyncio.create_task(t.run()) for t in taps]
        await asyncio.gather(*(t.ready.wait() for t in taps))
        yield daemons, urls, taps
    finally:
        logs = [d.stop() for d in daemons]
        await asyncio.gather(*tasks, return_exceptions=True)
        for text in logs:
            if "Traceback" in text:
                print(text[-2000:], file=sys.stderr)


async def caught_up(bus: Bus, taps: list[Tap]) -> None:
    """Wait until every tap got the bus's last entry (or ``CATCH_UP_S`` passed)."""
    await asyncio.sleep(1.0)  # the last events' appends (their clients got them first)
    last = wire.entries(bus.client.xrevrange(KEY, count=1))
    end = wire.cursor_of_id(last[0][0]) if last else 0
    deadline = time.monotonic() + CATCH_UP_S
    while any(t.last() < end for t in taps) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


def deliveries(entries: list[wire.Entry], taps: list[Tap], n: int) -> dict[str, Any]:
    """Exactly-once counts per tap, and append-to-arrival latency (other replicas' events)."""
    by_cursor = {e.cursor: e for e in entries}
    got, latencies = [], []
    for tap in taps:
        cursors = [c for c, _ in tap.arrivals]
        got.append(
            {
                "delivered": len(cursors),
                "duplicates": len(cursors) - len(set(cursors)),
                "missing": len(set(by_cursor) - set(cursors)),
            }
        )
        for cursor, at in tap.arrivals:
            entry = by_cursor.get(cursor)
            if entry is not None and (n == 1 or entry.origin != tap.origin):
                latencies.append((at - entry.time) * 1000.0)
    return {"events": len(entries), "subscribers": got, "bus_ms": bench.percentiles(latencies)}


async def scale_row(bus: Bus, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One row: ``n`` replicas sharing ``args.streams`` real-time streams."""
    files = [AUDIO / name for name in FILES]
    async with replicas(bus, n) as (daemons, urls, taps):
        probes = [d.probe for d in daemons] + [bus.probe]
        cpu0, t0 = [p.cpu_s() for p in probes], time.perf_counter()
        delays = np.random.default_rng(0).uniform(0.0, 1.0, args.streams)
        reports = await asyncio.gather(
            *(
                play(
                    urls[i % n],
                    f"s{i}",
                    files[i % len(files)],
                    realtime=True,
                    delay_s=float(delays[i]),
                    duration_s=args.duration_s,
                )
                for i in range(args.streams)
            )
        )
        await caught_up(bus, taps)
        wall_s = time.perf_counter() - t0
        cpu = [p.cpu_s() - c for p, c in zip(probes, cpu0, strict=True)]
        entries = bus.entries()
    summary = bench.summarize(
        list(reports), wall_s=wall_s, cpu_s=sum(cpu[:-1]), peak_rss_mb=None, realtime=True
    )
    audio_s = summary["audio_s"]
    return {
        "replicas": n,
        "streams": args.streams,
        **deliveries(entries, taps, n),
        "latency_ms": summary["latency_ms"],
        "utterances_sent": summary["utterances_sent"],
        "results_received": summary["results_received"],
        "audio_s": audio_s,
        "replicas_cpu_s_per_audio_s": round(sum(cpu[:-1]) / audio_s, 4),
        "bus_cpu_s_per_audio_s": round(cpu[-1] / audio_s, 5),
        "events_per_audio_s": round(len(entries) / audio_s, 3),
        "event_bytes_mean": round(float(np.mean([len(e.event) for e in entries])), 1),
        "sample_event": median_utterance(entries),
        "load_avg_1m": bench.machine()["load_avg_1m"],
    }


def median_utterance(entries: list[wire.Entry]) -> str:
    """The utterance event of median length (the payload the bus-only parts append)."""
    events = sorted((e.event for e in entries if e.type == "utterance"), key=len)
    return events[len(events) // 2] if events else json.dumps({"type": "utterance"})


async def reader_cost(bus: Bus, n: int, rate: int, seconds: float, event: str) -> dict[str, Any]:
    """``n`` idle replicas reading ``rate`` events/s appended one per call: CPU per event, latency.

    Every 10 ms a pipeline of ``rate / 100`` single-event calls of the append script, as many
    replicas each appending its own few events would.
    """
    client = aredis.Redis.from_url(bus.url)
    append = client.register_script(wire.APPEND_SCRIPT)
    per_tick = max(1, rate // 100)
    async with replicas(bus, n) as (daemons, _, taps):
        probes = [d.probe for d in daemons] + [bus.probe]
        idle0 = [p.cpu_s() for p in probes]
        await asyncio.sleep(IDLE_S)  # what they cost doing nothing, to subtract
        idle = [(p.cpu_s() - c) / IDLE_S for p, c in zip(probes, idle0, strict=True)]
        cpu0, start = [p.cpu_s() for p in probes], time.monotonic()
        for i in range(int(seconds * 100)):
            async with client.pipeline(transaction=False) as pipe:
                for j in range(per_tick):
                    one = [("utterance", f"r{(i * per_tick + j) % 50}", event)]
                    args = wire.append_args(one, "bench", max_events=1_000_000, retention_s=86_400)
                    await append(keys=[KEY, KEY + ":seq"], args=args, client=pipe)
                await pipe.execute()
            await asyncio.sleep(max(0.0, start + (i + 1) / 100 - time.monotonic()))
        await caught_up(bus, taps)
        elapsed = time.monotonic() - start
        cpu = [p.cpu_s() - c - i * elapsed for p, c, i in zip(probes, cpu0, idle, strict=True)]
        entries = bus.entries()
    await client.aclose()
    return {
        "replicas": n,
        "rate": rate,
        "seconds": seconds,
        **deliveries(entries, taps, n),
        "idle_cpu_s_per_s": [round(i, 4) for i in idle],
        "replica_us_per_event": round(sum(cpu[:-1]) / n / len(entries) * 1e6, 1),
        "bus_us_per_event": round(cpu[-1] / len(entries) * 1e6, 1),
    }


def append_throughput(bus: Bus, event: str) -> list[dict[str, Any]]:
    """``redis-benchmark`` on the append script: events/s and the server's CPU per event."""
    tool = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if tool is None:
        return []
    sha = bus.client.script_load(wire.APPEND_SCRIPT)
    rows: list[dict[str, Any]] = []
    cases = [(1, 0.0), (1, 86_400.0), (1, 1.0), (20, 0.0), (20, 86_400.0), (20, 1.0)]
    for fsync, (batch, keep_s) in [("everysec", c) for c in cases] + [("always", (20, 86_400.0))]:
        bus.client.config_set("appendfsync", fsync)
        key = f"bench:append:{len(rows)}"
        events = ["utterance", "bench-0", "bench", event] * batch
        command = ["EVALSHA", sha, "2", key, key + ":seq", "1000000", str(keep_s), *events]
        calls = 60_000 if batch == 1 else 6_000
        cpu0 = bus.probe.cpu_s()
        out = subprocess.run(
            [tool, "-p", str(bus.port), "-c", "8", "-P", "16", "-n", str(calls), "--csv", *command],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        cpu = bus.probe.cpu_s() - cpu0
        calls_s = float(out.stdout.strip().splitlines()[-1].split(",")[-7].strip('"'))  # rps
        rows.append(
            {
                "events_per_call": batch,
                "retention_s": keep_s,
                "appendfsync": fsync,
                "events_per_s": round(calls_s * batch),
                "bus_cpu_us_per_event": round(cpu / (calls * batch) * 1e6, 2),
                "entries_left": int(bus.client.xlen(key)),
            }
        )
        bus.client.delete(key, key + ":seq")
    bus.client.config_set("appendfsync", "everysec")
    return rows


def table(result: dict[str, Any]) -> str:
    """The three parts as Markdown tables."""
    lines = [
        "| replicas | streams per replica | events on bus | delivered per subscriber "
        "(dup / missing) | bus latency p50 / p99 ms | end of speech to final p50 / p95 ms "
        "| replicas CPU s / audio s | bus CPU s / audio s | load 1m |",
        "|" + " --- |" * 9,
    ]
    for r in result["scaleout"]:
        subs = r["subscribers"]
        lat, bus_ms = r["latency_ms"], r["bus_ms"]
        lines.append(
            f"| {r['replicas']} | {r['streams'] / r['replicas']:.0f} "
            f"| {r['events']} ({r['events_per_audio_s']} / audio s) "
            f"| {', '.join(str(s['delivered']) for s in subs)} "
            f"({sum(s['duplicates'] for s in subs)} / {sum(s['missing'] for s in subs)}) "
            f"| {bus_ms['p50']} / {bus_ms['p99']} | {lat['p50']} / {lat['p95']} "
            f"| {r['replicas_cpu_s_per_audio_s']} | {r['bus_cpu_s_per_audio_s']} "
            f"| {r['load_avg_1m']} |"
        )
    lines += [
        "",
        "| replicas reading | events/s | events | delivered per subscriber (dup / missing) "
        "| bus latency p50 / p99 ms | replica CPU us / event (each) | bus CPU us / event |",
        "|" + " --- |" * 7,
    ]
    for c in result["reader_cost"]:
        subs = c["subscribers"]
        lines.append(
            f"| {c['replicas']} | {c['rate']} | {c['events']} "
            f"| {', '.join(str(s['delivered']) for s in subs)} "
            f"({sum(s['duplicates'] for s in subs)} / {sum(s['missing'] for s in subs)}) "
            f"| {c['bus_ms']['p50']} / {c['bus_ms']['p99']} | {c['replica_us_per_event']} "
            f"| {c['bus_us_per_event']} |"
        )
    lines += [
        "",
        "| events per call | retention_s | appendfsync | events/s | bus CPU us / event |",
        "| --- | --- | --- | --- | --- |",
    ]
    for a in result["append"]:
        lines.append(
            f"| {a['events_per_call']} | {a['retention_s']:g} | {a['appendfsync']} "
            f"| {a['events_per_s']} | {a['bus_cpu_us_per_event']} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="streamer-scaleout-") as folder:
        bus = Bus(Path(folder))
        try:
            rows: list[dict[str, Any]] = []
            for n in args.replicas:
                rows.append(await scale_row(bus, n, args))
                print(f"{n} replica(s) done", file=sys.stderr)
            event = rows[-1]["sample_event"]
            cost = [await reader_cost(bus, n, args.rate, 10.0, event) for n in (1, 3)]
            append = await asyncio.to_thread(append_throughput, bus, event)
        finally:
            bus.stop()
    return {
        "machine": bench.machine(),
        "command": sys.argv,
        "scaleout": rows,
        "reader_cost": cost,
        "append": append,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2,3", help="replica counts, comma-separated")
    parser.add_argument("--streams", type=int, default=12, help="real-time streams in all")
    parser.add_argument("--duration-s", type=float, default=60.0, help="audio per stream")
    parser.add_argument("--rate", type=int, default=2000, help="events/s of the reader part")
    parser.add_argument("--json", type=Path, help="write the full result here")
    args = parser.parse_args()
    args.replicas = [int(n) for n in args.replicas.split(",")]
    result = asyncio.run(run(args))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

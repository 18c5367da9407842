"""``streamer bench``: replay WAV files as N live streams against a daemon and report the cost.

Each stream is one ``/v1/stream`` connection playing one file (stream ``i`` plays file
``i % len(files)``; the client is :mod:`streamer.tools.replay`), paced by its sample count
(``--realtime``, the default) or as fast as the daemon keeps up (``--fast``). Streams start at
staggered offsets within ``--stagger-s``. Every event is collected.

End-of-speech→final latency is measured at the client: from sending the frame that holds the
utterance's ``end_ms`` to receiving its ``utterance`` event, so it includes the segmenter's
hangover, the queue, the encoder and the network. The daemon's CPU time and peak RSS are read
from ``/proc/PID`` of the daemon this command starts (not available with ``--url``).
``--partials`` compares runs with partial and eager results off and on
(:mod:`streamer.tools.bench_partials`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from streamer.errors import StreamerError
from streamer.tools import bench_partials
from streamer.tools.replay import MAX_IN_FLIGHT, StreamReport, play

log = logging.getLogger(__name__)

#: Seconds to wait for the daemon to log its port.
START_TIMEOUT_S = 120.0
_LISTENING = re.compile(r"listening on wss?://\S+:(\d+)")
_BATCHES = re.compile(
    r"engine: (\d+) utterance runs in (\d+) batches \(mean ([\d.]+).*?\), busy ([\d.]+) s"
    r"(?: \(partials ([\d.]+) s\))?"
)
#: Plays stream ``i`` given the daemon's URL, ``i`` and its start delay.
Player = Callable[[str, int, float], Awaitable[StreamReport]]


class ProcessProbe:
    """CPU seconds and resident memory of one local process, from ``/proc/PID``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._tick_s = 1.0 / os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        """User plus system CPU seconds the process has used so far (all threads)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text(encoding="ascii")
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * self._tick_s

    def rss_mb(self, key: str = "VmRSS") -> float:
        """Resident memory in MB: ``VmRSS`` (now) or ``VmHWM`` (peak so far)."""
        for line in Path(f"/proc/{self.pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
        return float("nan")


class Daemon:
    """``python -m streamer serve --port 0`` as a child process, with its log in a temp file."""

    def __init__(self, global_args: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the daemon
            prefix="streamer-bench-", suffix=".log", delete=False
        )
        command = [sys.executable, "-m", "streamer", *global_args, "serve", "--port", "0"]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
            env={**os.environ, **(env or {})},
        )
        self.probe = ProcessProbe(self.process.pid)

    def log_text(self) -> str:
        """The daemon's log so far."""
        return Path(self.log_file.name).read_text(encoding="utf-8", errors="replace")

    async def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Wait until the daemon logs its port; return its ws:// URL.

        Raises:
            StreamerError: the daemon exited or did not start in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log_text())
            if found:
                return f"ws://127.0.0.1:{found.group(1)}"
            if self.process.poll() is not None:
                tail = self.log_text().strip().splitlines()[-1:] or ["no output"]
                raise StreamerError(f"daemon exited with {self.process.returncode}: {tail[0]}")
            await asyncio.sleep(0.1)
        raise StreamerError(f"daemon did not report a port within {timeout_s:g} s")

    def stop(self, timeout_s: float = 30.0) -> str:
        """SIGTERM the daemon, wait for it, and return its whole log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        text = self.log_text()
        self.log_file.close()
        Path(self.log_file.name).unlink(missing_ok=True)
        return text


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of ``values`` (None when empty), rounded to 0.1."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return {
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(float(max(values)), 1),
    }


async def run_streams(
    url: str,
    files: Sequence[Path],
    n_streams: int,
    *,
    realtime: bool,
    stagger_s: float = 1.0,
    chunk_ms: int = 100,
    duration_s: float | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
    stream_models: Sequence[Sequence[str] | None] = (None,),
    token: str | None = None,
    probe: ProcessProbe | None = None,
    player: Player | None = None,
) -> dict[str, Any]:
    """Play ``n_streams`` streams at once; return the summary (see :func:`summarize`).

    Stream ``i`` plays ``files[i % len(files)]`` and asks for the models
    ``stream_models[i % len(stream_models)]``; or ``player`` plays it (``--partials``).
    """
    rng = random.Random(0)
    delays = [0.0] + [rng.uniform(0.0, stagger_s) for _ in range(n_streams - 1)]
    cpu0 = probe.cpu_s() if probe else None
    t0 = time.perf_counter()
    reports = await asyncio.gather(
        *(
            player(url, i, delays[i])
            if player is not None
            else play(
                url,
                f"bench-{i}",
                files[i % len(files)],
                realtime=realtime,
                chunk_ms=chunk_ms,
                delay_s=delays[i],
                duration_s=duration_s,
                max_in_flight=max_in_flight,
                models=stream_models[i % len(stream_models)],
                token=token,
            )
            for i in range(n_streams)
        )
    )
    wall_s = time.perf_counter() - t0
    cpu_s = probe.cpu_s() - cpu0 if probe and cpu0 is not None else None
    return summarize(
        list(reports),
        wall_s=wall_s,
        cpu_s=cpu_s,
        peak_rss_mb=probe.rss_mb("VmHWM") if probe else None,
        realtime=realtime,
    )


def summarize(
    reports: list[StreamReport],
    *,
    wall_s: float,
    cpu_s: float | None,
    peak_rss_mb: float | None,
    realtime: bool,
) -> dict[str, Any]:
    """Fold per-stream reports into the figures the table shows."""
    audio_s = sum(r.audio_s for r in reports)
    latencies = [v for r in reports for v in r.latencies_ms]
    return {
        "streams": len(reports),
        "mode": "realtime" if realtime else "fast",
        "audio_s": round(audio_s, 2),
        "wall_s": round(wall_s, 2),
        "latency_ms": percentiles(latencies),
        "latency_ms_by_models": {
            models: percentiles([v for r in reports if r.models == models for v in r.latencies_ms])
            for models in sorted({r.models for r in reports})
        },
        "encode_ms": percentiles([v for r in reports for v in r.encode_ms]),
        "queued_ms": percentiles([v for r in reports for v in r.queued_ms]),
        "rtf": round(wall_s / audio_s, 4) if audio_s and not realtime else None,
        "cpu_s_per_audio_s": round(cpu_s / audio_s, 4) if cpu_s is not None and audio_s else None,
        "peak_rss_mb": round(peak_rss_mb, 1) if peak_rss_mb is not None else None,
        "utterances_sent": sum(r.utterances for r in reports),
        "results_received": sum(r.results for r in reports),
        "errors": sum(r.errors for r in reports),
        "error_codes": _merged([r.error_codes for r in reports]),
        "per_stream": [
            {k: v for k, v in asdict(r).items() if not k.endswith("_ms")} for r in reports
        ],
    }


def _merged(counts: Sequence[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for count in counts:
        for code, n in count.items():
            out[code] = out.get(code, 0) + n
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary rows as a Markdown table."""
    head = (
        "| streams | mode | audio s | latency p50 / p95 / p99 ms | encode p50 ms | RTF "
        "| CPU s / audio s | peak RSS MB | utterances sent / results |"
    )
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['streams']} | {r['mode']} | {r['audio_s']:.1f} "
            f"| {_fmt(lat['p50'])} / {_fmt(lat['p95'])} / {_fmt(lat['p99'])} "
            f"| {_fmt(r['encode_ms']['p50'])} | {_fmt(r['rtf'], 4)} "
            f"| {_fmt(r['cpu_s_per_audio_s'], 4)} | {_fmt(r['peak_rss_mb'])} "
            f"| {r['utterances_sent']} / {r['results_received']}"
            + (f" ({_codes(r['error_codes'])})" if r["error_codes"] else "")
            + " |"
        )
    return "\n".join(lines)


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{n} {code}" for code, n in sorted(codes.items()))


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def machine() -> dict[str, Any]:
    """Where the numbers were taken: CPU model, cores, load, Python and onnxruntime versions."""
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def add_daemon_figures(result: dict[str, Any], log_text: str) -> None:
    """Add what the stopped daemon logged: batch counts, and the RTF from its engine's busy time.

    RTF is engine busy seconds per audio second: ``1 / RTF`` streams of this speech density keep
    one engine fully busy. Without the daemon's log (``--url``), a ``--fast`` run falls back to
    wall-clock seconds per audio second, and a real-time one has none (it is paced at 1/N).
    """
    batches = daemon_batches(log_text)
    result["daemon_batches"] = batches
    if batches is not None and result["audio_s"]:
        result["rtf"] = round(batches["busy_s"] / result["audio_s"], 4)


def daemon_batches(log_text: str) -> dict[str, float] | None:
    """The batch counts (and partial runs' busy seconds) the daemon logs when it stops, if any."""
    found = _BATCHES.search(log_text)
    if not found:
        return None
    return {
        "utterance_runs": int(found.group(1)),
        "batches": int(found.group(2)),
        "mean_batch": float(found.group(3)),
        "busy_s": float(found.group(4)),
        **({"partials_busy_s": float(found.group(5))} if found.group(5) else {}),
    }


def global_args(args: argparse.Namespace) -> list[str]:
    """The ``streamer`` flags before the sub-command, to hand to the daemon."""
    out = ["--log-level", "info"]
    for spec in args.model:
        out += ["--model", spec]
    if args.config is not None:
        out += ["--config", str(args.config)]
    if args.provider is not None:
        out += ["--provider", args.provider]
    return out


def add_parser(sub: Any) -> None:
    """Register ``streamer bench`` on the CLI's sub-command parsers."""
    p = sub.add_parser("bench", help="replay WAV files as N streams and report latency and cost")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--streams", type=int, default=1, help="parallel connections (default 1)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True)
    pace.add_argument("--fast", dest="realtime", action="store_false", help="no pacing")
    p.add_argument("--compare", action="store_true", help="also time raw onnxruntime and torch")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every figure to OUT")
    p.add_argument("--url", help="use this running daemon (ws://HOST:PORT) instead of one")
    p.add_argument("--token", default=os.environ.get("STREAMER_TOKEN"), help="bearer token")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per frame (default 100)")
    p.add_argument("--stagger-s", type=float, default=1.0, help="spread of stream starts")
    p.add_argument("--duration-s", type=float, help="loop each file to this length")
    p.add_argument("--partials", action="store_true", help="partial+eager results off vs on")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Run ``streamer bench``; return the exit code (1 if any utterance was lost)."""
    if args.streams < 1:
        raise StreamerError("--streams must be >= 1")
    for path in args.files:
        if not path.is_file():
            raise StreamerError(f"{path} is not a file")
    if args.partials:
        players = bench_partials.players(args)
        runs = {arm: asyncio.run(_bench(args, player)) for arm, player in players.items()}
        return bench_partials.report(args, players, runs)
    result = asyncio.run(_bench(args))
    print(format_table([result]))
    if result.get("compare"):
        from streamer.tools.baseline import format_compare

        print()
        print(format_compare(result["compare"]))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lost = result["utterances_sent"] - result["results_received"]
    return 1 if lost else 0


async def _bench(args: argparse.Namespace, player: Player | None = None) -> dict[str, Any]:
    daemon = None if args.url else Daemon(global_args(args))
    log_text = ""
    try:
        url = args.url if daemon is None else await daemon.wait_ready()
        result = await run_streams(
            url,
            args.files,
            args.streams,
            realtime=args.realtime,
            stagger_s=args.stagger_s,
            chunk_ms=args.chunk_ms,
            duration_s=args.duration_s,
            token=args.token,
            probe=daemon.probe if daemon else None,
            player=player,
        )
    finally:
        if daemon is not None:
            log_text = daemon.stop()
    add_daemon_figures(result, log_text)
    result["machine"] = machine()
    result["command"] = sys.argv
    if args.compare and player is None:
        from streamer.tools.baseline import compare

        result["compare"] = compare(args, result)
    return result

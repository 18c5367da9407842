"""Memory soak: 8 real-time streams looping real speech for 30 minutes; daemon RSS must stay flat.

Usage (from the repository root; takes ``--minutes`` of wall-clock time)::

    nice .venv/bin/python bench/soak.py [--minutes 30] [--streams 8] [--json OUT]

It serves the fp32 sew-d-tiny-size bundle that bench/throughput.py builds, plays one distinct
60 s stream file per connection in a loop, samples the daemon's RSS (``/proc/PID/status``) every
10 s and reports RSS at 2 minutes and at the end. Target: the end within 5% of the 2-minute value.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import CACHE, ROOT, ensure_models, make_streams

sys.path.insert(0, str(ROOT))

from streamer.tools import bench

#: Seconds between RSS samples.
SAMPLE_S = 10.0
#: When the early reference is taken, in seconds from the first stream's start.
EARLY_S = 120.0


async def sample_rss(probe: bench.ProcessProbe, samples: list[tuple[float, float]]) -> None:
    """Append (seconds since start, RSS MB) every ``SAMPLE_S`` until cancelled."""
    t0 = time.monotonic()
    while True:
        samples.append((round(time.monotonic() - t0, 1), round(probe.rss_mb(), 1)))
        await asyncio.sleep(SAMPLE_S)


async def soak(minutes: float, n_streams: int) -> dict[str, Any]:
    model = ensure_models()["fp32"]
    files = make_streams(n_streams, duration_s=60.0, folder=CACHE / "streams")
    daemon = bench.Daemon(["--log-level", "info", "--model", f"m={model}"])
    rss: list[tuple[float, float]] = []
    try:
        url = await daemon.wait_ready()
        sampler = asyncio.create_task(sample_rss(daemon.probe, rss))
        result = await bench.run_streams(
            url,
            files,
            n_streams,
            realtime=True,
            duration_s=minutes * 60.0,
            probe=daemon.probe,
        )
        rss.append((rss[-1][0] + SAMPLE_S, round(daemon.probe.rss_mb(), 1)))
        sampler.cancel()
    finally:
        log_text = daemon.stop()
    bench.add_daemon_figures(result, log_text)
    early = next((mb for t, mb in rss if t >= EARLY_S), rss[0][1])
    end = rss[-1][1]
    result.pop("per_stream")
    return {
        "machine": bench.machine(),
        "command": sys.argv,
        "minutes": minutes,
        "rss_mb_at_2_min": early,
        "rss_mb_at_end": end,
        "rss_growth": round(end / early - 1.0, 4),
        "rss_mb_samples": rss,
        "bench": result,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = asyncio.run(soak(args.minutes, args.streams))
    print(bench.format_table([out["bench"]]))
    print(
        f"\nRSS at 2 min {out['rss_mb_at_2_min']} MB, after {args.minutes:g} min "
        f"{out['rss_mb_at_end']} MB: {out['rss_growth']:+.1%}"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0 if abs(out["rss_growth"]) <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())

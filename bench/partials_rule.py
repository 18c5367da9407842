"""Choose the stable-word rule of partials offline: streams replayed through the pipeline.

Usage: ``.venv/bin/python bench/partials_rule.py [--streams 16] [--duration-s 90]
[--agree 2 3 4] [--confidence 0 0.5] [--guard-ms 300] [--lookback-ms 1000] [--min-chars 1 2]
[--whole-window 0 1] [--greedy 0 1] [--model [NAME=]PATH] [--json OUT] -- FILE ...`` (every
combination of the values given)

``streamer bench --partials`` measures the rule live (real time, 16 streams, ~4 min a run); this
replays the same streams (``streamer.tools.bench_partials.stream_audio``: the files in turn
with pauses of faint noise) in process with an idle engine, so a grid of rules costs minutes:
each stream is fed in 20 ms chunks through a real ``StreamPipeline`` asking for partials, and
each partial run and each final is awaited before more audio is fed (every tick gets its
partial, nothing is pre-empted; ``partials.engine_share`` is 1, as partial runs take most of
the engine's wall time when audio comes faster than real time). A partial's time is the audio
fed when its tick fired.

Per rule (``partials.agree``, ``stable_confidence``, ``guard_ms``, ``lookback_ms``,
``stable_min_chars``, ``agree_whole_window``, ``stable_greedy``) it prints the stable words the
final contradicts (the live bench's :func:`stable_contradictions`), the final words a partial
showed as stable first, and a word's first appearance in any partial after it ended (stream
time, p50 / p95: the delay with an engine that is never busy); ``--json`` also lists each
contradicted word with the final it was read against.

Pass only files of the speakers the rule is chosen on (a validation split); report the chosen
rule once with ``streamer bench --partials`` on other speakers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.app import build_services  # noqa: E402
from streamer.audio import AudioFormat  # noqa: E402
from streamer.config import load_config  # noqa: E402
from streamer.engine.bundles import resolve_models  # noqa: E402
from streamer.streams.pipeline import StreamPipeline, stream_segmenter_config  # noqa: E402
from streamer.streams.sources import read_audio_file  # noqa: E402
from streamer.tools.bench_partials import (  # noqa: E402
    first_appearances,
    stable_before_final,
    stable_contradictions,
    stream_audio,
)

CHUNK_MS = 20


async def replay(services: Any, audio: np.ndarray, rate_hz: int) -> list[tuple[float, dict]]:
    """One stream through a pipeline asking for partials; (audio time s, event) of each event."""
    events: list[tuple[float, dict]] = []
    fed = 0

    def emit(event: Any) -> None:
        events.append((fed / rate_hz, json.loads(event.encode())))

    names = tuple(services.runner.encoders)
    pipeline = StreamPipeline(
        services,
        stream="replay",
        fmt=AudioFormat(rate_hz, "pcm_f32le", 1),
        models=names,
        segmenter=stream_segmenter_config(services, names, {}),
        emit=emit,
        want=("partial",),
    )
    step = rate_hz * CHUNK_MS // 1000
    for i in range(0, audio.size, step):
        pipeline.feed_samples(audio[i : i + step])
        fed = min(i + step, audio.size)
        assert pipeline.live is not None
        await pipeline.live.partial_done()
        await pipeline.drain()
    await pipeline.finish()
    return events


async def run_rule(
    rule: dict[str, float], audio: list[np.ndarray], rate_hz: int, models: dict[str, Path]
) -> dict[str, Any]:
    """The figures of one rule over every stream."""
    # engine_share 1: fed faster than real time, partial runs are most of the engine's time
    partials = {**rule, "engine_share": 1.0}
    overrides = {"engine": {"provider": "cpu", "intra_op_threads": 1}, "partials": partials}
    services = build_services(load_config(env=os.environ, overrides=overrides), models)
    n_stable = n_bad = n_first = n_words = 0
    delays: list[float] = []
    contradicted: list[str] = []
    try:
        for samples in audio:
            events = await replay(services, samples, rate_hz)
            n, bad = stable_contradictions(events)
            n_stable, n_bad = n_stable + n, n_bad + len(bad)
            contradicted += bad
            n_first += stable_before_final(events)
            found, words = first_appearances(events, lambda ms: ms / 1000.0)  # times: audio fed
            delays, n_words = delays + found, n_words + words
    finally:
        services.runner.close()
    return {
        **rule,
        "stable": n_stable,
        "contradicted": n_bad,
        "stable_first": n_first,
        "final_words": n_words,
        "first_p50": float(np.percentile(delays, 50)) if delays else None,
        "first_p95": float(np.percentile(delays, 95)) if delays else None,
        "contradicted_words": contradicted,
    }


def main() -> None:
    """Replay the streams under every rule of the grid; print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=90.0)
    parser.add_argument("--agree", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--confidence", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--guard-ms", type=int, nargs="+", default=[300])
    parser.add_argument("--lookback-ms", type=int, nargs="+", default=[1000])
    parser.add_argument("--min-chars", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--whole-window", type=int, nargs="+", default=[1], choices=[0, 1])
    parser.add_argument("--greedy", type=int, nargs="+", default=[1], choices=[0, 1])
    parser.add_argument(
        "--model", action="append", default=[], help="[NAME=]PATH (default: exported/)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    clips = [read_audio_file(p) for p in args.files]
    rate_hz = clips[0].rate_hz
    if any(c.rate_hz != rate_hz for c in clips):
        parser.error("files of one sample rate only")
    audio = [
        stream_audio([c.samples for c in clips], i, rate_hz=rate_hz, duration_s=args.duration_s)
        for i in range(args.streams)
    ]
    models = resolve_models(args.model)
    rows = []
    head = ["agree", "confidence", "guard ms", "lookback ms", "min chars", "whole window"]
    head += ["greedy"]
    head += ["stable words"]
    head += ["contradicted", "final words stable first", "first appearance p50 / p95 ms"]
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    grid = itertools.product(
        args.agree,
        args.confidence,
        args.guard_ms,
        args.lookback_ms,
        args.min_chars,
        args.whole_window,
        args.greedy,
    )
    for agree, conf, guard, lookback, min_chars, whole, greedy in grid:
        rule = {
            "agree": agree,
            "stable_confidence": conf,
            "guard_ms": guard,
            "lookback_ms": lookback,
            "stable_min_chars": min_chars,
            "agree_whole_window": bool(whole),
            "stable_greedy": bool(greedy),
        }
        row = asyncio.run(run_rule(rule, audio, rate_hz, models))
        rows.append(row)
        cells = [*rule.values(), row["stable"]]
        cells.append(f"{row['contradicted'] / max(row['stable'], 1):.1%} ({row['contradicted']})")
        cells.append(
            f"{row['stable_first'] / max(row['final_words'], 1):.0%} of {row['final_words']}"
        )
        cells.append(f"{row['first_p50']:.0f} / {row['first_p95']:.0f}")
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

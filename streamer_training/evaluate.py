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
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
import soxr

if TYPE_CHECKING:
    from streamer.heads import Classification

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
    """Read an audio file (WAV, FLAC) as float32 mono 16 kHz (other rates resampled with soxr).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
    """
    if not path.exists():
        raise FileNotFoundError(f"missing audio file: {path}")
    audio, rate_hz = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate_hz != SAMPLE_RATE_HZ:
        mono = soxr.resample(mono, rate_hz, SAMPLE_RATE_HZ)
    return np.asarray(mono, dtype=np.float32)


@dataclass(frozen=True)
class Transcripts:
    """One utterance's transcripts: the daemon's, the free search's, greedy decoding's."""

    daemon: str
    free: str
    greedy: str


class Bundle:
    """An exported bundle run with onnxruntime on the CPU."""

    def __init__(self, bundle_dir: Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        from streamer.ctc import CtcBeamDecoder, CtcGreedyDecoder
        from streamer.decoding import OutputDecoder
        from streamer.engine.bundles import load_manifest

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
        self.held = (
            OutputDecoder(self.manifest, bundle_dir=bundle_dir, ctc="greedy") if is_ctc else None
        )
        """Reads the grammar-held transcripts (its free search is never used)."""
        self.beam_s: list[float] = []
        """Seconds of each beam search so far."""
        self.loop_s: list[float] = []
        """Seconds of each word-list search so far."""

    def run(self, audio: np.ndarray) -> list[np.ndarray]:
        """Run one utterance (padded with zeros up to ``min_samples``); return every output."""
        if len(audio) < self.min_samples:
            audio = np.pad(audio, (0, self.min_samples - len(audio)))
        out: list[np.ndarray] = self.session.run(None, {"input_values": audio[None, :]})
        return out

    def transcribe(self, audio: np.ndarray, *, intent: str | None = None) -> Transcripts:
        """CTC transcripts (ctc bundles) of one utterance whose intent is ``intent``.

        The free search is beam search with the bundle's LM when it ships one, else greedy.
        The daemon's transcript is the free one unless the bundle has a grammar for ``intent``.
        """
        from streamer.protocol import Intent

        if self.greedy is None or self.held is None:
            raise ValueError(f"transcribe needs a ctc bundle, not {self.manifest.task}")
        logits = self.run(audio)[0][0]
        greedy = self.greedy.decode(logits).text
        free = greedy
        if self.beam is not None:
            start = time.perf_counter()
            free = self.beam.decode(logits).text
            self.beam_s.append(time.perf_counter() - start)
        label = None if intent is None else Intent(intent, 1.0)
        if self.held.grammar_for(label) is None:
            return Transcripts(free, free, greedy)
        start = time.perf_counter()
        held = self.held.transcribe(logits, 0.0, intent=label).text
        self.loop_s.append(time.perf_counter() - start)
        return Transcripts(held, free, greedy)

    def classify(self, audio: np.ndarray, *, abstain_below: float) -> Classification:
        """Labels of every label set (classify bundles), decoded as the daemon decodes them."""
        from streamer.heads import IntentDecoder

        decoder = IntentDecoder(self.manifest, abstain_below=abstain_below)
        outputs = {
            o.name: v[0] for o, v in zip(self.manifest.outputs, self.run(audio), strict=True)
        }
        return decoder.decode(outputs)

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
    intents: dict[str, list[str | None]] | None = None,
) -> dict[str, Any]:
    """WER / exact match per set, and each real recording's transcript.

    ``intents`` holds the intent model's label for each item of each set (and, under
    ``"real"``, of each recording), as the daemon would pass it (None: abstained); the daemon's
    transcript is held to the bundle's grammar for that intent. ``wer_free``/``exact_free`` are
    the free search.
    """
    intents = intents or {}
    result: dict[str, Any] = {"sets": {}, "real": []}
    for name, items in sets.items():
        bundle.beam_s.clear()
        if name == "fsdd_heldout_strings":
            bundle.loop_s.clear()
        labels: list[str | None] = [*intents.get(name, [None] * len(items))]
        found = [bundle.transcribe(a, intent=i) for (a, _), i in zip(items, labels, strict=True)]
        if name == "synth_heldout_voices" and bundle.beam is not None:
            result["beam_width"] = bundle.beam.beam_width
            result["synth_mean_s"] = float(np.mean([len(a) for a, _ in items])) / SAMPLE_RATE_HZ
            result["beam_ms_median"] = 1000 * float(np.median(bundle.beam_s))
            result["beam_ms_p95"] = 1000 * float(np.percentile(bundle.beam_s, 95))
        if name == "fsdd_heldout_strings" and bundle.loop_s:
            result["word_list_ms_median"] = 1000 * float(np.median(bundle.loop_s))
            result["word_list_ms_p95"] = 1000 * float(np.percentile(bundle.loop_s, 95))
        hyps = [t.daemon for t in found]
        free = [t.free for t in found]
        greedy = [t.greedy for t in found]
        refs = [t for _, t in items]
        result["sets"][name] = {
            "n": len(items),
            "wer": word_error_rate(refs, hyps),
            "exact": _exact(refs, hyps),
            "wer_free": word_error_rate(refs, free),
            "exact_free": _exact(refs, free),
            "wer_greedy": word_error_rate(refs, greedy),
            "exact_greedy": _exact(refs, greedy),
            "changed_by_grammar": sum(h != f for h, f in zip(hyps, free, strict=True)),
            "examples": [
                {"ref": r, "hyp": h, "free": f, "greedy": g}
                for r, h, f, g in list(zip(refs, hyps, free, greedy, strict=True))[:6]
            ],
        }
    real_labels: list[str | None] = [*intents.get("real", [None] * len(real))]
    for (file, audio, ref), label in zip(real, real_labels, strict=True):
        t = bundle.transcribe(audio, intent=label)
        result["real"].append(
            {
                "file": file,
                "ref": ref,
                "intent": label,
                "hyp": t.daemon,
                "wer": word_error_rate([ref], [t.daemon]),
                "free": t.free,
                "wer_free": word_error_rate([ref], [t.free]),
                "greedy": t.greedy,
                "wer_greedy": word_error_rate([ref], [t.greedy]),
            }
        )
    return result


def evaluate_intent(
    bundle: Bundle,
    sets: dict[str, list[tuple[np.ndarray, str, str]]],
    real: list[tuple[str, np.ndarray, str, str]],
    *,
    abstain_below: float,
) -> dict[str, Any]:
    """Intent and room accuracy per set, and each real recording's labels.

    Under ``"daemon_intents"`` (set name, and ``"real"``): the intent the daemon passes on to a
    ctc bundle for each item, None where it abstains (below ``abstain_below``).
    """
    result: dict[str, Any] = {"sets": {}, "real": [], "daemon_intents": {}}

    def labels(audio: np.ndarray) -> tuple[tuple[str, ...], str | None]:
        found = bundle.classify(audio, abstain_below=abstain_below)
        names = (found.intent.name, *(label.name for label in found.labels))
        return names, None if found.intent.abstain else found.intent.name

    for name, items in sets.items():
        found = [labels(a) for a, _, _ in items]
        preds = [names for names, _ in found]
        result["daemon_intents"][name] = [daemon for _, daemon in found]
        result["sets"][name] = {
            "n": len(items),
            "intent_acc": float(
                np.mean([p[0] == i for p, (_, i, _) in zip(preds, items, strict=True)])
            ),
            "room_acc": float(
                np.mean([p[1] == r for p, (_, _, r) in zip(preds, items, strict=True)])
            ),
        }
    result["daemon_intents"]["real"] = []
    for file, audio, intent, room in real:
        pred, daemon = labels(audio)
        result["daemon_intents"]["real"].append(daemon)
        result["real"].append(
            {
                "file": file,
                "expected": [intent, room],
                "got": list(pred),
                "ok": pred[0] == intent and pred[1] == room,
            }
        )
    return result

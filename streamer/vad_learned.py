"""A learned frame detector: webrtcvad's verdict and log-mel energies through a small GRU (numpy).

:class:`LearnedVad` scores each 30 ms frame with a recurrent network trained on real speech of
many speakers in real noise (``streamer_training/train_vad.py``; its card is
``streamer/models/VAD_CARD.md``). It needs no learnt noise floor before it can decide: the
absolute levels and spectra are inputs beside the levels over the floor, so a stream that starts
inside speech is scored like any other (no start-of-stream revision). The truth it was trained
on is the speech extent rule of the shared segmentation streams (breaths before an utterance are
not speech); :class:`~streamer.segmenter.Segmenter` reads its scores with the usual hysteresis.

One rule is hand-written (the shape gate, ``GATE_*``): at a stream's first frames the network
has no floor to compare with, and a loud tone sweep or rumble that opens a stream looks like the
speech level it was trained on. So a frame whose spectrum is not speech-shaped (energy in fewer
than three mel bands, or all of it below 240 Hz) scores at most the keep threshold: it may keep
an utterance open but never start one. Speech, whose harmonics and formants spread over many
bands above 240 Hz, passes; so does broadband noise, which the network's own inputs handle. The
gate holds for every frame, not only a stream's first seconds: on the tuning part both scored
the same, and a tone is no more speech later on.

Inputs per frame (:func:`frame_features`): 24 log-mel energies (dB, 30 ms Hann window), the
frame's log energy, webrtcvad's verdict (mode 3), and the 24 energies over their floor (the
lowest 150 ms average of the last 1.5 s: what absolute levels cannot tell, that a loud steady
noise is steady), normalised with the training set's mean and standard deviation. Network: a
dense layer (ReLU), one GRU layer, a logistic output. The weights are a ``.npz`` of float32
arrays named like the torch modules they came from; the runtime needs numpy only.
"""

from __future__ import annotations

import math
from collections import deque
from functools import lru_cache
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import webrtcvad

from streamer.audio import float_to_pcm16
from streamer.errors import ConfigError
from streamer.vad import SAMPLE_RATE_HZ, VadThresholds

#: Samples per frame the network was trained on (30 ms).
FRAME_SAMPLES: Final = 480
N_FFT: Final = 512
N_MELS: Final = 24
MEL_RANGE_HZ: Final = (80.0, 7600.0)
#: Feature vector width: mel bands, log energy, webrtcvad verdict, mel bands over their floor.
N_FEATURES: Final = 2 * N_MELS + 2
#: The floor: the lowest mel energies, averaged over 5 frames, within the last 50 (1.5 s).
FLOOR_SMOOTH_FRAMES: Final = 5
FLOOR_WINDOW_FRAMES: Final = 50
#: The shape gate: a frame may score above the keep threshold (so start an utterance) only when
#: at least GATE_BANDS of its mel bands lie within GATE_SPREAD_DB of its loudest (a pure tone or
#: a sweep lights one or two) and its loudest band from GATE_LOW_BAND on (239 Hz up) lies within
#: GATE_LOW_DB of its loudest (rumble is all below). Chosen on the segmentation tuning part.
GATE_BANDS: Final = 3
GATE_SPREAD_DB: Final = 20.0
GATE_LOW_BAND: Final = 2
GATE_LOW_DB: Final = 14.0
#: The shipped weights.
DEFAULT_MODEL: Final = Path(__file__).resolve().parent / "models" / "vad_gru.npz"
_WEIGHTS: Final = (
    "norm_mean",
    "norm_std",
    "inp.weight",
    "inp.bias",
    "gru.weight_ih_l0",
    "gru.weight_hh_l0",
    "gru.bias_ih_l0",
    "gru.bias_hh_l0",
    "out.weight",
    "out.bias",
)


def _mel_filterbank() -> npt.NDArray[np.float64]:
    """Triangular mel filters, (N_FFT // 2 + 1, N_MELS), HTK mel scale."""

    def mel(f: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    low, high = mel(np.array(MEL_RANGE_HZ))
    points = 700.0 * (10.0 ** (np.linspace(low, high, N_MELS + 2) / 2595.0) - 1.0)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE_HZ)
    bank = np.zeros((freqs.size, N_MELS))
    for m in range(N_MELS):
        a, c, b = points[m], points[m + 1], points[m + 2]
        rising = (freqs - a) / (c - a)
        falling = (b - freqs) / (b - c)
        bank[:, m] = np.clip(np.minimum(rising, falling), 0.0, None)
    return bank


_MEL: Final = _mel_filterbank()
_WINDOW: Final = np.hanning(FRAME_SAMPLES)


def frame_features(
    frames: npt.NDArray[np.float32], webrtc_speech: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Raw (unnormalised) features of a stream's first ``frames`` (n, 480) and verdicts (n,).

    ``webrtc_speech`` holds webrtcvad's verdicts (1.0 speech). The trainer calls this on whole
    examples; the runtime keeps the same quantities frame by frame in :class:`FeatureTracker`
    (a test holds them equal).
    """
    mel_db, energy_db = _spectral(frames)
    n = mel_db.shape[0]
    csum = np.cumsum(np.vstack((np.zeros((1, N_MELS)), mel_db)), axis=0)
    idx = np.arange(1, n + 1)
    lo = np.maximum(0, idx - FLOOR_SMOOTH_FRAMES)
    smooth = (csum[idx] - csum[lo]) / (idx - lo)[:, None]
    padded = np.vstack((np.full((FLOOR_WINDOW_FRAMES - 1, N_MELS), np.inf), smooth))
    windows = np.lib.stride_tricks.sliding_window_view(padded, FLOOR_WINDOW_FRAMES, axis=0)
    floor = windows.min(axis=2)
    return _assemble(mel_db, energy_db, webrtc_speech.astype(np.float64), floor)


def _spectral(
    frames: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    x = frames.astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(x * _WINDOW, N_FFT, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    mel_db = 10.0 * np.log10(power @ _MEL + 1e-10)
    energy_db = 10.0 * np.log10((x**2).mean(axis=1) + 1e-10)
    return mel_db, energy_db


def _assemble(
    mel_db: npt.NDArray[np.float64],
    energy_db: npt.NDArray[np.float64],
    webrtc: npt.NDArray[np.float64],
    floor: npt.NDArray[np.float64],
) -> npt.NDArray[np.float32]:
    return np.concatenate(
        (mel_db, energy_db[:, None], webrtc[:, None], mel_db - floor), axis=1
    ).astype(np.float32)


class FeatureTracker:
    """:func:`frame_features` one frame at a time (holds the floor's recent history)."""

    def __init__(self) -> None:
        """Start a stream: no history."""
        self._recent: deque[npt.NDArray[np.float64]] = deque(maxlen=FLOOR_SMOOTH_FRAMES)
        self._smoothed = np.full((FLOOR_WINDOW_FRAMES, N_MELS), np.inf)
        self._n = 0
        self._webrtc = webrtcvad.Vad(3)

    def __call__(self, frame: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Features of the next 480-sample frame."""
        frames = frame[None, :]
        mel_db, energy_db = _spectral(frames)
        self._recent.append(mel_db[0])
        self._smoothed[self._n % FLOOR_WINDOW_FRAMES] = np.mean(self._recent, axis=0)
        self._n += 1
        floor = self._smoothed.min(axis=0)[None, :]
        speech = float(self._webrtc.is_speech(float_to_pcm16(frame), SAMPLE_RATE_HZ))
        row: npt.NDArray[np.float32] = _assemble(mel_db, energy_db, np.array([speech]), floor)[0]
        return row


def webrtc_verdicts(
    frames: npt.NDArray[np.float32], vad: webrtcvad.Vad | None = None
) -> npt.NDArray[np.float32]:
    """Return webrtcvad's verdict (mode 3) on each 30 ms frame: 1.0 speech, 0.0 not."""
    vad = vad or webrtcvad.Vad(3)
    return np.array(
        [vad.is_speech(float_to_pcm16(f), SAMPLE_RATE_HZ) for f in frames], dtype=np.float32
    )


@lru_cache(maxsize=4)
def load_weights(path: Path) -> dict[str, npt.NDArray[np.float32]]:
    """The network's arrays from ``path``; ConfigError naming the file when one is missing."""
    try:
        with np.load(path) as archive:
            weights = {name: archive[name].astype(np.float32) for name in archive.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"vad model {path}: cannot read ({exc})") from None
    missing = [name for name in _WEIGHTS if name not in weights]
    if missing:
        raise ConfigError(f"vad model {path}: missing arrays {', '.join(missing)}")
    hidden = weights["gru.weight_hh_l0"].shape[1]
    if weights["norm_mean"].shape != (N_FEATURES,) or weights["gru.weight_hh_l0"].shape != (
        3 * hidden,
        hidden,
    ):
        raise ConfigError(f"vad model {path}: arrays of unexpected shapes")
    return weights


def _sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Logistic function; clipped so that no input overflows ``exp``."""
    out: npt.NDArray[np.float32] = (1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))).astype(
        np.float32
    )
    return out


class LearnedVad:
    """The learned detector (see the module docstring); one per stream, holds the GRU state."""

    def __init__(self, *, frame_ms: int = 30, model: Path | None = None) -> None:
        """Load the weights (cached per file); ConfigError for another frame size or a bad file."""
        if frame_ms != 30:
            raise ConfigError(f"vad 'learned' scores 30 ms frames, got frame_ms {frame_ms}")
        w = load_weights(model or DEFAULT_MODEL)
        self._mean, self._scale = w["norm_mean"], 1.0 / w["norm_std"]
        self._w_in, self._b_in = w["inp.weight"].T.copy(), w["inp.bias"]
        self._w_ih, self._b_ih = w["gru.weight_ih_l0"].T.copy(), w["gru.bias_ih_l0"]
        self._w_hh, self._b_hh = w["gru.weight_hh_l0"].T.copy(), w["gru.bias_hh_l0"]
        self._w_out, self._b_out = w["out.weight"][0], float(w["out.bias"][0])
        self._hidden = self._w_hh.shape[0]
        self._h = np.zeros(self._hidden, dtype=np.float32)
        self._features = FeatureTracker()
        self._gate_cap = self.thresholds.keep

    @property
    def frame_samples(self) -> int:
        """Samples per frame: 480 (30 ms)."""
        return FRAME_SAMPLES

    @property
    def thresholds(self) -> VadThresholds:
        """Defaults chosen on the tuning part of bench/segmentation.py (bench/RESULTS.md).

        High on purpose: they were chosen for the previous network, whose score fell slowly
        after speech (a keep threshold of 0.5 held utterances open through noise), and kept for
        the retrained one (0.7 / 0.7 / 0.6 cut its tuning streams worse: 0.890 / 0.853). The
        onset (how weak a frame before the confident run may be and still move the start back)
        is lower: the truth's starts lie on soft onsets the network scores 0.4-0.7.
        """
        return VadThresholds(start=0.8, keep=0.75, edge=0.7, onset=0.4)

    def score(self, frame: npt.NDArray[np.float32]) -> float:
        """Return the next frame's speech probability (at most keep when the gate says no)."""
        feats = self._features(frame)
        mel_db = feats[:N_MELS]
        loudest = float(mel_db.max())
        shaped = (
            int(np.count_nonzero(mel_db >= loudest - GATE_SPREAD_DB)) >= GATE_BANDS
            and float(mel_db[GATE_LOW_BAND:].max()) >= loudest - GATE_LOW_DB
        )
        x = np.maximum((feats - self._mean) * self._scale @ self._w_in + self._b_in, 0.0)
        h, n = self._h, self._hidden
        gi = x @ self._w_ih + self._b_ih
        gh = h @ self._w_hh + self._b_hh
        r = _sigmoid(gi[:n] + gh[:n])
        z = _sigmoid(gi[n : 2 * n] + gh[n : 2 * n])
        cand = np.tanh(gi[2 * n :] + r * gh[2 * n :])
        self._h = h = ((1.0 - z) * cand + z * h).astype(np.float32)
        logit = min(60.0, max(-60.0, float(h @ self._w_out) + self._b_out))
        probability = 1.0 / (1.0 + math.exp(-logit))
        return probability if shaped else min(probability, self._gate_cap)

    def revised_start_scores(self) -> list[float] | None:
        """Always None: the network needs no noise floor, its first scores stand."""
        return None

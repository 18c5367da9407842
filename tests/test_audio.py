"""Audio formats: PCM decoding, validation and chunking-invariant resampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from streamer.audio import AudioConverter, AudioFormat, float_to_pcm16, pcm_to_float
from streamer.errors import AudioFormatError


def test_pcm16_round_trip() -> None:
    """16-bit PCM decodes to the float values it encodes."""
    x = np.linspace(-1, 0.99, 1000, dtype=np.float32)
    y = pcm_to_float(float_to_pcm16(x), AudioFormat(16000))
    assert np.abs(x - y).max() < 1 / 16000


def test_stereo_is_averaged_and_f32_is_sanitised() -> None:
    """Stereo float frames are averaged to mono; NaN and out-of-range values are neutralised."""
    frames = np.array([[0.5, -0.5], [1.0, 1.0], [np.nan, 0.0], [4.0, 4.0]], dtype="<f4")
    y = pcm_to_float(frames.tobytes(), AudioFormat(16000, "pcm_f32le", 2))
    assert y.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_odd_byte_count_is_rejected() -> None:
    """A chunk that is not a whole number of sample frames raises AudioFormatError."""
    with pytest.raises(AudioFormatError, match="whole number"):
        pcm_to_float(b"\x00\x01\x02", AudioFormat(16000))
    with pytest.raises(AudioFormatError):
        pcm_to_float(b"\x00" * 6, AudioFormat(16000, "pcm_f32le"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate_hz": 100}, "sample rate"),
        ({"rate_hz": 16000, "encoding": "mp3"}, "encoding"),
        ({"rate_hz": 16000, "channels": 3}, "channel"),
    ],
)
def test_bad_formats_are_refused(kwargs: dict[str, object], message: str) -> None:
    """Unsupported rates, encodings and channel counts are refused with a clear message."""
    with pytest.raises(AudioFormatError, match=message):
        AudioFormat(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=9600), max_size=6))
def test_resampling_does_not_depend_on_chunking(cuts: list[int]) -> None:
    """44.1 kHz audio resampled to 16 kHz is identical however it was split into chunks."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=9600) * 0.1).astype(np.float32)
    data = float_to_pcm16(x)
    fmt = AudioFormat(44100)
    whole = AudioConverter(fmt, target_rate_hz=16000)
    expected = np.concatenate([whole.convert(data), whole.finish()])
    conv = AudioConverter(fmt, target_rate_hz=16000)
    bounds = [0, *sorted(c * 2 for c in cuts), len(data)]
    parts = [conv.convert(data[a:b]) for a, b in itertools.pairwise(bounds)]
    got = np.concatenate([*parts, conv.finish()])
    np.testing.assert_array_equal(got, expected)
    assert abs(len(got) - round(len(x) * 16000 / 44100)) <= 1

"""Audio formats: the one format table, PCM decoding, validation and resampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from streamer.audio import (
    ENCODINGS,
    INT_ENCODINGS,
    AudioConverter,
    AudioFormat,
    downmix,
    float_to_pcm16,
    pcm_to_float,
    quiet_lead_in,
)
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
        ({"rate_hz": 16000, "channels": 0}, "channel"),
        ({"rate_hz": 16000.0}, "sample rate"),
        ({"rate_hz": True}, "sample rate"),
        ({"rate_hz": 16000, "channels": "2"}, "channel"),
        ({"rate_hz": 16000, "encoding": ["pcm_s16le"]}, "encoding"),
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


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_integer_widths_decode_to_the_same_floats(width: int, channels: int) -> None:
    """Signed little-endian PCM of 1-4 bytes decodes exactly; channels are averaged."""
    values = np.array([0.0, 0.5, -0.5, -1.0])
    ints = (values * 2 ** (8 * width - 1)).astype(np.int64)
    raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints)
    fmt = AudioFormat.from_width(16000, width, channels)
    assert fmt.encoding == INT_ENCODINGS[width]
    assert (fmt.width, fmt.frame_bytes) == (width, width * channels)
    expected = values if channels == 1 else values.reshape(-1, 2).mean(axis=1)
    got = pcm_to_float(raw, fmt)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_24_bit_samples_are_sign_extended() -> None:
    """The smallest 24-bit value is -1 and the largest just under 1."""
    raw = (-(2**23)).to_bytes(3, "little", signed=True) + (2**23 - 1).to_bytes(3, "little")
    got = pcm_to_float(raw, AudioFormat(8000, "pcm_s24le"))
    np.testing.assert_array_equal(got, np.array([-1.0, (2**23 - 1) / 2**23], dtype=np.float32))


def test_every_encoding_decodes_a_frame() -> None:
    """Each encoding of the table reads one frame of silence as one zero sample."""
    for name, encoding in ENCODINGS.items():
        got = pcm_to_float(b"\0" * encoding.width * 2, AudioFormat(16000, name, 2))
        assert got.tolist() == [0.0], name


@pytest.mark.parametrize(
    ("rate_hz", "width", "channels", "message"),
    [
        (16000, 5, 1, "sample width"),
        (16000, 0, 1, "sample width"),
        (16000, True, 1, "sample width"),
        (16000, "2", 1, "sample width"),
        (1000, 2, 1, "sample rate"),
        ("16000", 2, 1, "sample rate"),
        (16000, 2, 3, "channel"),
        (16000, 2, 32, "channel"),
        (16000, 2, None, "channel"),
    ],
)
def test_wire_widths_are_checked(
    rate_hz: object, width: object, channels: object, message: str
) -> None:
    """from_width takes unchecked wire values and refuses what the one rule refuses."""
    with pytest.raises(AudioFormatError, match=message):
        AudioFormat.from_width(rate_hz, width, channels)


def test_downmix_averages_into_a_new_array() -> None:
    """downmix averages channels to float32 and never returns a view of its input."""
    frames = np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float64)
    mono = downmix(frames)
    assert mono.dtype == np.float32
    assert mono.tolist() == [0.5, 0.5]
    single = np.ones((3, 1), dtype=np.float32)
    out = downmix(single)
    single[:] = 0
    assert out.tolist() == [1.0, 1.0, 1.0]


def test_quiet_lead_in_repeats_the_files_quietest_stretch() -> None:
    rng = np.random.default_rng(0)
    loud = (rng.standard_normal(8000) * 0.3).astype(np.float32)
    hum = (0.001 * np.sin(np.arange(3200) * 0.05)).astype(np.float32)  # 200 ms, the quietest
    x = np.concatenate([loud, hum, loud])
    lead = quiet_lead_in(x, rate_hz=16000, seconds=1.0)
    assert lead.dtype == np.float32
    assert lead.size == 16000
    assert np.abs(lead).max() <= 0.001  # all of it from the quiet 200 ms, none from the noise
    assert np.sqrt(np.mean(lead**2)) > 0.0005  # the stretch itself, not silence
    # a file shorter than the 150 ms window is its own stretch; nothing in, nothing out
    short = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    np.testing.assert_array_equal(
        quiet_lead_in(short, rate_hz=16000, seconds=0.0005), np.tile(short, 3)[:8]
    )
    assert quiet_lead_in(short, rate_hz=16000, seconds=0.0).size == 0
    assert quiet_lead_in(np.zeros(0, np.float32), rate_hz=16000, seconds=1.0).size == 0


def test_no_lead_in_for_a_file_that_starts_in_its_own_quiet() -> None:
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(16000) * 0.01).astype(np.float32)
    word = (rng.standard_normal(4800) * 0.3).astype(np.float32)
    starts_quiet = np.concatenate([noise, word, noise])
    assert quiet_lead_in(starts_quiet, rate_hz=16000, seconds=1.0, min_rise_db=6.0).size == 0
    starts_loud = np.concatenate([word, noise])
    assert quiet_lead_in(starts_loud, rate_hz=16000, seconds=1.0, min_rise_db=6.0).size == 16000

"""Audio formats: one table of PCM encodings and limits, one decoder, streaming resampling.

Pure (no I/O). Every endpoint describes the audio it receives with one :class:`AudioFormat`
and every source (microphone, WebSocket, Wyoming, file) turns its bytes or arrays into float32
mono samples through :func:`pcm_to_float` / :func:`downmix` and :class:`AudioConverter`, so a
format bug fixed here is fixed for all of them.

The rules are the same for every endpoint:

- rate: :data:`MIN_RATE_HZ` to :data:`MAX_RATE_HZ` (8-192 kHz), resampled to the model rate;
- encoding: any of :data:`ENCODINGS`, interleaved little-endian PCM. The WebSocket ``start``
  message names the encoding; Wyoming gives a sample width in bytes, read as the signed integer
  encoding of that width (:meth:`AudioFormat.from_width`, the ``audioop`` convention);
- channels: :data:`CHANNELS` (1 or 2), averaged to mono. Wyoming used to take up to 32; it now
  follows the WebSocket rule, since every Wyoming client sends mono and a single limit cannot
  drift between endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

import numpy as np
import numpy.typing as npt
import soxr

from streamer.errors import AudioFormatError
from streamer.wire import quote

F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Encoding:
    """One PCM sample encoding.

    Attributes:
        width: bytes per sample (of one channel).
        dtype: the numpy dtype of one sample; None for 24-bit, which numpy has no type for.
        is_float: IEEE float samples in [-1, 1] rather than signed integers.
    """

    width: int
    dtype: str | None
    is_float: bool = False


#: Every sample encoding streamer reads, by wire name.
ENCODINGS: Final[dict[str, Encoding]] = {
    "pcm_s8": Encoding(1, "i1"),
    "pcm_s16le": Encoding(2, "<i2"),
    "pcm_s24le": Encoding(3, None),
    "pcm_s32le": Encoding(4, "<i4"),
    "pcm_f32le": Encoding(4, "<f4", is_float=True),
}
#: The signed integer encoding of each sample width in bytes (Wyoming's ``width``).
INT_ENCODINGS: Final[dict[int, str]] = {
    enc.width: name for name, enc in ENCODINGS.items() if not enc.is_float
}
MIN_RATE_HZ: Final = 8_000
MAX_RATE_HZ: Final = 192_000
#: Interleaved channel counts accepted (all are averaged to mono).
CHANNELS: Final = (1, 2)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class AudioFormat:
    """The format of incoming PCM: rate, sample encoding and interleaved channel count.

    Raises:
        AudioFormatError: a field is of the wrong type or outside the limits of this module.
    """

    rate_hz: int
    encoding: str = "pcm_s16le"
    channels: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.encoding, str) or self.encoding not in ENCODINGS:
            raise AudioFormatError(
                f"unsupported encoding {quote(self.encoding)} (supported: {', '.join(ENCODINGS)})"
            )
        if not (_is_int(self.rate_hz) and MIN_RATE_HZ <= self.rate_hz <= MAX_RATE_HZ):
            raise AudioFormatError(
                f"unsupported sample rate {quote(self.rate_hz)} Hz "
                f"(supported: {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz)"
            )
        if not (_is_int(self.channels) and self.channels in CHANNELS):
            raise AudioFormatError(
                f"unsupported channel count {quote(self.channels)} "
                f"(supported: {CHANNELS[0]}-{CHANNELS[-1]})"
            )

    @classmethod
    def from_width(cls, rate_hz: object, width: object, channels: object) -> AudioFormat:
        """Return the format of signed little-endian integer PCM of ``width`` bytes a sample.

        Arguments are checked at run time, so unvalidated wire values may be passed.

        Raises:
            AudioFormatError: the width is not 1-4 bytes, or the rate or channels are refused.
        """
        encoding = INT_ENCODINGS.get(cast(int, width)) if _is_int(width) else None
        if encoding is None:
            raise AudioFormatError(
                f"unsupported sample width {quote(width)} bytes "
                f"(supported: {min(INT_ENCODINGS)}-{max(INT_ENCODINGS)})"
            )
        return cls(cast(int, rate_hz), encoding, cast(int, channels))

    @property
    def width(self) -> int:
        """Bytes per sample of one channel."""
        return ENCODINGS[self.encoding].width

    @property
    def frame_bytes(self) -> int:
        """Bytes per multi-channel sample frame; every chunk must be a multiple of this."""
        return self.width * self.channels


def downmix(frames: npt.NDArray[np.floating]) -> F32Array:
    """Average the channels of ``(n_frames, n_channels)`` samples into a new float32 mono array."""
    mono: F32Array = frames.mean(axis=1, dtype=np.float32)
    return mono


def _decode_samples(data: bytes, encoding: Encoding) -> F32Array:
    """Read interleaved samples of one encoding as float32 in [-1, 1]."""
    if encoding.is_float:
        floats = np.frombuffer(data, dtype=encoding.dtype).astype(np.float32)
        floats = np.nan_to_num(floats, nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(floats, -1.0, 1.0, out=floats)
        return floats
    scale = float(1 << (8 * encoding.width - 1))
    if encoding.dtype is not None:
        ints: F32Array = np.frombuffer(data, dtype=encoding.dtype).astype(np.float32)
        return ints / scale
    # 24-bit: place each sample in the top bytes of an int32, which sign-extends it.
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, encoding.width)
    wide = np.zeros((raw.shape[0], 4), dtype=np.uint8)
    wide[:, 4 - encoding.width :] = raw
    shifted: F32Array = wide.view("<i4")[:, 0].astype(np.float32)
    return shifted / float(1 << 31)


def pcm_to_float(data: bytes, fmt: AudioFormat) -> F32Array:
    """Decode interleaved PCM bytes to float32 mono in [-1, 1] at the format's own rate.

    Channels are averaged. Non-finite float samples become 0 and all values are clipped to
    [-1, 1], so a hostile client cannot push NaN into the model.

    Raises:
        AudioFormatError: the byte count is not a whole number of sample frames.
    """
    if len(data) % fmt.frame_bytes:
        raise AudioFormatError(
            f"{len(data)} bytes is not a whole number of {fmt.frame_bytes}-byte sample frames "
            f"({fmt.encoding}, {fmt.channels} channel(s))"
        )
    samples = _decode_samples(data, ENCODINGS[fmt.encoding])
    if fmt.channels > 1:
        samples = downmix(samples.reshape(-1, fmt.channels))
    return samples


def float_to_pcm16(samples: F32Array) -> bytes:
    """Encode float32 mono in [-1, 1] as little-endian 16-bit PCM (for clients and tests)."""
    clipped = np.clip(samples, -1.0, 32767 / 32768)
    return (clipped * 32768.0).astype("<i2").tobytes()


class AudioConverter:
    """Stateful converter from one stream's PCM chunks to float32 mono at ``target_rate_hz``.

    Call contract: feed every chunk of the stream in order to :meth:`convert`, then call
    :meth:`finish` once at the end of the stream to get the resampler's tail. The output does not
    depend on how the input was split into chunks (soxr's streaming resampler keeps the state).
    """

    def __init__(self, fmt: AudioFormat, *, target_rate_hz: int) -> None:
        self.format = fmt
        self.target_rate_hz = target_rate_hz
        self._resampler: soxr.ResampleStream | None = None
        if fmt.rate_hz != target_rate_hz:
            self._resampler = soxr.ResampleStream(fmt.rate_hz, target_rate_hz, 1, dtype="float32")

    def convert(self, data: bytes) -> F32Array:
        """Decode and resample one chunk; may return fewer samples than a full chunk's worth."""
        return self.resample(pcm_to_float(data, self.format))

    def resample(self, samples: F32Array) -> F32Array:
        """Resample float32 mono samples already decoded at the input rate."""
        if self._resampler is None:
            return samples
        out: F32Array = self._resampler.resample_chunk(samples)
        return out

    def finish(self) -> F32Array:
        """Flush the resampler's delay line at the end of the stream."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        out: F32Array = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return out


def quiet_lead_in(
    samples: F32Array,
    *,
    rate_hz: int,
    seconds: float,
    min_rise_db: float = 0.0,
    window_ms: int = 150,
    search_ms: int = 1500,
) -> F32Array:
    """``seconds`` of a file's quietest ``window_ms`` stretch near its start, repeated.

    What the file sounds like when nobody speaks, to be heard before it
    (``segmenter.file_lead_in_ms``). A file whose first sample is already speech (a trimmed clip)
    gives a live segmenter no silence to learn its noise floor from; a file can be read ahead,
    so the quietest stretch of its first ``search_ms`` (the floor's window, where a live
    segmenter would look too) stands in for the silence before it. A noise-only file's quietest
    stretch is its noise, so its lead-in opens nothing. Files shorter than the window are their
    own stretch. Empty output when the input is empty, ``seconds <= 0``, or the file's first
    ``window_ms`` are less than ``min_rise_db`` louder than that stretch (the file starts in its
    own quiet, from which a live segmenter learns the floor anyway).
    """
    x = np.asarray(samples, dtype=np.float32)
    n_out = round(seconds * rate_hz)
    if x.size == 0 or n_out <= 0:
        return np.zeros(0, dtype=np.float32)
    window = max(1, rate_hz * window_ms // 1000)
    stretch = x
    if x.size > window:
        hop = max(1, rate_hz // 100)  # 10 ms
        power = np.cumsum(np.concatenate(([0.0], x.astype(np.float64) ** 2)))
        last = min(x.size - window, max(0, rate_hz * search_ms // 1000 - window))
        starts = np.arange(0, last + 1, hop)
        energy = power[starts + window] - power[starts]
        quietest = int(np.argmin(energy))
        rise_db = 10.0 * np.log10((energy[0] + 1e-12) / (energy[quietest] + 1e-12))
        if rise_db < min_rise_db:
            return np.zeros(0, dtype=np.float32)
        stretch = x[starts[quietest] : starts[quietest] + window]
    reps = -(-n_out // stretch.size)
    return np.tile(stretch, reps)[:n_out].astype(np.float32)

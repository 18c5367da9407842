"""Audio formats: PCM bytes to float32 mono, and streaming resampling to the model rate.

Pure (no I/O): every source (microphone, WebSocket, file) turns its bytes or arrays into float32
mono samples at the model rate through :class:`AudioConverter`, so a format bug fixed here is fixed
for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr

from streamer.errors import AudioFormatError

ENCODINGS: Final = ("pcm_s16le", "pcm_f32le")
_WIDTH: Final = {"pcm_s16le": 2, "pcm_f32le": 4}
MIN_RATE_HZ: Final = 8_000
MAX_RATE_HZ: Final = 192_000
MAX_CHANNELS: Final = 2

F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AudioFormat:
    """The format of incoming PCM: rate, sample encoding and interleaved channel count."""

    rate_hz: int
    encoding: str = "pcm_s16le"
    channels: int = 1

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise AudioFormatError(
                f"unsupported encoding {self.encoding!r} (supported: {', '.join(ENCODINGS)})"
            )
        if not MIN_RATE_HZ <= self.rate_hz <= MAX_RATE_HZ:
            raise AudioFormatError(
                f"unsupported sample rate {self.rate_hz} Hz "
                f"(supported: {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz)"
            )
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise AudioFormatError(
                f"unsupported channel count {self.channels} (supported: 1-{MAX_CHANNELS})"
            )

    @property
    def frame_bytes(self) -> int:
        """Bytes per multi-channel sample frame; every chunk must be a multiple of this."""
        return _WIDTH[self.encoding] * self.channels


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
    if fmt.encoding == "pcm_s16le":
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    else:
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(samples, -1.0, 1.0, out=samples)
    if fmt.channels > 1:
        samples = samples.reshape(-1, fmt.channels).mean(axis=1, dtype=np.float32)
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

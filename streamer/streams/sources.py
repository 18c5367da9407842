"""Audio sources at the hardware and file edge: microphone (sounddevice) and audio files.

Both only produce float32 mono chunks at their native rate; the shared per-stream pipeline does
the resampling, segmentation and inference, exactly as for WebSocket ingest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.audio import F32Array, downmix
from streamer.errors import AudioFormatError, StreamerError

log = logging.getLogger(__name__)


class DeviceError(StreamerError):
    """No usable audio input: PortAudio missing, no such device, or the device failed."""


@dataclass(frozen=True)
class FileAudio:
    """A decoded audio file: float32 mono samples and their rate."""

    samples: F32Array
    rate_hz: int


def read_audio_file(path: Path) -> FileAudio:
    """Read any file libsndfile understands (WAV, FLAC, OGG...) as float32 mono.

    Raises:
        AudioFormatError: missing, unreadable or empty file.
    """
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioFormatError(f"{path}: no such file") from None
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioFormatError(f"{path}: not a readable audio file ({exc})") from None
    if data.shape[0] == 0:
        raise AudioFormatError(f"{path}: contains no audio")
    return FileAudio(samples=downmix(data), rate_hz=int(rate))


def chunks(samples: F32Array, n_samples: int) -> Iterator[F32Array]:
    """Split ``samples`` into consecutive chunks of ``n_samples`` (the last may be shorter)."""
    for start in range(0, len(samples), n_samples):
        yield samples[start : start + n_samples]


def _sounddevice() -> Any:
    """Import sounddevice, turning its import-time failures into one clear DeviceError."""
    try:
        import sounddevice
    except (OSError, ImportError) as exc:
        raise DeviceError(
            f"microphone support needs the PortAudio library ({exc}); on Debian/Ubuntu: "
            "apt-get install libportaudio2"
        ) from None
    return sounddevice


def list_devices() -> list[dict[str, Any]]:
    """Return the input devices: index, name, channels and default rate.

    Raises:
        DeviceError: PortAudio is missing or cannot enumerate devices.
    """
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list audio devices: {exc}") from None
    return [
        {
            "index": i,
            "name": d["name"],
            "channels": d["max_input_channels"],
            "default_rate_hz": int(d["default_samplerate"]),
        }
        for i, d in enumerate(devices)
        if d["max_input_channels"] > 0
    ]


class MicSource:
    """Captures one microphone at its native rate and yields float32 mono chunks.

    The PortAudio callback runs on its own thread and hands chunks to the event loop with
    ``call_soon_threadsafe``; a bounded queue drops the oldest chunk (and counts it) rather than
    grow if the loop stalls.
    """

    def __init__(
        self, device: str | int | None, *, block_ms: int = 20, queue_len: int = 500
    ) -> None:
        self.device = device
        self.block_ms = block_ms
        self.queue_len = queue_len
        self.dropped_blocks = 0
        self.rate_hz = 0

    async def stream(self) -> AsyncIterator[F32Array]:
        """Open the device and yield chunks until cancelled.

        Raises:
            DeviceError: PortAudio missing, no such device, or the device failed while open.
        """
        sd = _sounddevice()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[F32Array | None] = asyncio.Queue()
        try:
            info = sd.query_devices(self.device, kind="input")
        except (sd.PortAudioError, ValueError) as exc:
            raise DeviceError(f"no usable input device {self.device!r}: {exc}") from None
        self.rate_hz = int(info["default_samplerate"])

        def put(chunk: F32Array | None) -> None:
            if queue.qsize() >= self.queue_len:
                queue.get_nowait()
                self.dropped_blocks += 1
            queue.put_nowait(chunk)

        def callback(indata: Any, frames: int, time_info: Any, status: Any) -> None:
            del frames, time_info
            if status.input_overflow:
                log.warning("microphone overflow: audio was lost before it reached streamer")
            loop.call_soon_threadsafe(put, downmix(indata))  # a copy: PortAudio reuses indata

        def finished() -> None:
            loop.call_soon_threadsafe(put, None)

        try:
            stream = sd.InputStream(
                device=self.device,
                samplerate=self.rate_hz,
                channels=1,
                dtype="float32",
                blocksize=self.rate_hz * self.block_ms // 1000,
                callback=callback,
                finished_callback=finished,
            )
        except sd.PortAudioError as exc:
            raise DeviceError(f"cannot open input device {self.device!r}: {exc}") from None
        log.info("microphone %r open at %d Hz", info["name"], self.rate_hz)
        with stream:
            while (chunk := await queue.get()) is not None:
                yield chunk
        raise DeviceError(f"input device {info['name']!r} stopped delivering audio")

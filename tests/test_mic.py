"""The microphone path, with the hardware edge faked: sounddevice is replaced by a WAV player."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_server import UNIT_S, collect, config, read_until, running, send_audio, start_msg
from onnx_graphs import write_bundle
from websockets.asyncio.client import connect

from streamer import app, protocol as proto
from streamer.config import Config
from streamer.streams.sources import DeviceError, MicSource, list_devices, read_audio_file

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"


class FakeSoundDevice(types.ModuleType):
    """Plays a recording through the callback API of sounddevice.InputStream, at 48 kHz stereo."""

    class PortAudioError(Exception):
        pass

    def __init__(
        self, samples: np.ndarray, *, vanish_after_s: float | None = None, stay_open: bool = False
    ) -> None:
        super().__init__("sounddevice")
        self.samples = samples
        self.vanish_after_s = vanish_after_s
        self.stay_open = stay_open  # after the recording: deliver nothing more until closed
        self.n_opened = 0

    def query_devices(self, device: Any = None, kind: str | None = None) -> Any:
        info = {"name": "Fake Mic", "max_input_channels": 2, "default_samplerate": 48000.0}
        if device not in (None, 0, "Fake Mic"):
            raise ValueError(f"No input device matching {device!r}")
        return info if kind else [info]

    def InputStream(self, **kw: Any) -> Any:  # noqa: N802 - mirrors sounddevice's API
        self.n_opened += 1
        return _FakeStream(self, **kw)


class _FakeStream:
    def __init__(self, sd: FakeSoundDevice, *, samplerate: int, blocksize: int, callback: Any,
                 finished_callback: Any, **_: Any) -> None:  # fmt: skip
        self.sd, self.rate, self.block = sd, samplerate, blocksize
        self.callback, self.finished = callback, finished_callback
        self.stop = threading.Event()

    def _play(self) -> None:
        import soxr

        audio = soxr.resample(self.sd.samples, 16000, self.rate).astype(np.float32)
        if self.sd.vanish_after_s is not None:
            audio = audio[: int(self.sd.vanish_after_s * self.rate)]
        status = types.SimpleNamespace(input_overflow=False)
        for i in range(0, len(audio) - self.block, self.block):
            if self.stop.is_set():
                return
            block = np.repeat(audio[i : i + self.block, None], 2, axis=1)
            self.callback(block, self.block, None, status)
        if self.sd.stay_open:
            self.stop.wait()
            return
        self.finished()

    def __enter__(self) -> _FakeStream:
        self.thread = threading.Thread(target=self._play, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.fixture
def speech() -> np.ndarray:
    audio = read_audio_file(AUDIO / "stream_clean.wav").samples[: 11 * 16000]
    return np.concatenate([audio, np.zeros(16000, np.float32)])


async def test_microphone_stream_reaches_subscribers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, speech: np.ndarray
) -> None:
    """Audio from a 48 kHz stereo microphone is resampled, segmented and published as 'mic'."""
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice(speech, vanish_after_s=None))
    services = app.build_services(Config(), {"ctc": write_bundle(tmp_path / "ctc")})
    sub = services.hub.subscribe(streams=["mic"], events=["utterance"])
    task = asyncio.create_task(app._run_mic(services, "default"))
    async with asyncio.timeout(30):
        await task
    items, lost = sub.drain()
    events = [json.loads(t) for t in items]
    assert lost == 0
    assert len(events) == 2
    assert abs(events[0]["start_ms"] - 1000) < 200
    services.runner.close()


async def test_microphone_that_disappears_is_reported(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    speech: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A device that stops mid-utterance: the utterance still gets a result, the error is logged."""
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice(speech, vanish_after_s=2.5))
    services = app.build_services(Config(), {"ctc": write_bundle(tmp_path / "ctc")})
    sub = services.hub.subscribe(streams=["mic"], events=["utterance"])
    async with asyncio.timeout(30):
        await app._run_mic(services, "default")
    assert len(sub.drain()[0]) == 1
    assert "stopped delivering audio" in caplog.text
    services.runner.close()


async def test_unknown_device_and_missing_portaudio(monkeypatch: pytest.MonkeyPatch) -> None:
    """No such device, or no PortAudio at all, raise DeviceError with one clear message."""
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice(np.zeros(10, np.float32)))
    with pytest.raises(DeviceError, match="no usable input device 'Studio'"):
        await anext(MicSource("Studio").stream())
    assert list_devices()[0]["name"] == "Fake Mic"
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(DeviceError, match="libportaudio2"):
        list_devices()


async def test_microphone_and_a_client_never_take_each_others_stream(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    speech: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stream 'mic' belongs to whoever was admitted first: a WebSocket client or the microphone.

    A client's 'mic' stream makes the microphone refuse to start (its device is never opened)
    and goes on as before; the microphone's 'mic' stream makes a client's start fail with
    stream_in_use (close 1008) while the microphone's results go on reaching subscribers.
    """
    device = FakeSoundDevice(speech, stay_open=True)
    monkeypatch.setitem(sys.modules, "sounddevice", device)
    async with running(config(), {"ctc": write_bundle(tmp_path / "ctc")}) as d:
        async with connect(d.url + proto.INGEST_PATH) as ws:
            await ws.send(start_msg("mic"))
            assert json.loads(await ws.recv())["type"] == "started"
            async with asyncio.timeout(UNIT_S):
                await app._run_mic(d.services, "default")
            assert device.n_opened == 0
            assert "microphone not started: stream 'mic' is already live" in caplog.text
            await send_audio(ws, speech[: 6 * 16000])
            await ws.send(json.dumps({"type": "end"}))
            events = await collect(ws)
        assert [e["type"] for e in events].count("utterance") == 1
        assert events[-1]["type"] == "ended"
        await _until(lambda: "mic" not in d.services.streams)  # ended once the socket closed

        sub = d.services.hub.subscribe(streams=["mic"], events=["utterance"])
        mic = asyncio.create_task(app._run_mic(d.services, "default"))
        try:
            await _until(lambda: "mic" in d.services.streams)
            async with connect(d.url + proto.INGEST_PATH) as ws:
                await ws.send(start_msg("mic"))
                refused = await read_until(ws, lambda events: bool(events))
                await collect(ws)
            assert refused[0]["type"] == "error"
            assert refused[0]["code"] == proto.STREAM_IN_USE
            assert ws.close_code == proto.CLOSE_POLICY
            await _until(lambda: len(sub) == 2)  # both utterances of the recording, as alone
            assert "mic" in d.services.streams
            assert not mic.done()
        finally:
            mic.cancel()
            await asyncio.gather(mic, return_exceptions=True)
        assert "mic" not in d.services.streams
        assert device.n_opened == 1


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(3 * UNIT_S):
        while not condition():  # noqa: ASYNC110 (state owned by the daemon; polling is simplest)
            await asyncio.sleep(0.01)

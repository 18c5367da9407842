"""The Wyoming endpoint on 127.0.0.1 port 0, driven by the wyoming package's own client classes."""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soxr
from live_server import daemon_process
from onnx_graphs import write_bundle
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error as WyomingError
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.intent import Intent, IntentsStart, IntentsStop, NotRecognized, Recognize
from wyoming.ping import Ping, Pong

from streamer import protocol as proto
from streamer.app import build_services
from streamer.audio import float_to_pcm16
from streamer.config import Config, EngineConfig
from streamer.errors import ConfigError
from streamer.serve.wyoming_server import WyomingServer, parse_uri
from streamer.streams.services import Services
from streamer.streams.sources import read_audio_file

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
UNIT_S = 10.0 * float(os.environ.get("STREAMER_TEST_TIMEOUT_FACTOR", "1"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wyoming")
    return {
        "ctc": write_bundle(root / "ctc"),
        "intent": write_bundle(
            root / "intent", task="classify", labels=(("lights_on", "lights_off"), ("hall", "den"))
        ),
    }


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Three utterances of real speech (speech at 1.0-4.0, 7.0-10.1 and 11.4-13.4 s), 16 kHz."""
    audio = read_audio_file(AUDIO / "stream_clean.wav")
    assert audio.rate_hz == 16000
    return audio.samples[: 14 * 16000]


class Wyoming:
    def __init__(self, server: WyomingServer, services: Services) -> None:
        self.server = server
        self.services = services
        self.port = server.ports[0]

    def client(self) -> AsyncTcpClient:
        return AsyncTcpClient("127.0.0.1", self.port, connect_timeout=UNIT_S, read_timeout=UNIT_S)


@pytest.fixture
async def wyoming(models: dict[str, Path]) -> AsyncIterator[Wyoming]:
    services = build_services(Config(), models)
    server = WyomingServer(services, "tcp://127.0.0.1:0")
    await server.start()
    yield Wyoming(server, services)
    await server.drain(UNIT_S)
    services.runner.close()


async def send_audio(
    client: AsyncTcpClient, pcm: bytes, *, rate: int, width: int, channels: int, chunk_ms: int = 100
) -> None:
    await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    step = rate * chunk_ms // 1000 * width * channels + 1  # odd size: frames split across chunks
    for i in range(0, len(pcm), step):
        chunk = AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i : i + step])
        await client.write_event(chunk.event())
    await client.write_event(AudioStop().event())


async def read_response(client: AsyncTcpClient) -> list[Event]:
    """Read one response: up to its intent events (every request here runs an intent bundle)."""
    events: list[Event] = []
    while True:
        event = await client.read_event()
        assert event is not None, f"connection closed after {[e.type for e in events]}"
        events.append(event)
        several = any(IntentsStart.is_type(e.type) for e in events)
        if event.type in ("intents-stop", "not-recognized", "error") or (
            Intent.is_type(event.type) and not several
        ):
            return events


async def test_describe_advertises_every_bundle(wyoming: Wyoming) -> None:
    """describe is answered by info with one ASR program listing each bundle as a model."""
    async with wyoming.client() as client:
        await client.write_event(Describe().event())
        event = await client.read_event()
    assert event is not None
    info = Info.from_event(event)
    assert len(info.asr) == 1
    program = info.asr[0]
    assert program.supports_transcript_streaming
    assert {m.name for m in program.models} == {"ctc", "intent"}
    assert all(m.installed and m.languages == ["en"] for m in program.models)
    assert info.intent == []


async def test_transcribe_real_speech_through_the_pipeline(
    wyoming: Wyoming, speech: np.ndarray
) -> None:
    """Speech gives transcript-start, a chunk per utterance, the joined transcript and intents."""
    published: list[str] = []
    sub = wyoming.services.hub.subscribe(events=("utterance",))
    async with wyoming.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, float_to_pcm16(speech), rate=16000, width=2, channels=1)
        events = await read_response(client)
    published, _ = sub.drain()
    types = [e.type for e in events]
    assert types[0] == "transcript-start"
    n = types.count("transcript-chunk")
    assert types == [
        "transcript-start",
        *["transcript-chunk"] * n,
        "transcript",
        "transcript-stop",
        *(["intents-start", *["intent"] * (len(types) - n - 5), "intents-stop"]),
    ]
    # the same utterances went to the hub: the Wyoming stream is a daemon stream like any other
    utterances = [proto.decode_event(text) for text in published]
    assert 2 <= len(utterances) <= 4
    assert all(isinstance(u, proto.Utterance) for u in utterances)
    texts = [
        u.transcript.text for u in utterances if isinstance(u, proto.Utterance) and u.transcript
    ]
    transcript = Transcript.from_event(events[n + 1])
    assert transcript.text == " ".join(t for t in texts if t)
    assert transcript.language == "en"
    chunks = "".join(TranscriptChunk.from_event(e).text for e in events[1 : n + 1])
    assert chunks == transcript.text
    intents = [Intent.from_event(e) for e in events if Intent.is_type(e.type)]
    assert len(intents) == len(utterances)
    assert {i.name for i in intents} <= {"lights_on", "lights_off"}
    assert all([x.name for x in i.entities] == ["label_1"] for i in intents)
    assert {e.value for i in intents for e in i.entities} <= {"hall", "den"}
    assert IntentsStart.is_type(events[n + 3].type)
    assert IntentsStop.is_type(events[-1].type)


async def test_any_rate_width_and_channels(wyoming: Wyoming, speech: np.ndarray) -> None:
    """48 kHz 24-bit stereo and 8 kHz 8-bit mono are resampled and cut like 16 kHz mono."""
    one = speech[: 6 * 16000]  # one utterance (1.0-4.0 s)
    hi = soxr.resample(one, 16000, 48000).astype(np.float32)
    ints = np.round(np.clip(hi, -1, 1 - 2**-23) * 2**23).astype("<i4")
    stereo24 = np.repeat(ints, 2).view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    lo = soxr.resample(one, 16000, 8000).astype(np.float32)
    mono8 = np.round(np.clip(lo, -1, 1 - 2**-7) * 127).astype("i1").tobytes()
    for pcm, rate, width, channels in ((stereo24, 48000, 3, 2), (mono8, 8000, 1, 1)):
        async with wyoming.client() as client:
            await send_audio(client, pcm, rate=rate, width=width, channels=channels)
            events = await read_response(client)
        assert [e.type for e in events if e.type != "transcript-chunk"] == [
            "transcript-start",
            "transcript",
            "transcript-stop",
            "intent",
        ], (rate, width, channels)


async def test_two_requests_on_one_connection(wyoming: Wyoming, speech: np.ndarray) -> None:
    """A connection serves requests one after another, each on a fresh stream."""
    pcm = float_to_pcm16(speech[: 6 * 16000])
    async with wyoming.client() as client:
        answers = []
        for _ in range(2):
            await send_audio(client, pcm, rate=16000, width=2, channels=1)
            answers.append(await read_response(client))
    texts = [Transcript.from_event(e).text for a in answers for e in a if e.type == "transcript"]
    assert len(texts) == 2
    assert texts[0] == texts[1]
    assert list(wyoming.services.streams) == []


@pytest.mark.parametrize(
    ("events", "code"),
    [
        ([AudioStart(rate=1000, width=2, channels=1).event()], "unsupported_format"),
        ([AudioStart(rate=16000, width=5, channels=1).event()], "unsupported_format"),
        ([Event(type="audio-start", data={"rate": 16000})], "bad_message"),
        ([Transcribe(name="nope").event()], "unknown_model"),
        (
            [
                AudioStart(rate=16000, width=2, channels=1).event(),
                AudioChunk(rate=8000, width=2, channels=1, audio=b"\0\0").event(),
            ],
            "unsupported_format",
        ),
    ],
)
async def test_bad_requests_get_an_error_and_close(
    wyoming: Wyoming, events: list[Event], code: str
) -> None:
    """A request the server cannot serve is answered with an error event and the socket closes."""
    async with wyoming.client() as client:
        for event in events:
            await client.write_event(event)
        got = []
        while (event := await client.read_event()) is not None:
            got.append(event)
    errors = [WyomingError.from_event(e) for e in got if WyomingError.is_type(e.type)]
    assert [e.code for e in errors] == [code]
    assert list(wyoming.services.streams) == []


async def test_hostile_clients_cost_one_log_line(
    wyoming: Wyoming, caplog: pytest.LogCaptureFixture
) -> None:
    """100 connections sending a header that is JSON but no event, or a malformed event: each
    gets an error event and is closed; the log gets one line, and never a traceback."""
    caplog.set_level(logging.DEBUG, logger="streamer")
    first = len(caplog.records)
    for i in range(100):
        reader, writer = await asyncio.open_connection("127.0.0.1", wyoming.port)
        if i % 2:
            writer.write(b"{}\n[1]\n")  # no "type"; not even an object
        else:
            writer.write(b'{"type": "audio-chunk", "data": {"rate": 16000}}\n')  # no width...
        async with asyncio.timeout(UNIT_S):
            answer = await reader.read()
        writer.close()
        assert b'"type": "error"' in answer.partition(b"\n")[0]
    during = [r for r in caplog.records[first:] if r.name.startswith("streamer")]
    assert len(during) == 1, [r.getMessage() for r in during]
    assert during[0].levelno == logging.INFO
    assert wyoming.services.client_errors.n_reported == 100
    assert list(wyoming.services.streams) == []


async def test_busy_engine_refuses_new_requests(models: dict[str, Path]) -> None:
    """When the engine is too far behind, a new request gets error busy, as ingest does."""
    services = build_services(Config(engine=EngineConfig(max_pending_utterances=1)), models)
    server = WyomingServer(services, "tcp://127.0.0.1:0")
    await server.start()
    services.runner.reserve()  # one utterance pending: load 1.0
    try:
        client = AsyncTcpClient("127.0.0.1", server.ports[0], read_timeout=UNIT_S)
        async with client:
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            event = await client.read_event()
            assert event is not None
            assert WyomingError.from_event(event).code == "busy"
            assert await client.read_event() is None
    finally:
        services.runner.release()
        await server.drain(UNIT_S)
        services.runner.close()
    assert (
        services.metrics.registry.get_sample_value("streamer_errors_total", {"code": "busy"}) == 1
    )


async def test_text_recognize_ping_and_unknown_events(wyoming: Wyoming) -> None:
    """recognize (text) is not-recognized, ping gets pong, and unknown events are ignored."""
    async with wyoming.client() as client:
        await client.write_event(Event(type="select-program", data={"name": "streamer"}))
        await client.write_event(Event(type="frobnicate"))
        await client.write_event(Recognize(text="turn on the lights").event())
        first = await client.read_event()
        await client.write_event(Ping(text="hi").event())
        second = await client.read_event()
    assert first is not None
    assert NotRecognized.is_type(first.type)
    assert second is not None
    assert Pong.from_event(second).text == "hi"


async def test_drain_answers_the_request_in_progress(wyoming: Wyoming, speech: np.ndarray) -> None:
    """Shutting down mid-request still sends the transcript of the audio heard so far."""
    async with wyoming.client() as client:
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        pcm = float_to_pcm16(speech[: int(3.0 * 16000)])  # stops mid-utterance (1.0-4.0 s)
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm).event())
        assert (await client.read_event()) is not None  # transcript-start: the request is open
        await asyncio.sleep(0.2)
        await wyoming.server.drain(UNIT_S)
        got = []
        while (event := await client.read_event()) is not None:
            got.append(event.type)
    assert got[got.index("transcript") :] == ["transcript", "transcript-stop", "intent"]


@pytest.mark.parametrize(
    "uri", ["udp://x:1", "tcp://host", "tcp://:10300", "tcp://h:99999", "tcp://[::1:10300"]
)
def test_parse_uri_rejects(uri: str) -> None:
    """Only tcp://HOST:PORT is accepted."""
    with pytest.raises(ConfigError):
        parse_uri(uri)


async def test_serve_command_with_wyoming(models: dict[str, Path], speech: np.ndarray) -> None:
    """`streamer serve --wyoming tcp://127.0.0.1:0` answers Wyoming, the page and /metrics."""
    flags = [arg for name, path in models.items() for arg in ("--model", f"{name}={path}")]
    async with daemon_process(
        *flags, "serve", "--port", "0", "--wyoming", "tcp://127.0.0.1:0",
        listeners=("streamer", "wyoming"),
    ) as daemon:  # fmt: skip
        client = AsyncTcpClient("127.0.0.1", daemon.ports["wyoming"], read_timeout=UNIT_S)
        async with client:
            await send_audio(
                client, float_to_pcm16(speech[: 6 * 16000]), rate=16000, width=2, channels=1
            )
            events = await read_response(client)
        assert [e.type for e in events][-3:] == ["transcript", "transcript-stop", "intent"]
        base = f"http://127.0.0.1:{daemon.ports['streamer']}"

        def get(path: str) -> bytes:
            with urllib.request.urlopen(base + path, timeout=UNIT_S) as r:
                body: bytes = r.read()
                return body

        assert b"live captions" in await asyncio.to_thread(get, "/")
        metrics = (await asyncio.to_thread(get, "/metrics")).decode()
        assert 'streamer_connections_accepted_total{endpoint="wyoming"} 1.0' in metrics
        assert "streamer_end_of_speech_to_final_seconds_count 1.0" in metrics

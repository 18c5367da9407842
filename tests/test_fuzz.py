"""Property tests over every decoder of outside input: a value or the documented error, no more.

tests/test_protocol.py covers arbitrary text and JSON objects for the two message decoders; this
adds byte-level mutations of valid messages, whole frame sequences through the per-endpoint state
machines, PCM audio bytes, the server's endpointing step, the journal reader, ``--since``
and the HTTP guard.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from onnx_graphs import write_bundle
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from streamer import audio, endpoints, protocol as p
from streamer.app import build_services
from streamer.config import Config
from streamer.errors import AudioFormatError, ConfigError, ProtocolError
from streamer.segmenter_config import SegmenterConfig
from streamer.serve.ingest import segmenter_config as _segmenter_config
from streamer.serve.journal import Record, parse_record, parse_since
from streamer.serve.security import Guard, SecurityConfig, parse_origins
from streamer.streams.services import Services

VALID_CLIENT = [
    p.Start(sample_rate=16000, encoding="pcm_s16le", channels=1, stream="kitchen").encode(),
    p.Start(
        sample_rate=48000,
        encoding="pcm_f32le",
        channels=2,
        stream="a.b-c_d",
        models=("ctc", "intent"),
        endpointing={"min_silence_ms": 400, "vad_mode": 2, "max_utterance_s": 10},
        want=("embedding",),
    ).encode(),
    p.Flush().encode(),
    p.End().encode(),
    p.Subscribe(streams=("*",), events=("utterance", "error")).encode(),
]
VALID_EVENTS = [
    p.Utterance(
        stream="s",
        utterance_id="u1",
        seq=3,
        start_ms=10.0,
        end_ms=990.5,
        models=("ctc",),
        latency_ms=p.Latency(12.0, 1.0, 8.0, 0.5),
        transcript=p.Transcript("on", (p.Word("on", 10.0, 200.0, 0.9),)),
        intent=p.Intent("lights_on", 0.9, (p.Alternative("off", 0.1),)),
        lag_ms=400.0,
    ).encode(),
    p.Dropped(count=3).encode(),
    p.Error(code="bad_json", message="x", stream="s").encode(),
]
T = TypeVar("T")
RECORD = '{"seq":7,"time":1714563000.125,"event":' + VALID_EVENTS[0] + "}"


@st.composite
def mutated(draw: st.DrawFn, originals: list[str]) -> bytes:
    """A valid message with a few bytes flipped, deleted, inserted or cut off."""
    data = bytearray(draw(st.sampled_from(originals)).encode())
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "duplicate"]))
        if op == "flip" and i < len(data):
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "insert":
            data[i:i] = draw(
                st.binary(min_size=1, max_size=8) | st.sampled_from([b'"', b"{", b","])
            )
        elif op == "truncate":
            del data[i:]
        else:
            data[i:i] = data[max(0, i - 8) : i]
    return bytes(data)


def _as_text_or_bytes(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


frames = st.one_of(
    st.sampled_from(VALID_CLIENT),
    mutated(VALID_CLIENT).map(_as_text_or_bytes),
    st.binary(max_size=64),
    st.text(max_size=40),
)


def _attempt(fn: Callable[..., T], *args: object) -> T | ProtocolError:
    """Return what ``fn(*args)`` returns, or the ProtocolError it raises."""
    try:
        return fn(*args)
    except ProtocolError as exc:
        return exc


def _check_error(exc: ProtocolError) -> None:
    assert exc.code in p.CLOSE_CODES
    assert exc.close_code == p.CLOSE_CODES[exc.code]
    assert exc.close_code in (1007, 1008, 1009)


@settings(max_examples=250)
@given(mutated(VALID_CLIENT))
def test_mutated_client_messages_decode_or_raise(raw: bytes) -> None:
    """A damaged valid message parses as some message or raises ProtocolError, as bytes or text."""
    for candidate in (raw, _as_text_or_bytes(raw)):
        msg = _attempt(p.decode_client_text, candidate)
        if isinstance(msg, ProtocolError):
            _check_error(msg)
        else:
            assert p.decode_client_text(msg.encode()) == msg


@settings(max_examples=300)
@given(mutated(VALID_EVENTS))
def test_mutated_events_decode_or_raise(raw: bytes) -> None:
    """A damaged server event parses as some event or raises ProtocolError (clients use this)."""
    event = _attempt(p.decode_event, raw)
    if isinstance(event, ProtocolError):
        assert event.code in p.CLOSE_CODES
    else:
        assert event.type in p.SERVER_EVENTS


@settings(max_examples=200)
@given(st.lists(frames, max_size=8), st.integers(0, 64))
def test_ingest_state_survives_any_frame_sequence(
    sequence: list[str | bytes], max_frame_bytes: int
) -> None:
    """Any frame sequence on /v1/stream is accepted frame by frame until one documented error."""
    state = endpoints.IngestState(models={"ctc", "intent"}, max_frame_bytes=max_frame_bytes)
    for frame in sequence:
        try:
            if isinstance(frame, bytes):
                n = state.on_binary(frame)
                assert state.start is not None
                assert n * state.start.bytes_per_frame == len(frame)
            else:
                msg = state.on_text(frame)
                assert not isinstance(msg, p.Subscribe)
        except ProtocolError as exc:
            _check_error(exc)
            return  # the server closes the connection here
    assert state.phase in endpoints.Phase


@settings(max_examples=150)
@given(st.lists(frames, max_size=6))
def test_events_state_survives_any_frame_sequence(sequence: list[str | bytes]) -> None:
    """Any frame sequence on /v1/events yields subscriptions until one documented error."""
    state = endpoints.EventsState()
    for frame in sequence:
        try:
            if isinstance(frame, bytes):
                state.on_binary(frame)
                pytest.fail("binary frames are never accepted here")
            sub = state.on_text(frame)
        except ProtocolError as exc:
            _check_error(exc)
            return
        assert state.subscription == sub


@settings(max_examples=300)
@given(
    st.binary(max_size=96),
    st.sampled_from(sorted(audio.ENCODINGS)),
    st.sampled_from(audio.CHANNELS),
)
def test_any_pcm_bytes_decode_to_bounded_samples_or_raise(
    data: bytes, encoding: str, channels: int
) -> None:
    """Any bytes in any accepted format decode to finite mono samples in [-1, 1], or raise."""
    fmt = audio.AudioFormat(16000, encoding, channels)
    try:
        samples = audio.pcm_to_float(data, fmt)
    except AudioFormatError:
        assert len(data) % fmt.frame_bytes
        return
    assert samples.dtype == np.float32
    assert len(samples) == len(data) // fmt.frame_bytes
    assert np.isfinite(samples).all()
    assert np.abs(samples).max(initial=0.0) <= 1.0


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Services:
    root = tmp_path_factory.mktemp("bundles")
    return build_services(Config(), {"ctc": write_bundle(root / "ctc")})


knobs = st.dictionaries(
    st.sampled_from(sorted(p.ENDPOINTING_KNOBS)),
    st.floats(0, 20_000, allow_nan=False) | st.integers(0, 5),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(knobs)
def test_any_endpointing_the_protocol_admits_opens_or_is_refused(
    services: Services, endpointing: dict[str, float]
) -> None:
    """Endpointing that passes the protocol's ranges builds a segmenter or raises ProtocolError."""
    fmt = {"sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, "stream": "s"}
    start = _attempt(lambda: p.Start(**fmt, endpointing=endpointing))  # type: ignore[arg-type]
    if isinstance(start, ProtocolError):
        return
    seg = _attempt(_segmenter_config, services, start.endpointing, ("ctc",))
    if isinstance(seg, ProtocolError):
        assert (seg.code, seg.close_code) == (p.BAD_FIELD, 1007)
    else:
        assert isinstance(seg, SegmenterConfig)


@settings(max_examples=200)
@given(st.binary(max_size=120) | mutated([RECORD]))
def test_journal_lines_parse_or_are_skipped(raw: bytes) -> None:
    """Any journal line (torn, damaged, foreign) reads as a record or as None, never raises."""
    record = parse_record(raw)
    assert record is None or isinstance(record, Record)
    if record is not None:
        assert isinstance(record.seq, int)
        assert isinstance(record.event["type"], str)


def test_the_undamaged_record_parses() -> None:
    """The reference record used above is itself valid."""
    record = parse_record(RECORD)
    assert record is not None
    assert (record.seq, record.event["type"]) == (7, "utterance")


@given(
    st.text(max_size=40)
    | st.datetimes().map(lambda d: d.isoformat())
    | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
)
def test_since_is_a_seq_a_time_or_a_config_error(text: str) -> None:
    """--since reads as a seq or a time, or raises ConfigError (exit code 2)."""
    try:
        seq, when = parse_since(text)
    except ConfigError:
        return
    assert (seq is None) != (when is None)


header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)


@settings(max_examples=300)
@given(
    st.text(max_size=60),
    st.lists(
        st.tuples(st.sampled_from(["Authorization", "Origin", "Host", "X"]), header_values),
        max_size=5,
    ),
    st.booleans(),
)
def test_guard_answers_every_request(
    path: str, headers: list[tuple[str, str]], with_token: bool
) -> None:
    """The guard returns a bare 401/403 or lets the request on, for any path and headers."""
    guard = Guard(
        token="tok" if with_token else None,
        origins=("https://app.example",),
        public_healthz=True,
    )
    got = guard.check(Request("/" + path, Headers(headers)))
    assert got is None or (isinstance(got, Response) and got.status_code in (401, 403))
    if got is not None:
        assert got.body == b""


@given(st.text(max_size=60))
@example("//[")  # urllib raises ValueError on an unclosed IPv6 bracket
@example("http://[::1")
def test_origin_lists_are_valid_or_config_errors(text: str) -> None:
    """Any origins setting is accepted as a list of origins or refused with ConfigError."""
    try:
        config = SecurityConfig(origins=text)
    except ConfigError:
        return
    assert all(o.startswith(("http://", "https://")) for o in parse_origins(config.origins))


def test_journal_parse_record_rejects_wrong_shapes(tmp_path: Path) -> None:
    """Records with a wrong seq, time or event type are skipped."""
    for line in (
        '{"seq":true,"time":1,"event":{"type":"x"}}',
        '{"seq":1,"time":"now","event":{"type":"x"}}',
        '{"seq":1,"time":1,"event":{"kind":"x"}}',
        '{"seq":1,"time":1,"event":[]}',
        "[1,2]",
    ):
        assert parse_record(line) is None

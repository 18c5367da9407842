"""Tests for the sans-I/O wire protocol: messages, events, errors and the JSON codec."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from streamer import audio, protocol as p, wire
from streamer.errors import AudioFormatError, ProtocolError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"

names = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", fullmatch=True)
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**9), 10**9)


def _knob(key: str, fraction: float) -> float:
    low, high = p.ENDPOINTING_KNOBS[key]
    value = min(high, low + (high - low) * fraction)
    return round(value) if key == "vad_mode" else value


knobs = st.dictionaries(st.sampled_from(sorted(p.ENDPOINTING_KNOBS)), st.floats(0, 1)).map(
    lambda d: {k: _knob(k, f) for k, f in d.items()}
)
starts = st.builds(
    p.Start,
    sample_rate=st.integers(audio.MIN_RATE_HZ, audio.MAX_RATE_HZ),
    encoding=st.sampled_from(sorted(audio.ENCODINGS)),
    channels=st.sampled_from(audio.CHANNELS),
    stream=names,
    models=st.lists(names, max_size=3, unique=True).map(tuple),
    endpointing=knobs,
    want=st.sampled_from([(), ("embedding",)]),
)
subscribes = st.builds(
    p.Subscribe,
    streams=st.lists(names | st.just("*"), min_size=1, max_size=5).map(tuple),
    events=st.lists(st.sampled_from([*p.SUBSCRIBABLE, "*"]), min_size=1, max_size=5).map(tuple),
)
client_messages = st.one_of(starts, subscribes, st.just(p.Flush()), st.just(p.End()))

text = st.text(max_size=20)
ms = st.floats(0, 1e7, allow_nan=False)
conf = st.floats(0, 1)
intents = st.builds(
    p.Intent,
    name=text,
    confidence=conf,
    alternatives=st.lists(st.builds(p.Alternative, text, conf), max_size=3).map(tuple),
    abstain=st.booleans(),
)
words = st.builds(p.Word, word=text, start_ms=ms, end_ms=ms, confidence=conf)
transcripts = st.builds(p.Transcript, text=text, words=st.lists(words, max_size=4).map(tuple))
latencies = st.builds(p.Latency, ms, ms, ms, ms)
number_dicts = st.dictionaries(text, numbers, max_size=3)
events = st.one_of(
    st.builds(
        p.Started,
        stream=names,
        sample_rate=st.integers(1),
        encoding=text,
        channels=st.integers(1, 2),
        models=st.lists(st.builds(p.ModelInfo, text, text, text), max_size=2).map(tuple),
        limits=number_dicts,
        endpointing=number_dicts,
        want=st.lists(text, max_size=2).map(tuple),
    ),
    st.builds(p.SpeechStarted, stream=names, utterance_id=text, seq=st.integers(0), start_ms=ms),
    st.builds(
        p.Utterance,
        stream=names,
        utterance_id=text,
        seq=st.integers(0),
        start_ms=ms,
        end_ms=ms,
        models=st.lists(text, max_size=2).map(tuple),
        latency_ms=latencies,
        transcript=st.none() | transcripts,
        intent=st.none() | intents,
        labels=st.none() | st.lists(intents, max_size=2).map(tuple),
        value=st.none() | numbers,
        embedding=st.none() | st.lists(st.floats(-1, 1), max_size=8).map(tuple),
        lag_ms=st.none() | ms,
    ),
    st.builds(p.Ended, stream=names, n_utterances=st.integers(0)),
    st.builds(
        p.Subscribed,
        streams=st.lists(names, max_size=3).map(tuple),
        events=st.lists(text, max_size=3).map(tuple),
    ),
    st.builds(p.Dropped, count=st.integers(1)),
    st.builds(
        p.Error,
        code=st.sampled_from(sorted(p.CLOSE_CODES)),
        message=text,
        stream=st.none() | names,
        utterance_id=st.none() | text,
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _attempt(fn: Callable[..., object], *args: object) -> object:
    """Return what ``fn(*args)`` returns, or the ProtocolError it raises."""
    try:
        return fn(*args)
    except ProtocolError as exc:
        return exc


def _code(text: str | bytes, **kwargs: Any) -> tuple[str, int | None]:
    with pytest.raises(ProtocolError) as info:
        p.decode_client_text(text, **kwargs)
    return info.value.code, info.value.close_code


def _start(**fields: Any) -> str:
    msg: dict[str, Any] = {
        "type": "start",
        "sample_rate": 16000,
        "encoding": "pcm_s16le",
        "channels": 1,
        "stream": "kitchen",
    }
    return json.dumps({**msg, **fields})


@given(client_messages)
def test_client_messages_round_trip(msg: p.ClientMessage) -> None:
    """Every valid client message decodes back to itself from its own encoding."""
    assert p.decode_client_text(msg.encode()) == msg
    assert p.decode_client_text(msg.encode().encode()) == msg


@given(events)
def test_server_events_round_trip(event: p.ServerEvent) -> None:
    """Every server event decodes back to itself, and its JSON starts with its type."""
    encoded = event.encode()
    assert p.decode_event(encoded) == event
    assert encoded.startswith(f'{{"type":"{event.type}"')
    compact = json.dumps(json.loads(encoded), separators=(",", ":"), ensure_ascii=False)
    assert encoded == compact


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_is_a_message_or_a_protocol_error(raw: str | bytes) -> None:
    """Any text or bytes either parse as a message or raise ProtocolError, nothing else."""
    for decode, kinds in (
        (p.decode_client_text, p.CLIENT_MESSAGES),
        (p.decode_event, p.SERVER_EVENTS),
    ):
        got = _attempt(decode, raw)
        if isinstance(got, ProtocolError):
            assert got.code in p.CLOSE_CODES
            assert got.close_code in (1007, 1008, 1009)
        else:
            assert isinstance(got, wire.WireMessage)
            assert got.type in kinds


@settings(max_examples=300)
@given(
    st.sampled_from([*p.CLIENT_MESSAGES, *p.SERVER_EVENTS, "other"]),
    st.dictionaries(
        st.sampled_from(
            [
                *("sample_rate", "encoding", "channels", "stream", "models", "endpointing", "want"),
                *("streams", "events", "code", "message", "count", "seq", "x"),
            ]
        ),
        json_values,
    ),
    st.booleans(),
)
def test_arbitrary_json_objects_never_crash(kind: str, fields: dict[str, Any], event: bool) -> None:
    """Objects with a known type and random fields give a message or a ProtocolError."""
    raw = json.dumps({"type": kind, **fields})
    got = _attempt(p.decode_event if event else p.decode_client_text, raw)
    if isinstance(got, ProtocolError):
        assert got.code in p.CLOSE_CODES
    else:
        assert isinstance(got, wire.WireMessage)
        assert got.type == kind


@given(
    st.sampled_from(["sample_rate", "encoding", "channels", "stream", "models", "endpointing"]),
    json_values,
)
def test_mutated_start_fields_are_checked(key: str, value: object) -> None:
    """Replacing one start field with any JSON value is accepted only if it keeps valid types."""
    got = _attempt(p.decode_client_text, _start(**{key: value}))
    if isinstance(got, ProtocolError):
        assert got.close_code in (1007, 1008)
    else:
        assert isinstance(got, p.Start)
        assert p.decode_client_text(got.encode()) == got


@pytest.mark.parametrize(
    ("raw", "code", "close"),
    [
        ("{", "bad_json", 1007),
        ("NaN", "bad_json", 1007),
        ('{"type":"end","type":"end"}', "bad_json", 1007),
        (b"\xff\xfe", "bad_json", 1007),
        ("[" * 5000 + "]" * 5000, "bad_json", 1007),
        ("[]", "bad_message", 1007),
        ('{"type":1}', "bad_message", 1007),
        ('{"type":"dance"}', "unknown_type", 1008),
        ('{"type":"utterance"}', "unknown_type", 1008),
        ('{"type":"flush","now":true}', "bad_field", 1007),
        ('{"type":"start"}', "bad_field", 1007),
        (_start(sample_rate=16000.0), "bad_field", 1007),
        (_start(sample_rate=True), "bad_field", 1007),
        (_start(stream="a/b"), "bad_field", 1007),
        (_start(stream=".."), "bad_field", 1007),
        (_start(stream="x" * 65), "bad_field", 1007),
        (_start(models="base"), "bad_field", 1007),
        (_start(models=["../etc"]), "bad_field", 1007),
        (_start(models=["a", "a"]), "bad_field", 1007),
        (_start(endpointing={"hangover": 1}), "bad_field", 1007),
        (_start(endpointing={"min_silence_ms": 1}), "bad_field", 1007),
        (_start(endpointing={"min_silence_ms": 7}).replace("7", "1e999"), "bad_field", 1007),
        (_start(endpointing={"vad_mode": 1.5}), "bad_field", 1007),
        (_start(endpointing=[]), "bad_field", 1007),
        (_start(want=["partials"]), "bad_field", 1007),
        (_start(want=["embedding", "embedding"]), "bad_field", 1007),
        (_start(sample_rate=4000), "unsupported_format", 1008),
        (_start(encoding="mp3"), "unsupported_format", 1008),
        (_start(encoding=None), "bad_field", 1007),
        (_start(channels=6), "unsupported_format", 1008),
        ('{"type":"subscribe","streams":[]}', "bad_field", 1007),
        ('{"type":"subscribe","streams":["*"],"events":["audio"]}', "bad_field", 1007),
        ('{"type":"subscribe","streams":["a"],"events":[]}', "bad_field", 1007),
        ('{"type":"subscribe","streams":' + json.dumps(["a"] * 257) + "}", "bad_field", 1007),
        ('{"type":"subscribe","streams":[1]}', "bad_field", 1007),
    ],
)
def test_bad_messages_get_stable_codes(raw: str | bytes, code: str, close: int) -> None:
    """Each kind of bad client message is rejected with its documented code and close code."""
    assert _code(raw) == (code, close)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"type":"flush","now":true}', "now"),
        ('{"type":"start"}', "sample_rate"),
        (_start(sample_rate=16000.0), "sample_rate"),
        (_start(stream="a/b"), "stream"),
        (_start(models=["../etc"]), "models"),
        (_start(models=["a", "a"]), "models"),
        (_start(endpointing={"hangover": 1}), "endpointing"),
        (_start(endpointing={"vad_mode": 1.5}), "endpointing"),
        (_start(want=["partials"]), "want"),
        (_start(want=["embedding", "embedding"]), "want"),
        (_start(want=[1]), "want"),
        (_start(context="../x"), "context"),
        ('{"type":"subscribe","streams":["*"],"events":["audio"]}', "events"),
        ('{"type":"subscribe","streams":[1]}', "streams"),
    ],
)
def test_bad_field_errors_name_the_field(raw: str, field: str) -> None:
    """A ``bad_field`` error names the client message's field at fault, and the error event
    carries it, so a client can match on it instead of on the message text."""
    got = _attempt(p.decode_client_text, raw)
    assert isinstance(got, ProtocolError)
    assert (got.code, got.field) == ("bad_field", field)
    event = json.loads(p.Error.from_exception(got).encode())
    assert event["field"] == field
    assert "field" not in json.loads(p.Error(code="internal", message="x").encode())


def test_too_large_text_is_rejected_by_byte_count() -> None:
    """The size limit counts UTF-8 bytes, for both str and bytes input."""
    small = '{"type":"end"}'
    assert p.decode_client_text(small, max_bytes=len(small)) == p.End()
    assert _code(small + " ", max_bytes=len(small)) == ("message_too_large", 1009)
    assert _code((small + " ").encode(), max_bytes=len(small)) == ("message_too_large", 1009)
    wide = '{"type":"end","x":"\u00e9"}'  # fewer characters than bytes
    assert _code(wide, max_bytes=len(wide)) == ("message_too_large", 1009)


def test_unknown_fields_in_events_are_ignored() -> None:
    """Clients tolerate fields added by newer servers, but still check the known ones."""
    assert p.decode_event('{"type":"dropped","count":3,"new":1}') == p.Dropped(count=3)
    with pytest.raises(ProtocolError, match="count must be an integer"):
        p.decode_event('{"type":"dropped","count":"3"}')
    with pytest.raises(ProtocolError) as info:
        p.decode_event('{"type":"start"}')
    assert info.value.code == "unknown_type"
    with pytest.raises(ProtocolError, match="latency_ms must be an object"):
        p.decode_event(
            '{"type":"utterance","stream":"s","utterance_id":"u","seq":0,"start_ms":0,'
            '"end_ms":1,"models":[],"latency_ms":5}'
        )


def test_optional_null_reads_as_absent() -> None:
    """An explicit null for an optional field is the same as leaving it out."""
    raw = '{"type":"error","code":"internal","message":"x","stream":null}'
    assert p.decode_event(raw) == p.Error(code="internal", message="x")
    assert '"stream"' not in p.Error(code="internal", message="x").encode()


def test_encode_refuses_non_finite_numbers() -> None:
    """A NaN never reaches the wire as invalid JSON."""
    bad = p.Utterance(
        stream="s",
        utterance_id="u",
        seq=0,
        start_ms=0,
        end_ms=1,
        models=(),
        latency_ms=p.Latency(float("nan"), 0, 0, 0),
    )
    with pytest.raises(ValueError, match="JSON compliant"):
        bad.encode()


def test_start_reports_frame_width() -> None:
    """bytes_per_frame is the sample width times the channel count."""
    start = p.decode_client_text(_start(encoding="pcm_f32le", channels=2))
    assert isinstance(start, p.Start)
    assert start.bytes_per_frame == 8


def test_start_carries_its_audio_format() -> None:
    """A start names its format with the shared AudioFormat; every encoding of the table works."""
    start = p.decode_client_text(_start(sample_rate=48000, encoding="pcm_s24le", channels=2))
    assert isinstance(start, p.Start)
    assert start.audio_format == audio.AudioFormat(48000, "pcm_s24le", 2)
    assert start.bytes_per_frame == 6


@given(st.integers(0, 400_000), st.integers(-1, 6), st.integers(-1, 40))
def test_websocket_and_wyoming_share_one_format_rule(rate: int, width: int, channels: int) -> None:
    """A start is refused exactly when the same Wyoming format is, with the same message."""
    try:
        fmt: audio.AudioFormat | None = audio.AudioFormat.from_width(rate, width, channels)
        wyoming_error = ""
    except AudioFormatError as exc:
        fmt, wyoming_error = None, str(exc)
    if width not in audio.INT_ENCODINGS:
        assert fmt is None
        return
    fields = {"sample_rate": rate, "encoding": audio.INT_ENCODINGS[width], "channels": channels}
    got = _attempt(p.decode_client_text, _start(**fields))
    if fmt is not None:
        assert isinstance(got, p.Start)
        assert got.audio_format == fmt
    else:
        assert isinstance(got, ProtocolError)
        assert (got.code, got.close_code, str(got)) == ("unsupported_format", 1008, wyoming_error)


def test_close_reason_fits_a_close_frame() -> None:
    """Close reasons stay within 123 UTF-8 bytes, cut at a character boundary."""
    short = ProtocolError("bad_json", "oops", close_code=1007)
    assert p.close_reason(short) == "oops"
    long = ProtocolError("bad_json", "\u00e9" * 100, close_code=1007)
    reason = p.close_reason(long)
    assert len(reason.encode()) <= 123
    assert reason.endswith("...")
    assert reason.startswith("\u00e9" * 60)


def test_error_event_from_exception() -> None:
    """An error event carries a ProtocolError's code and message."""
    exc = ProtocolError("bad_json", "oops", close_code=1007)
    assert p.Error.from_exception(exc, stream="s") == p.Error("bad_json", "oops", stream="s")


def test_long_values_are_shortened_in_messages() -> None:
    """Error messages quote at most a short prefix of what the client sent."""
    with pytest.raises(ProtocolError) as info:
        p.decode_client_text(json.dumps({"type": "x" * 10_000}))
    assert len(str(info.value)) < 80


def test_docs_list_every_error_code_and_message() -> None:
    """docs/protocol.md has a row for every error code with its close code, and every type."""
    doc = DOCS.read_text(encoding="utf-8")
    for code, close in p.CLOSE_CODES.items():
        row = re.search(rf"^\| `{code}` \|[^\n]*", doc, re.MULTILINE)
        assert row, f"error code {code} is not in the table"
        assert (str(close) if close else "none") in row.group(0)
    for kind in [*p.CLIENT_MESSAGES, *p.SERVER_EVENTS]:
        assert f'"type":"{kind}"' in doc.replace(" ", ""), f"message {kind} is not documented"
    for knob in p.ENDPOINTING_KNOBS:
        assert f"`{knob}`" in doc

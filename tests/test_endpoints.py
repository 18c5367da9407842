"""Tests for the per-endpoint state machines: which frame is legal when, and its error."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from streamer import audio, endpoints, protocol as p
from streamer.errors import ProtocolError
from tests.test_protocol import _attempt, _start


@given(
    st.binary(max_size=64),
    st.sampled_from(sorted(audio.ENCODINGS)),
    st.sampled_from(audio.CHANNELS),
    st.integers(0, 64),
)
def test_check_audio_frame(data: bytes, encoding: str, channels: int, max_bytes: int) -> None:
    """A frame passes only when within the size limit and a whole number of sample frames."""
    width = audio.ENCODINGS[encoding].width * channels
    got = _attempt(
        lambda: endpoints.check_audio_frame(
            data, encoding=encoding, channels=channels, max_bytes=max_bytes
        )
    )
    if len(data) > max_bytes:
        assert isinstance(got, ProtocolError)
        assert (got.code, got.close_code) == ("frame_too_large", 1009)
    elif len(data) % width:
        assert isinstance(got, ProtocolError)
        assert (got.code, got.close_code) == ("bad_audio_frame", 1007)
    else:
        assert got == len(data) // width


def _phase(state: endpoints.IngestState) -> endpoints.Phase:
    return state.phase


def test_ingest_state_flow() -> None:
    """start, audio, flush and end are accepted in order and the phase follows."""
    state = endpoints.IngestState(models={"ctc", "intent"}, max_frame_bytes=8)
    assert _phase(state) is endpoints.Phase.AWAITING_START
    start = state.on_text(_start(models=["ctc"], channels=2))
    assert state.start == start
    assert _phase(state) is endpoints.Phase.STREAMING
    assert state.on_binary(b"\0" * 8) == 2
    assert state.on_binary(b"") == 0
    assert state.on_text('{"type":"flush"}') == p.Flush()
    assert state.on_text(b'{"type":"end"}') == p.End()
    assert _phase(state) is endpoints.Phase.ENDED


def _ingest_error(state: endpoints.IngestState, frame: str | bytes) -> tuple[str, int | None]:
    got = _attempt(state.on_binary if isinstance(frame, bytes) else state.on_text, frame)
    assert isinstance(got, ProtocolError)
    return got.code, got.close_code


def test_ingest_state_rejects_out_of_order_messages() -> None:
    """Audio or controls before start, a second start, and anything after end are refused."""
    fresh = endpoints.IngestState()
    assert _ingest_error(fresh, b"\0\0") == ("audio_before_start", 1008)
    assert _ingest_error(fresh, '{"type":"flush"}') == ("unexpected_message", 1008)
    assert _ingest_error(fresh, '{"type":"end"}') == ("unexpected_message", 1008)
    assert _ingest_error(fresh, '{"type":"subscribe","streams":["*"]}')[0] == "unexpected_message"
    assert _ingest_error(endpoints.IngestState(models={"ctc"}), _start(models=["big"])) == (
        "unknown_model",
        1008,
    )
    state = endpoints.IngestState(max_message_bytes=200, max_frame_bytes=4)
    state.on_text(_start())
    assert _ingest_error(state, _start()) == ("unexpected_message", 1008)
    assert _ingest_error(state, b"\0") == ("bad_audio_frame", 1007)
    assert _ingest_error(state, b"\0" * 6) == ("frame_too_large", 1009)
    assert _ingest_error(state, "x" * 201) == ("message_too_large", 1009)
    state.on_text('{"type":"end"}')
    assert _ingest_error(state, b"\0\0") == ("unexpected_message", 1008)
    assert _ingest_error(state, '{"type":"flush"}') == ("unexpected_message", 1008)


def test_any_model_accepted_without_a_list() -> None:
    """With no model list the state machine leaves model names to the server."""
    msg = endpoints.IngestState().on_text(_start(models=["anything"]))
    assert isinstance(msg, p.Start)
    assert msg.models == ("anything",)


def test_events_state() -> None:
    """The events endpoint takes subscribe (repeatedly, replacing) and refuses everything else."""
    state = endpoints.EventsState()
    assert state.subscription is None
    first = state.on_text('{"type":"subscribe","streams":["a"]}')
    assert first.events == ("*",)
    second = state.on_text('{"type":"subscribe","streams":["*"],"events":["utterance"]}')
    assert state.subscription == second
    for frame in (_start(), '{"type":"end"}'):
        with pytest.raises(ProtocolError, match="belongs on /v1/stream") as info:
            state.on_text(frame)
        assert info.value.close_code == 1008
    with pytest.raises(ProtocolError) as info:
        state.on_binary(b"\0\0")
    assert info.value.code == "unexpected_message"


def test_ingest_counts_frames_of_every_encoding() -> None:
    """Frames of a 24-bit stereo stream are counted in 6-byte sample frames."""
    state = endpoints.IngestState()
    state.on_text(_start(encoding="pcm_s24le", channels=2))
    assert state.on_binary(b"\0" * 12) == 2
    assert _ingest_error(state, b"\0" * 8) == ("bad_audio_frame", 1007)

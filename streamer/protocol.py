"""The wire protocol, version 1: client messages, server events and how to read them, no I/O.

Every message is one compact JSON object with a ``type`` (text frame); audio is raw PCM in binary
frames. See docs/protocol.md for the spec. Messages are frozen dataclasses: ``encode()`` writes
them, :func:`decode_client_text` and :func:`decode_event` read them with the generic reader of
:mod:`streamer.wire`, so the two directions cannot drift. Reading either returns a message or
raises :class:`~streamer.errors.ProtocolError` (nothing else) with a stable ``code`` and the
WebSocket ``close_code`` from :data:`CLOSE_CODES` (both defined in :mod:`streamer.wire` and
re-exported here). Which messages are legal when is the job of :mod:`streamer.endpoints`. The
audio format of ``start`` follows the one rule of :mod:`streamer.audio` (rate, encodings,
channels), shared with every other endpoint.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Final

from streamer.audio import AudioFormat
from streamer.errors import AudioFormatError, ProtocolError

# Result parts live in streamer.results; re-exported (``X as X``) for callers.
from streamer.results import (
    Alternative as Alternative,
    Intent as Intent,
    Latency as Latency,
    ModelInfo as ModelInfo,
    PartialWord as PartialWord,
    Transcript as Transcript,
    Word as Word,
)

# The error and close codes are defined with the codec; re-exported (``X as X``) for callers.
from streamer.wire import (
    AUDIO_BEFORE_START as AUDIO_BEFORE_START,
    BAD_AUDIO_FRAME as BAD_AUDIO_FRAME,
    BAD_FIELD as BAD_FIELD,
    BAD_JSON as BAD_JSON,
    BAD_MESSAGE as BAD_MESSAGE,
    CLOSE_CODES as CLOSE_CODES,
    CLOSE_GOING_AWAY as CLOSE_GOING_AWAY,
    CLOSE_INTERNAL as CLOSE_INTERNAL,
    CLOSE_INVALID_DATA as CLOSE_INVALID_DATA,
    CLOSE_NORMAL as CLOSE_NORMAL,
    CLOSE_POLICY as CLOSE_POLICY,
    CLOSE_TOO_BIG as CLOSE_TOO_BIG,
    FRAME_TOO_LARGE as FRAME_TOO_LARGE,
    INTERNAL as INTERNAL,
    MESSAGE_TOO_LARGE as MESSAGE_TOO_LARGE,
    MODEL_FAILED as MODEL_FAILED,
    OVERLOADED as OVERLOADED,
    STREAM_IN_USE as STREAM_IN_USE,
    UNEXPECTED_MESSAGE as UNEXPECTED_MESSAGE,
    UNKNOWN_MODEL as UNKNOWN_MODEL,
    UNKNOWN_TYPE as UNKNOWN_TYPE,
    UNSUPPORTED_FORMAT as UNSUPPORTED_FORMAT,
    WireMessage,
    build,
    close_reason as close_reason,
    load_object,
    protocol_error,
    quote,
)

PROTOCOL_VERSION: Final = "1"
INGEST_PATH: Final = "/v1/stream"
EVENTS_PATH: Final = "/v1/events"

MAX_LIST_LEN: Final = 256
MAX_MESSAGE_BYTES: Final = 65_536
MAX_FRAME_BYTES: Final = 1_048_576
#: Extras a client may ask for in ``start.want``: the utterance's embedding, ``partial`` events
#: while it is spoken, ``eager`` results when silence begins (see docs/protocol.md).
EXTRAS: Final = ("embedding", "partial", "eager")
#: Endpointing knobs a client may override: name -> (lowest, highest) allowed value.
ENDPOINTING_KNOBS: Final[dict[str, tuple[float, float]]] = {
    "min_speech_ms": (10, 5000),
    "min_silence_ms": (50, 10_000),
    "max_utterance_s": (0.5, 300),
    "pre_roll_ms": (0, 2000),
    "post_roll_ms": (0, 2000),
    "vad_mode": (0, 3),
}
#: Live event types a ``"*"`` filter leaves out: a subscriber (or the journal) names them.
OPT_IN_EVENTS: Final = frozenset({"partial", "eager", "resumed"})
#: Event types a subscriber may ask for.
SUBSCRIBABLE: Final = (
    *("started", "speech_started", "utterance", "ended", "error"),
    *sorted(OPT_IN_EVENTS),
)
#: What a stream, model or context name may be (the server never maps a name to a path).
NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def is_name(value: str) -> bool:
    """Whether ``value`` is a valid stream, model or context name (1-64 of [A-Za-z0-9_.-])."""
    return NAME_RE.fullmatch(value) is not None and value not in (".", "..")


def _check_name(value: str, what: str, field: str, *, allow_star: bool = False) -> None:
    if allow_star and value == "*":
        return
    if not is_name(value):
        raise protocol_error(
            BAD_FIELD, f"{what} {quote(value)} must be 1-64 of [A-Za-z0-9_.-]", field=field
        )


# ---------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class Start(WireMessage):
    """Open an ingest stream: audio format, stream name, models, endpointing overrides, extras.

    ``context`` names one of the contexts the server compiled at start (never a path); None:
    the server's default context, if it has one.
    """

    type: ClassVar[str] = "start"
    sample_rate: int
    encoding: str
    channels: int
    stream: str
    models: tuple[str, ...] = ()
    endpointing: dict[str, float] = field(default_factory=dict)
    want: tuple[str, ...] = ()
    context: str | None = None

    def __post_init__(self) -> None:
        try:
            AudioFormat(self.sample_rate, self.encoding, self.channels)
        except AudioFormatError as exc:
            raise protocol_error(UNSUPPORTED_FORMAT, str(exc)) from None
        _check_name(self.stream, "stream", "stream")
        if self.context is not None:
            _check_name(self.context, "context", "context")
        for name in self.models:
            _check_name(name, "model", "models")
        for key, value in self.endpointing.items():
            if key not in ENDPOINTING_KNOBS:
                raise protocol_error(
                    BAD_FIELD, f"unknown endpointing knob {quote(key)}", field="endpointing"
                )
            low, high = ENDPOINTING_KNOBS[key]
            if not low <= value <= high or (key == "vad_mode" and value != int(value)):
                raise protocol_error(
                    BAD_FIELD, f"endpointing.{key} must be in [{low}, {high}]", field="endpointing"
                )
        for extra in self.want:
            if extra not in EXTRAS:
                raise protocol_error(
                    BAD_FIELD, f"unknown extra {quote(extra)} in want", field="want"
                )
        if len(set(self.models)) < len(self.models):
            raise protocol_error(BAD_FIELD, "models must not repeat a name", field="models")
        if len(set(self.want)) < len(self.want):
            raise protocol_error(BAD_FIELD, "want must not repeat a name", field="want")

    @property
    def audio_format(self) -> AudioFormat:
        """The format of the audio frames that follow this message."""
        return AudioFormat(self.sample_rate, self.encoding, self.channels)

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample frame (all channels) in this stream's encoding."""
        return self.audio_format.frame_bytes


@dataclass(frozen=True)
class Flush(WireMessage):
    """End the current utterance now (as if silence had been heard)."""

    type: ClassVar[str] = "flush"


@dataclass(frozen=True)
class End(WireMessage):
    """Flush, deliver every pending result, answer ``ended`` and close with 1000."""

    type: ClassVar[str] = "end"


@dataclass(frozen=True)
class Subscribe(WireMessage):
    """Choose (or replace) which streams' events of which types this connection receives."""

    type: ClassVar[str] = "subscribe"
    streams: tuple[str, ...]
    events: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        if not self.streams or not self.events:
            raise protocol_error(BAD_FIELD, "streams and events must not be empty")
        if len(self.streams) > MAX_LIST_LEN or len(self.events) > MAX_LIST_LEN:
            raise protocol_error(BAD_FIELD, f"at most {MAX_LIST_LEN} streams and events")
        for name in self.streams:
            _check_name(name, "stream", "streams", allow_star=True)
        for event in self.events:
            if event != "*" and event not in SUBSCRIBABLE:
                raise protocol_error(
                    BAD_FIELD, f"cannot subscribe to event type {quote(event)}", field="events"
                )


ClientMessage = Start | Flush | End | Subscribe
CLIENT_MESSAGES: Final[dict[str, type[ClientMessage]]] = {
    c.type: c for c in (Start, Flush, End, Subscribe)
}

# ---------------------------------------------------------------- server -> client


@dataclass(frozen=True)
class Started(WireMessage):
    """Answer to ``start``: the negotiated format, the models, the limits and endpointing.

    ``context``: the context each utterance is understood in (None: no context).
    """

    type: ClassVar[str] = "started"
    stream: str
    sample_rate: int
    encoding: str
    channels: int
    models: tuple[ModelInfo, ...]
    limits: dict[str, float] = field(default_factory=dict)
    endpointing: dict[str, float] = field(default_factory=dict)
    want: tuple[str, ...] = ()
    version: str = PROTOCOL_VERSION
    context: str | None = None


@dataclass(frozen=True)
class SpeechStarted(WireMessage):
    """The segmenter heard speech begin; the utterance with this id will follow."""

    type: ClassVar[str] = "speech_started"
    stream: str
    utterance_id: str
    seq: int
    start_ms: float


@dataclass(frozen=True)
class Utterance(WireMessage):
    """One utterance's results; start/end mark the speech, not the padding around it."""

    type: ClassVar[str] = "utterance"
    stream: str
    utterance_id: str
    seq: int
    start_ms: float
    end_ms: float
    models: tuple[str, ...]
    latency_ms: Latency
    transcript: Transcript | None = None
    intent: Intent | None = None
    labels: tuple[Intent, ...] | None = None
    value: float | None = None
    embedding: tuple[float, ...] | None = None
    lag_ms: float | None = None


@dataclass(frozen=True)
class Partial(WireMessage):
    """What the open utterance says so far (``want: ["partial"]``).

    ``text`` is ``stable_text`` plus the unstable tail; a later partial of the same utterance has
    a higher ``revision`` and a ``stable_text`` that starts with this one's (replace the tail,
    append to the stable text). The final ``utterance`` event replaces them all.
    """

    type: ClassVar[str] = "partial"
    stream: str
    utterance_id: str
    seq: int
    revision: int
    stable_text: str
    text: str
    words: tuple[PartialWord, ...] = ()


@dataclass(frozen=True)
class Eager(WireMessage):
    """The result the utterance will have if silence goes on (``want: ["eager"]``).

    Sent when silence has lasted ``partials.eager_silence_ms`` and the cut can no longer move;
    the final ``utterance`` follows with the same results, or ``resumed`` withdraws it. Its
    fields are those of :class:`Utterance`.
    """

    type: ClassVar[str] = "eager"
    stream: str
    utterance_id: str
    seq: int
    start_ms: float
    end_ms: float
    models: tuple[str, ...]
    latency_ms: Latency
    transcript: Transcript | None = None
    intent: Intent | None = None
    labels: tuple[Intent, ...] | None = None
    value: float | None = None
    embedding: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Resumed(WireMessage):
    """Speech went on after an ``eager`` result: withdraw it; the utterance continues."""

    type: ClassVar[str] = "resumed"
    stream: str
    utterance_id: str
    seq: int


@dataclass(frozen=True)
class Ended(WireMessage):
    """Every result of the stream was sent; the server closes with 1000 next."""

    type: ClassVar[str] = "ended"
    stream: str
    n_utterances: int


@dataclass(frozen=True)
class Subscribed(WireMessage):
    """Answer to ``subscribe``: the filter now in force."""

    type: ClassVar[str] = "subscribed"
    streams: tuple[str, ...]
    events: tuple[str, ...]
    version: str = PROTOCOL_VERSION


@dataclass(frozen=True)
class Dropped(WireMessage):
    """This subscriber was too slow and lost ``count`` events (the oldest) before the next."""

    type: ClassVar[str] = "dropped"
    count: int


@dataclass(frozen=True)
class Error(WireMessage):
    """Something went wrong; ``code`` is one of the stable codes in :data:`CLOSE_CODES`."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    stream: str | None = None
    utterance_id: str | None = None
    field: str | None = None
    """For ``bad_field``: the field of the client's message at fault, when the server knows it
    (match on this, not on ``message``)."""

    @classmethod
    def from_exception(cls, exc: ProtocolError, *, stream: str | None = None) -> Error:
        """Return the error event that reports ``exc``."""
        return cls(code=exc.code, message=str(exc), stream=stream, field=exc.field)


LiveEvent = Partial | Eager | Resumed
ServerEvent = Started | SpeechStarted | Utterance | LiveEvent | Ended | Subscribed | Dropped | Error
_EVENTS = (Started, SpeechStarted, Utterance, Partial, Eager, Resumed, Ended, Subscribed, Dropped)
SERVER_EVENTS: Final[dict[str, type[ServerEvent]]] = {c.type: c for c in (*_EVENTS, Error)}

# ---------------------------------------------------------------- reading


def decode_client_text(text: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> ClientMessage:
    """Parse one text frame from a client.

    Unknown fields are rejected (a typo must not be silently ignored).

    Raises:
        ProtocolError: the text is too big, not JSON, not a known message, or a field is invalid.
    """
    obj = load_object(text, max_bytes=max_bytes)
    kind = obj["type"]
    if kind not in CLIENT_MESSAGES:
        raise protocol_error(UNKNOWN_TYPE, f"unknown message type {quote(kind)}")
    return typing.cast(ClientMessage, build(CLIENT_MESSAGES[kind], obj, kind, strict=True))


def decode_event(text: str | bytes, *, max_bytes: int = 1 << 24) -> ServerEvent:
    """Parse one server event (for clients and tests); unknown fields are ignored.

    Raises:
        ProtocolError: the text is not JSON, not a known event, or a field is invalid.
    """
    obj = load_object(text, max_bytes=max_bytes)
    kind = obj["type"]
    if kind not in SERVER_EVENTS:
        raise protocol_error(UNKNOWN_TYPE, f"unknown event type {quote(kind)}")
    return typing.cast(ServerEvent, build(SERVER_EVENTS[kind], obj, kind, strict=False))

"""The wire protocol, version 1: client messages, server events and per-endpoint state, no I/O.

Every message is one compact JSON object with a ``type`` (text frame); audio is raw PCM in binary
frames. See docs/protocol.md for the spec. Messages are frozen dataclasses: ``encode()`` writes
them, :func:`decode_client_text` and :func:`decode_event` read them with one generic reader
driven by the dataclass fields, so the two directions cannot drift. Reading either returns a
message or raises :class:`~streamer.errors.ProtocolError` (nothing else) with a stable ``code``
and the WebSocket ``close_code`` from :data:`CLOSE_CODES`. The server feeds every frame to
:class:`IngestState` (``/v1/stream``) or :class:`EventsState` (``/v1/events``), which also say
which messages are legal when.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
import types
import typing
from collections.abc import Collection
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Final

from streamer.errors import ProtocolError

PROTOCOL_VERSION: Final = "1"
INGEST_PATH: Final = "/v1/stream"
EVENTS_PATH: Final = "/v1/events"

# Stable error codes (the ``code`` of error events and ProtocolError).
BAD_JSON: Final = "bad_json"
BAD_MESSAGE: Final = "bad_message"
BAD_FIELD: Final = "bad_field"
UNKNOWN_TYPE: Final = "unknown_type"
UNEXPECTED_MESSAGE: Final = "unexpected_message"
AUDIO_BEFORE_START: Final = "audio_before_start"
BAD_AUDIO_FRAME: Final = "bad_audio_frame"
FRAME_TOO_LARGE: Final = "frame_too_large"
MESSAGE_TOO_LARGE: Final = "message_too_large"
UNSUPPORTED_FORMAT: Final = "unsupported_format"
UNKNOWN_MODEL: Final = "unknown_model"
STREAM_IN_USE: Final = "stream_in_use"
MODEL_FAILED: Final = "model_failed"
OVERLOADED: Final = "overloaded"
INTERNAL: Final = "internal"

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_INVALID_DATA: Final = 1007
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL: Final = 1011
#: Close code per error code; None: the connection stays open (an error event only).
CLOSE_CODES: Final[dict[str, int | None]] = {
    BAD_JSON: CLOSE_INVALID_DATA,
    BAD_MESSAGE: CLOSE_INVALID_DATA,
    BAD_FIELD: CLOSE_INVALID_DATA,
    BAD_AUDIO_FRAME: CLOSE_INVALID_DATA,
    UNKNOWN_TYPE: CLOSE_POLICY,
    UNEXPECTED_MESSAGE: CLOSE_POLICY,
    AUDIO_BEFORE_START: CLOSE_POLICY,
    UNSUPPORTED_FORMAT: CLOSE_POLICY,
    UNKNOWN_MODEL: CLOSE_POLICY,
    STREAM_IN_USE: CLOSE_POLICY,
    FRAME_TOO_LARGE: CLOSE_TOO_BIG,
    MESSAGE_TOO_LARGE: CLOSE_TOO_BIG,
    MODEL_FAILED: None,
    OVERLOADED: None,
    INTERNAL: CLOSE_INTERNAL,
}

#: Bytes per sample of each audio encoding.
ENCODINGS: Final = {"pcm_s16le": 2, "pcm_f32le": 4}
CHANNELS: Final = (1, 2)
MIN_SAMPLE_RATE_HZ: Final = 8000
MAX_SAMPLE_RATE_HZ: Final = 192_000
MAX_LIST_LEN: Final = 256
MAX_MESSAGE_BYTES: Final = 65_536
MAX_FRAME_BYTES: Final = 1_048_576
#: Extras a client may ask for in ``start.want``.
EXTRAS: Final = ("embedding",)
#: Endpointing knobs a client may override: name -> (lowest, highest) allowed value.
ENDPOINTING_KNOBS: Final[dict[str, tuple[float, float]]] = {
    "min_speech_ms": (10, 5000),
    "min_silence_ms": (50, 10_000),
    "max_utterance_s": (0.5, 300),
    "pre_roll_ms": (0, 2000),
    "post_roll_ms": (0, 2000),
    "vad_mode": (0, 3),
}
#: Event types a subscriber may ask for.
SUBSCRIBABLE: Final = ("started", "speech_started", "utterance", "ended", "error")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _plain(obj: object) -> object:
    """Return ``obj`` as JSON-ready lists, dicts and scalars (None dataclass fields left out)."""
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
        return {k: _plain(v) for k, v in obj._asdict().items()}
    if is_dataclass(obj) and not isinstance(obj, type):
        pairs = ((f.name, getattr(obj, f.name)) for f in fields(obj))
        return {k: _plain(v) for k, v in pairs if v is not None}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def close_reason(exc: ProtocolError) -> str:
    """Return ``exc``'s message cut to fit a WebSocket close frame (123 UTF-8 bytes)."""
    raw = str(exc).encode()
    return str(exc) if len(raw) <= 123 else raw[:120].decode(errors="ignore") + "..."


def _error(code: str, message: str) -> ProtocolError:
    return ProtocolError(code, message, close_code=CLOSE_CODES[code])


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_name(value: str, what: str, *, allow_star: bool = False) -> None:
    if allow_star and value == "*":
        return
    if not _NAME_RE.fullmatch(value) or value in (".", ".."):
        raise _error(BAD_FIELD, f"{what} {_short(value)} must be 1-64 of [A-Za-z0-9_.-]")


class _Wire:
    """Shared encode for messages and events; subclasses are dataclasses with a ``type``."""

    type: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict: ``type`` first, None fields left out."""
        return {"type": self.type, **typing.cast(dict[str, Any], _plain(self))}

    def encode(self) -> str:
        """Return the compact JSON text of this message."""
        return json.dumps(
            self.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )


# ---------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class Start(_Wire):
    """Open an ingest stream: audio format, stream name, models, endpointing overrides, extras."""

    type: ClassVar[str] = "start"
    sample_rate: int
    encoding: str
    channels: int
    stream: str
    models: tuple[str, ...] = ()
    endpointing: dict[str, float] = field(default_factory=dict)
    want: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not MIN_SAMPLE_RATE_HZ <= self.sample_rate <= MAX_SAMPLE_RATE_HZ:
            raise _error(UNSUPPORTED_FORMAT, f"sample_rate {self.sample_rate} is not supported")
        if self.encoding not in ENCODINGS:
            raise _error(UNSUPPORTED_FORMAT, f"encoding {_short(self.encoding)} is not supported")
        if self.channels not in CHANNELS:
            raise _error(UNSUPPORTED_FORMAT, f"channels must be 1 or 2, got {self.channels}")
        _check_name(self.stream, "stream")
        for name in self.models:
            _check_name(name, "model")
        for key, value in self.endpointing.items():
            if key not in ENDPOINTING_KNOBS:
                raise _error(BAD_FIELD, f"unknown endpointing knob {_short(key)}")
            low, high = ENDPOINTING_KNOBS[key]
            if not low <= value <= high or (key == "vad_mode" and value != int(value)):
                raise _error(BAD_FIELD, f"endpointing.{key} must be in [{low}, {high}]")
        for extra in self.want:
            if extra not in EXTRAS:
                raise _error(BAD_FIELD, f"unknown extra {_short(extra)} in want")
        if len(set(self.models)) < len(self.models) or len(set(self.want)) < len(self.want):
            raise _error(BAD_FIELD, "models and want must not repeat a name")

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample frame (all channels) in this stream's encoding."""
        return ENCODINGS[self.encoding] * self.channels


@dataclass(frozen=True)
class Flush(_Wire):
    """End the current utterance now (as if silence had been heard)."""

    type: ClassVar[str] = "flush"


@dataclass(frozen=True)
class End(_Wire):
    """Flush, deliver every pending result, answer ``ended`` and close with 1000."""

    type: ClassVar[str] = "end"


@dataclass(frozen=True)
class Subscribe(_Wire):
    """Choose (or replace) which streams' events of which types this connection receives."""

    type: ClassVar[str] = "subscribe"
    streams: tuple[str, ...]
    events: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        if not self.streams or not self.events:
            raise _error(BAD_FIELD, "streams and events must not be empty")
        if len(self.streams) > MAX_LIST_LEN or len(self.events) > MAX_LIST_LEN:
            raise _error(BAD_FIELD, f"at most {MAX_LIST_LEN} streams and events")
        for name in self.streams:
            _check_name(name, "stream", allow_star=True)
        for event in self.events:
            if event != "*" and event not in SUBSCRIBABLE:
                raise _error(BAD_FIELD, f"cannot subscribe to event type {_short(event)}")


ClientMessage = Start | Flush | End | Subscribe
CLIENT_MESSAGES: Final[dict[str, type[ClientMessage]]] = {
    c.type: c for c in (Start, Flush, End, Subscribe)
}

# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Word:
    """One recognised word; times in ms from the stream's first sample."""

    word: str
    start_ms: float
    end_ms: float
    confidence: float


@dataclass(frozen=True)
class Transcript:
    """A CTC transcript: lower-case text and its words.

    ``grammar`` names the intent whose word list held the search (the bundle's grammar for the
    utterance's intent); None when the search was free.
    """

    text: str
    words: tuple[Word, ...] = ()
    grammar: str | None = None


class Alternative(typing.NamedTuple):
    """A runner-up label and its probability."""

    name: str
    confidence: float


@dataclass(frozen=True)
class Intent:
    """The best label of one label set, its runners-up, and whether it is too unsure to act on."""

    name: str
    confidence: float
    alternatives: tuple[Alternative, ...] = ()
    abstain: bool = False


@dataclass(frozen=True)
class Latency:
    """Where an utterance's time went, in ms."""

    end_of_speech_to_emit: float
    queued: float
    encode: float
    decode: float


@dataclass(frozen=True)
class ModelInfo:
    """A model a stream's utterances run through."""

    name: str
    task: str
    arch: str


# ---------------------------------------------------------------- server -> client


@dataclass(frozen=True)
class Started(_Wire):
    """Answer to ``start``: the negotiated format, the models, the limits and endpointing."""

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


@dataclass(frozen=True)
class SpeechStarted(_Wire):
    """The segmenter heard speech begin; the utterance with this id will follow."""

    type: ClassVar[str] = "speech_started"
    stream: str
    utterance_id: str
    seq: int
    start_ms: float


@dataclass(frozen=True)
class Utterance(_Wire):
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
class Ended(_Wire):
    """Every result of the stream was sent; the server closes with 1000 next."""

    type: ClassVar[str] = "ended"
    stream: str
    n_utterances: int


@dataclass(frozen=True)
class Subscribed(_Wire):
    """Answer to ``subscribe``: the filter now in force."""

    type: ClassVar[str] = "subscribed"
    streams: tuple[str, ...]
    events: tuple[str, ...]
    version: str = PROTOCOL_VERSION


@dataclass(frozen=True)
class Dropped(_Wire):
    """This subscriber was too slow and lost ``count`` events (the oldest) before the next."""

    type: ClassVar[str] = "dropped"
    count: int


@dataclass(frozen=True)
class Error(_Wire):
    """Something went wrong; ``code`` is one of the stable codes in :data:`CLOSE_CODES`."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    stream: str | None = None
    utterance_id: str | None = None

    @classmethod
    def from_exception(cls, exc: ProtocolError, *, stream: str | None = None) -> Error:
        """Return the error event that reports ``exc``."""
        return cls(code=exc.code, message=str(exc), stream=stream)


ServerEvent = Started | SpeechStarted | Utterance | Ended | Subscribed | Dropped | Error
SERVER_EVENTS: Final[dict[str, type[ServerEvent]]] = {
    c.type: c for c in (Started, SpeechStarted, Utterance, Ended, Subscribed, Dropped, Error)
}

# ---------------------------------------------------------------- reading


def decode_client_text(text: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> ClientMessage:
    """Parse one text frame from a client.

    Unknown fields are rejected (a typo must not be silently ignored).

    Raises:
        ProtocolError: the text is too big, not JSON, not a known message, or a field is invalid.
    """
    obj = _load(text, max_bytes=max_bytes)
    kind = obj["type"]
    if kind not in CLIENT_MESSAGES:
        raise _error(UNKNOWN_TYPE, f"unknown message type {_short(kind)}")
    return typing.cast(ClientMessage, _object(CLIENT_MESSAGES[kind], obj, kind, strict=True))


def decode_event(text: str | bytes, *, max_bytes: int = 1 << 24) -> ServerEvent:
    """Parse one server event (for clients and tests); unknown fields are ignored.

    Raises:
        ProtocolError: the text is not JSON, not a known event, or a field is invalid.
    """
    obj = _load(text, max_bytes=max_bytes)
    kind = obj["type"]
    if kind not in SERVER_EVENTS:
        raise _error(UNKNOWN_TYPE, f"unknown event type {_short(kind)}")
    return typing.cast(ServerEvent, _object(SERVER_EVENTS[kind], obj, kind, strict=False))


def _reject(value: str) -> None:
    raise ValueError(f"{value} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        raise ValueError("duplicate key")
    return obj


def _load(text: str | bytes, *, max_bytes: int) -> dict[str, Any]:
    n_bytes = len(text)
    if isinstance(text, str) and n_bytes <= max_bytes:
        n_bytes = len(text.encode("utf-8", "surrogatepass"))
    if n_bytes > max_bytes:
        raise _error(MESSAGE_TOO_LARGE, f"text message of {n_bytes} bytes exceeds {max_bytes}")
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        obj = json.loads(text, parse_constant=_reject, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _error(BAD_JSON, f"not valid JSON: {_short(str(exc))}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise _error(BAD_MESSAGE, "a message must be a JSON object with a string 'type'")
    return obj


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _object(cls: Any, obj: dict[str, Any], path: str, *, strict: bool) -> object:
    hints = _hints(cls)
    if is_dataclass(cls):
        required = {
            f.name: f.default is MISSING and f.default_factory is MISSING for f in fields(cls)
        }
    else:  # a NamedTuple
        required = {name: name not in cls._field_defaults for name in cls._fields}
    unknown = set(obj) - set(required) - {"type"}
    if strict and unknown:
        raise _error(BAD_FIELD, f"{path}: unknown field {_short(min(unknown))}")
    kwargs = {}
    for name, needed in required.items():
        if name in obj:
            kwargs[name] = _convert(hints[name], obj[name], f"{path}.{name}", strict=strict)
        elif needed:
            raise _error(BAD_FIELD, f"{path}: missing field {name!r}")
    return cls(**kwargs)


def _convert(tp: Any, value: object, path: str, *, strict: bool) -> object:
    """Check ``value`` (parsed JSON) against the annotation ``tp`` and build the typed value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):  # always ``X | None`` here
        inner = next(a for a in args if a is not type(None))
        return None if value is None else _convert(inner, value, path, strict=strict)
    if origin is tuple:
        if isinstance(value, list):
            return tuple(
                _convert(args[0], v, f"{path}[{i}]", strict=strict) for i, v in enumerate(value)
            )
    elif origin is dict:
        if isinstance(value, dict):
            return {k: _convert(args[1], v, f"{path}.{k}", strict=strict) for k, v in value.items()}
    elif hasattr(tp, "__dataclass_fields__") or hasattr(tp, "_fields"):
        if isinstance(value, dict):
            return _object(tp, value, path, strict=strict)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):  # str or bool
        return value
    raise _error(BAD_FIELD, f"{path} must be {_TYPE_NAMES.get(origin or tp, 'an object')}")


_TYPE_NAMES: Final[dict[Any, str]] = {
    tuple: "an array",
    dict: "an object",
    float: "a finite number",
    int: "an integer",
    str: "a string",
    bool: "a boolean",
}

# ---------------------------------------------------------------- state


def check_audio_frame(
    data: bytes, *, encoding: str, channels: int, max_bytes: int = MAX_FRAME_BYTES
) -> int:
    """Check one binary audio frame and return how many sample frames (per channel) it holds.

    Raises:
        ProtocolError: ``frame_too_large`` (1009) or ``bad_audio_frame`` (1007) for a byte count
            that is not a whole number of samples of every channel.
    """
    width = ENCODINGS[encoding] * channels
    if len(data) > max_bytes:
        raise _error(FRAME_TOO_LARGE, f"audio frame of {len(data)} bytes exceeds {max_bytes}")
    if len(data) % width:
        raise _error(
            BAD_AUDIO_FRAME,
            f"audio frame of {len(data)} bytes is not a multiple of {width} "
            f"({encoding}, {channels} channel(s))",
        )
    return len(data) // width


class Phase(enum.Enum):
    """Where an ingest connection is in its life."""

    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    ENDED = "ended"


class IngestState:
    """The rules of ``/v1/stream``: feed every frame in, act on what comes back.

    Contract: call :meth:`on_text` for each text frame and :meth:`on_binary` for each binary
    frame, in arrival order. Each returns the parsed message (or the sample count) when it is
    legal now, or raises :class:`ProtocolError`, after which the server sends an ``error`` event
    and closes with ``exc.close_code``. Legal order: ``start``, then audio and ``flush`` in any
    order, then ``end``; nothing after ``end``.
    """

    def __init__(
        self,
        *,
        models: Collection[str] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        """Create the state of one new connection.

        Args:
            models: names ``start.models`` may choose from; None accepts any name.
            max_message_bytes: largest text frame accepted.
            max_frame_bytes: largest binary audio frame accepted.
        """
        self.models = models
        self.max_message_bytes = max_message_bytes
        self.max_frame_bytes = max_frame_bytes
        self.phase = Phase.AWAITING_START
        self.start: Start | None = None

    def on_text(self, text: str | bytes) -> ClientMessage:
        """Parse a text frame and advance the state; see the class contract."""
        msg = decode_client_text(text, max_bytes=self.max_message_bytes)
        if isinstance(msg, Subscribe):
            raise _error(UNEXPECTED_MESSAGE, f"subscribe belongs on {EVENTS_PATH}")
        if self.phase is Phase.ENDED:
            raise _error(UNEXPECTED_MESSAGE, f"{msg.type} after end")
        if isinstance(msg, Start):
            if self.start is not None:
                raise _error(UNEXPECTED_MESSAGE, "start sent twice")
            unknown = [m for m in msg.models if self.models is not None and m not in self.models]
            if unknown:
                raise _error(UNKNOWN_MODEL, f"no model named {_short(unknown[0])} is loaded")
            self.start = msg
            self.phase = Phase.STREAMING
        elif self.start is None:
            raise _error(UNEXPECTED_MESSAGE, f"{msg.type} before start")
        elif isinstance(msg, End):
            self.phase = Phase.ENDED
        return msg

    def on_binary(self, data: bytes) -> int:
        """Check an audio frame; return its sample frames per channel (see the class contract)."""
        if self.start is None:
            raise _error(AUDIO_BEFORE_START, "audio before start")
        if self.phase is Phase.ENDED:
            raise _error(UNEXPECTED_MESSAGE, "audio after end")
        return check_audio_frame(
            data,
            encoding=self.start.encoding,
            channels=self.start.channels,
            max_bytes=self.max_frame_bytes,
        )


class EventsState:
    """The rules of ``/v1/events``: only ``subscribe``, as often as wanted (each replaces the last).

    Contract: as :class:`IngestState`; :attr:`subscription` is the filter in force (None: nothing
    is delivered yet).
    """

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        """Create the state of one new subscriber connection."""
        self.max_message_bytes = max_message_bytes
        self.subscription: Subscribe | None = None

    def on_text(self, text: str | bytes) -> Subscribe:
        """Parse a text frame; return the new subscription."""
        msg = decode_client_text(text, max_bytes=self.max_message_bytes)
        if not isinstance(msg, Subscribe):
            raise _error(UNEXPECTED_MESSAGE, f"{msg.type} belongs on {INGEST_PATH}")
        self.subscription = msg
        return msg

    def on_binary(self, data: bytes) -> None:
        """Reject a binary frame: this endpoint takes no audio."""
        raise _error(UNEXPECTED_MESSAGE, f"audio belongs on {INGEST_PATH}")

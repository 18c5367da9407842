"""The wire layer under :mod:`streamer.protocol`: error codes, close codes and the JSON codec.

Pure (no I/O). A message is a frozen dataclass deriving from :class:`WireMessage`, whose
``encode()`` writes compact JSON; :func:`load_object` and :func:`build` read JSON back into such
a dataclass with one generic reader driven by the dataclass fields, so the two directions cannot
drift. Reading either returns a value or raises :class:`~streamer.errors.ProtocolError`
(nothing else) with a stable ``code`` and the WebSocket ``close_code`` from :data:`CLOSE_CODES`.
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, ClassVar, Final

from streamer.errors import ProtocolError

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
#: Longest close reason a WebSocket close frame can carry, in UTF-8 bytes.
MAX_CLOSE_REASON_BYTES: Final = 123
#: Longest quotation of client input in an error message, in characters.
MAX_QUOTE_CHARS: Final = 40


def protocol_error(code: str, message: str, *, field: str | None = None) -> ProtocolError:
    """Return the :class:`ProtocolError` of ``code``, with its close code from the table.

    ``field``: the client message's field at fault, sent with the error (``bad_field``).
    """
    return ProtocolError(code, message, close_code=CLOSE_CODES[code], field=field)


def top_field(path: str) -> str | None:
    """The message's own field a :func:`build` path is in: ``"start.want[0]"`` -> ``"want"``."""
    parts = path.split(".", 2)
    return parts[1].split("[", 1)[0] if len(parts) > 1 else None


def quote(value: object) -> str:
    """Return ``repr(value)`` cut to :data:`MAX_QUOTE_CHARS`, to quote client input safely."""
    text = repr(value)
    return text if len(text) <= MAX_QUOTE_CHARS else text[: MAX_QUOTE_CHARS - 3] + "..."


def close_reason(exc: ProtocolError) -> str:
    """Return ``exc``'s message cut to fit a WebSocket close frame (123 UTF-8 bytes)."""
    raw = str(exc).encode()
    if len(raw) <= MAX_CLOSE_REASON_BYTES:
        return str(exc)
    return raw[: MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."


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


class WireMessage:
    """Shared encode for messages and events; subclasses are dataclasses with a ``type``."""

    type: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict: ``type`` first, None fields left out."""
        return {"type": self.type, **typing.cast(dict[str, Any], _plain(self))}

    def encode(self) -> str:
        """Return the compact JSON text of this message.

        Raises:
            ValueError: a number is not finite (JSON has no NaN).
        """
        return json.dumps(
            self.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )


def _reject(value: str) -> None:
    raise ValueError(f"{value} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        raise ValueError("duplicate key")
    return obj


def load_object(text: str | bytes, *, max_bytes: int) -> dict[str, Any]:
    """Parse one JSON message: an object with a string ``type``, at most ``max_bytes`` of UTF-8.

    Raises:
        ProtocolError: ``message_too_large``, ``bad_json`` (also NaN, duplicate keys, bad
            UTF-8, too deep) or ``bad_message`` (not an object with a string ``type``).
    """
    n_bytes = len(text)
    if isinstance(text, str) and n_bytes <= max_bytes:
        n_bytes = len(text.encode("utf-8", "surrogatepass"))
    if n_bytes > max_bytes:
        raise protocol_error(
            MESSAGE_TOO_LARGE, f"text message of {n_bytes} bytes exceeds {max_bytes}"
        )
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        obj = json.loads(text, parse_constant=_reject, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise protocol_error(BAD_JSON, f"not valid JSON: {quote(str(exc))}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise protocol_error(BAD_MESSAGE, "a message must be a JSON object with a string 'type'")
    return obj


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls: Any, obj: dict[str, Any], path: str, *, strict: bool) -> object:
    """Build the dataclass or NamedTuple ``cls`` from parsed JSON, checking every field's type.

    Args:
        cls: the class to build; its field annotations drive the checks.
        obj: the parsed JSON object (a ``type`` key is ignored).
        path: where ``obj`` is in the message, for error messages.
        strict: reject unknown fields (client messages) rather than ignore them (events).

    Raises:
        ProtocolError: ``bad_field`` for a missing, unknown or mistyped field, or whatever the
            class's own checks raise.
    """
    hints = _hints(cls)
    if is_dataclass(cls):
        required = {
            f.name: f.default is MISSING and f.default_factory is MISSING for f in fields(cls)
        }
    else:  # a NamedTuple
        required = {name: name not in cls._field_defaults for name in cls._fields}
    unknown = set(obj) - set(required) - {"type"}
    if strict and unknown:
        raise protocol_error(
            BAD_FIELD,
            f"{path}: unknown field {quote(min(unknown))}",
            field=top_field(path) or min(unknown),
        )
    kwargs = {}
    for name, needed in required.items():
        if name in obj:
            kwargs[name] = _convert(hints[name], obj[name], f"{path}.{name}", strict=strict)
        elif needed:
            raise protocol_error(
                BAD_FIELD, f"{path}: missing field {name!r}", field=top_field(path) or name
            )
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
            return build(tp, value, path, strict=strict)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):  # str or bool
        return value
    raise protocol_error(
        BAD_FIELD,
        f"{path} must be {_TYPE_NAMES.get(origin or tp, 'an object')}",
        field=top_field(path),
    )


_TYPE_NAMES: Final[dict[Any, str]] = {
    tuple: "an array",
    dict: "an object",
    float: "a finite number",
    int: "an integer",
    str: "a string",
    bool: "a boolean",
}

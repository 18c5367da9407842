"""Per-endpoint state machines of the wire protocol: which frame is legal when, no I/O.

The server feeds every frame of a connection to :class:`IngestState` (``/v1/stream``) or
:class:`EventsState` (``/v1/events``) and acts on what comes back: a parsed message, a sample
count, or a :class:`~streamer.errors.ProtocolError` whose ``close_code`` ends the connection.
Messages themselves are in :mod:`streamer.protocol`.
"""

from __future__ import annotations

import enum
from collections.abc import Collection

from streamer.audio import ENCODINGS
from streamer.protocol import (
    AUDIO_BEFORE_START,
    BAD_AUDIO_FRAME,
    EVENTS_PATH,
    FRAME_TOO_LARGE,
    INGEST_PATH,
    MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES,
    UNEXPECTED_MESSAGE,
    UNKNOWN_MODEL,
    ClientMessage,
    End,
    Start,
    Subscribe,
    decode_client_text,
)
from streamer.wire import protocol_error, quote


def check_audio_frame(
    data: bytes, *, encoding: str, channels: int, max_bytes: int = MAX_FRAME_BYTES
) -> int:
    """Check one binary audio frame and return how many sample frames (per channel) it holds.

    Args:
        data: the frame's bytes.
        encoding: a name from :data:`streamer.audio.ENCODINGS` (already validated).
        channels: interleaved channels per sample frame.
        max_bytes: largest frame accepted.

    Raises:
        ProtocolError: ``frame_too_large`` (1009) or ``bad_audio_frame`` (1007) for a byte count
            that is not a whole number of samples of every channel.
    """
    width = ENCODINGS[encoding].width * channels
    if len(data) > max_bytes:
        raise protocol_error(
            FRAME_TOO_LARGE, f"audio frame of {len(data)} bytes exceeds {max_bytes}"
        )
    if len(data) % width:
        raise protocol_error(
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
            raise protocol_error(UNEXPECTED_MESSAGE, f"subscribe belongs on {EVENTS_PATH}")
        if self.phase is Phase.ENDED:
            raise protocol_error(UNEXPECTED_MESSAGE, f"{msg.type} after end")
        if isinstance(msg, Start):
            if self.start is not None:
                raise protocol_error(UNEXPECTED_MESSAGE, "start sent twice")
            unknown = [m for m in msg.models if self.models is not None and m not in self.models]
            if unknown:
                raise protocol_error(UNKNOWN_MODEL, f"no model named {quote(unknown[0])} is loaded")
            self.start = msg
            self.phase = Phase.STREAMING
        elif self.start is None:
            raise protocol_error(UNEXPECTED_MESSAGE, f"{msg.type} before start")
        elif isinstance(msg, End):
            self.phase = Phase.ENDED
        return msg

    def on_binary(self, data: bytes) -> int:
        """Check an audio frame; return its sample frames per channel (see the class contract)."""
        if self.start is None:
            raise protocol_error(AUDIO_BEFORE_START, "audio before start")
        if self.phase is Phase.ENDED:
            raise protocol_error(UNEXPECTED_MESSAGE, "audio after end")
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
            raise protocol_error(UNEXPECTED_MESSAGE, f"{msg.type} belongs on {INGEST_PATH}")
        self.subscription = msg
        return msg

    def on_binary(self, data: bytes) -> None:
        """Reject a binary frame: this endpoint takes no audio."""
        raise protocol_error(UNEXPECTED_MESSAGE, f"audio belongs on {INGEST_PATH}")

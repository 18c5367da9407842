"""The exception hierarchy every module raises from; callers catch :class:`StreamerError`."""


class StreamerError(Exception):
    """Base class of every error streamer raises on purpose."""


class ConfigError(StreamerError):
    """A configuration value or command-line flag is invalid."""


class ManifestError(StreamerError):
    """A bundle's manifest.json is missing, unreadable or does not match the schema."""


class ModelError(StreamerError):
    """A model bundle cannot be loaded or a run of it failed."""


class PreemptedError(ModelError):
    """A background run (a partial) was stopped midway because an utterance needed the engine."""


class OverloadedError(StreamerError):
    """The engine is too far behind to run an utterance (see :mod:`streamer.overload`)."""


class AudioFormatError(StreamerError):
    """Audio bytes or a requested audio format cannot be handled."""


class ProtocolError(StreamerError):
    """A wire message is malformed or not allowed in the current state.

    Attributes:
        code: the stable machine-readable error code sent to the client.
        close_code: the WebSocket close code to use if the connection must close, else None.
        field: for ``bad_field``, the client message's field at fault (``"want"``), when known.
    """

    def __init__(
        self, code: str, message: str, *, close_code: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code
        self.field = field

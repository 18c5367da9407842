"""The configuration sections only the serving side reads: security, journal, bus, intents.

Frozen dataclasses with units in the names, like every section of :mod:`streamer.config` (which
gathers them into :class:`~streamer.config.Config` and loads them from TOML, environment and
flags); each checks its own values when built and raises :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Final
from urllib.parse import SplitResult, urlsplit

from streamer.errors import ConfigError

#: Journal durability policies (``journal.fsync``).
FSYNC_POLICIES: Final = ("none", "interval", "always")
_TOKEN_CHARS: Final = frozenset(string.ascii_letters + string.digits + string.punctuation)


def positive(obj: object, *names: str) -> None:
    """Raise ConfigError naming the first of ``names`` whose value on ``obj`` is not > 0."""
    section = type(obj).__name__.removesuffix("Config").lower()
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{section}.{name} must be positive, got {getattr(obj, name)}")


@dataclass(frozen=True)
class SecurityConfig:
    """Access control and transport security (the ``[security]`` config section)."""

    token: str | None = None
    """Bearer token every endpoint requires; None: no token is asked for."""
    token_file: str | None = None
    """File whose first line is the token (keeps it out of ``ps`` and shell history)."""
    origins: str = ""
    """Comma-separated Origins browsers may connect from (``https://app.example``); empty: any.

    Requests without an Origin header (non-browser clients) are not affected."""
    public_healthz: bool = True
    """``/healthz`` answers without the token, for liveness probes (it only says ``ok``)."""
    certfile: str | None = None
    """PEM certificate chain; with ``keyfile``, the server speaks TLS (``wss://``)."""
    keyfile: str | None = None
    """PEM private key of ``certfile`` (None: the key is inside ``certfile``)."""

    def __post_init__(self) -> None:
        if self.token is not None and self.token_file is not None:
            raise ConfigError("security.token and security.token_file exclude each other")
        if self.token is not None:
            check_token(self.token, "security.token")
        for origin in parse_origins(self.origins):
            parts = _split_url(origin)
            if (
                parts is None
                or parts.scheme not in ("http", "https")
                or not parts.netloc
                or parts.path
            ):
                raise ConfigError(
                    f"security.origins: {origin!r} is not an origin like https://host[:port]"
                )
        if self.keyfile is not None and self.certfile is None:
            raise ConfigError("security.keyfile needs security.certfile")


def _split_url(url: str) -> SplitResult | None:
    """The URL's parts, None when urllib cannot split it (an unclosed IPv6 bracket)."""
    try:
        return urlsplit(url)
    except ValueError:
        return None


def check_token(token: str, what: str) -> None:
    """Refuse a token that is empty or not printable ASCII without spaces.

    Raises:
        ConfigError: the token cannot be sent in a header or a query parameter as is.
    """
    if not token or not set(token) <= _TOKEN_CHARS:
        raise ConfigError(f"{what} must be printable ASCII without spaces, and not empty")


def parse_origins(text: str) -> tuple[str, ...]:
    """Split a comma-separated origin list into normalised origins (lower case, no slash)."""
    return tuple(o.strip().lower().rstrip("/") for o in text.split(",") if o.strip())


@dataclass(frozen=True)
class JournalConfig:
    """The event journal (the ``[journal]`` config section)."""

    path: str | None = None
    """JSONL file every emitted event is appended to; None: no journal."""
    fsync: str = "interval"
    """``none``, ``interval`` (every ``fsync_interval_s``) or ``always`` (after every batch)."""
    fsync_interval_s: float = 1.0
    """With ``fsync = "interval"``: seconds between fsyncs at most."""
    max_bytes: int = 64 << 20
    """A file reaching this size is rotated to ``PATH.1``."""
    keep_files: int = 4
    """Rotated files kept (``PATH.1`` .. ``PATH.N``); older ones are deleted."""
    queue_len: int = 10_000
    """Events waiting for the writer thread at most; past it the oldest are lost (and counted)."""

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigError(f"journal.fsync must be none, interval or always, got {self.fsync!r}")
        for name in ("fsync_interval_s", "max_bytes", "queue_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"journal.{name} must be positive, got {getattr(self, name)}")
        if self.keep_files < 0:
            raise ConfigError(f"journal.keep_files must be >= 0, got {self.keep_files}")


@dataclass(frozen=True)
class BusConfig:
    """The event bus shared by several replicas (the ``[bus]`` section; docs/scaling.md)."""

    url: str | None = None
    """``redis://HOST:PORT[/DB]`` (``rediss://``: TLS) of Redis or Valkey; None: no bus."""
    password_file: str | None = None
    """File whose first line is the bus server's password (keeps it out of the URL and ``ps``)."""
    ca_file: str | None = None
    """PEM CA bundle checking a ``rediss://`` server's certificate (None: the system's)."""
    key: str = "streamer:events"
    """The Redis Stream every replica appends to; ``KEY:seq`` and ``KEY:lease:NAME`` beside it."""
    max_events: int = 1_000_000
    """Events the bus keeps (``MAXLEN ~``): the replay window of ``since`` and ``journal``."""
    retention_s: float = 86_400.0
    """Seconds the bus keeps an event at least (by the bus server's clock); 0: no age limit.

    Older events are trimmed as new ones are appended, in whole stream nodes, so some stay a
    little longer (docs/scaling.md); ``max_events`` applies too, whichever is reached first."""
    lease_ms: int = 10_000
    """A stream name's lease; renewed every third of it while the stream lives."""
    timeout_s: float = 1.0
    """Seconds one bus command may take before the bus counts as down."""
    block_ms: int = 1_000
    """How long one blocking read of the bus waits for new events."""
    reconnect_max_s: float = 5.0
    """Longest wait between reconnection attempts (the backoff doubles up to it)."""
    replay_max_events: int = 100_000
    """Events one ``since`` replay sends at most; an older gap is reported as ``dropped``."""

    def __post_init__(self) -> None:
        if self.url is not None:
            parts = _split_url(self.url)
            if parts is None or parts.scheme not in ("redis", "rediss"):
                raise ConfigError(f"bus.url must be redis://HOST:PORT[/DB], got {self.url!r}")
        positive(self, "max_events", "lease_ms", "timeout_s", "block_ms", "reconnect_max_s")
        positive(self, "replay_max_events")
        if not 0 <= self.retention_s < float("inf"):
            raise ConfigError(f"bus.retention_s must be >= 0 (0: off), got {self.retention_s}")


@dataclass(frozen=True)
class IntentsConfig:
    """Intents defined by example sentences: the ``[intents]`` config section (``--intents``)."""

    file: str = ""
    """The intents file (TOML or YAML); empty: no intents file."""
    text_embedder: str = ""
    """The text embedder bundle that embeds the examples; empty: ``exported/text-minilm-l6``."""
    model: str = ""
    """The served model whose embedding is matched; empty: the one whose embedding is as wide
    as the text embedder's (it must be the only one)."""
    embed_batch: int = 32
    """Example sentences embedded per text-embedder run at start."""
    threads: int = 0
    """onnxruntime threads of the text embedder at start (0: one per CPU core)."""

    def __post_init__(self) -> None:
        positive(self, "embed_batch")
        if self.threads < 0:
            raise ConfigError("intents.threads must be >= 0")

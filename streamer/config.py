"""Configuration: frozen dataclasses with units in the names, loaded from TOML, env and flags.

Precedence, lowest first: defaults here < ``--config FILE`` (TOML, one table per section:
``[server]``, ``[engine]``, ``[decoder]``, ``[segmenter]``, ``[partials]`` and the serving
sections, ``[intents]`` among them) < ``STREAMER_<SECTION>_<FIELD>`` environment variables (e.g.
``STREAMER_SERVER_PORT=9000``) < command-line flags. Every limit the daemon enforces is a field
here, so it has a name, a unit and a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.contexts import DEFAULT_BLANK_PENALTY, DEFAULT_MAX_GAP_PER_FRAME
from streamer.errors import ConfigError
from streamer.partials import PartialsConfig
from streamer.segmenter_config import SegmenterConfig
from streamer.serving_config import (
    BusConfig,
    IntentsConfig,
    JournalConfig,
    SecurityConfig,
    positive,
)


@dataclass(frozen=True)
class ServerConfig:
    """The WebSocket server and its limits."""

    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 to accept other machines."""
    port: int = 8765
    """TCP port; 0 picks a free one (the bound port is logged)."""
    max_message_bytes: int = 1 << 18
    """Largest WebSocket message accepted; bigger ones close the connection with 1009. 256 KiB
    holds over 1 s of 48 kHz stereo float audio and bounds buffered input per connection
    (16 queued messages) to 4 MiB."""
    max_connections: int = 256
    """Open connections at most, ingest and subscribers together; past it: HTTP 503."""
    subscriber_queue: int = 1000
    """Events buffered per subscriber; a slow one loses its oldest and is told how many."""
    ping_interval_s: float = 20.0
    """Seconds between keepalive pings."""
    ping_timeout_s: float = 20.0
    """Seconds to wait for a pong before the peer is considered dead."""
    shutdown_timeout_s: float = 10.0
    """On SIGINT/SIGTERM, seconds to finish in-flight utterances before closing anyway."""
    open_timeout_s: float = 10.0
    """Seconds a client has to complete the opening handshake."""
    start_timeout_s: float = 10.0
    """Seconds an ingest client has to send its ``start`` message."""
    close_timeout_s: float = 5.0
    """Seconds to wait for a peer's closing handshake before dropping its TCP connection.

    A peer that vanished silently is reaped within ping_interval_s + ping_timeout_s + this."""
    client_error_log_interval_s: float = 10.0
    """Seconds between two log lines about refused client messages, across all connections and
    endpoints (the others are counted, reported with the next line and summed at shutdown)."""

    def __post_init__(self) -> None:
        positive(
            self,
            "max_message_bytes",
            "max_connections",
            "subscriber_queue",
            "ping_interval_s",
            "ping_timeout_s",
            "shutdown_timeout_s",
            "open_timeout_s",
            "start_timeout_s",
            "close_timeout_s",
            "client_error_log_interval_s",
        )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"server.port must be 0-65535, got {self.port}")


@dataclass(frozen=True)
class EngineConfig:
    """The inference engine."""

    provider: str = "auto"
    """``auto`` (CUDA when it really loads, else CPU), ``cuda`` or ``cpu``."""
    intra_op_threads: int = 0
    """onnxruntime threads inside one run; 0 means one per CPU core."""
    workers: int = 1
    """Inference threads (runs in parallel); 1 keeps per-run latency lowest on small machines."""
    max_pending_utterances: int = 64
    """Utterances waiting for the engine at most; past it new ones get an ``overloaded`` error."""
    lag_report_ms: float = 250.0
    """A result that waited this long (engine queue, earlier utterances) carries ``lag_ms``."""
    shed_unwatched_at: float = 0.5
    """Engine load (pending / max_pending_utterances) from which utterances nobody receives are
    dropped unrun (see streamer/overload.py for the whole degradation order)."""
    refuse_streams_at: float = 0.75
    """Engine load from which a new stream's ``start`` is refused (``busy``, close 1013)."""
    max_batch: int = 8
    """Utterances of one model and length that may share one run; 1 turns batching off."""
    max_batch_s: float = 4.0
    """Audio seconds in one batched run at most (on a CPU only short utterances gain)."""
    batch_wait_ms: float = 4.0
    """How long an idle engine waits for more utterances of the same length before running."""
    bucket_ms: float = 120.0
    """Every utterance is zero-padded up to a multiple of this, so that utterances of different
    streams can share a run (docs/throughput.md); 0 keeps exact lengths."""
    priority_boost_ms: float = 2000.0
    """Utterances of streams that run an intent (classify) model queue as if they had arrived
    this much earlier than caption-only work (docs/throughput.md)."""

    def __post_init__(self) -> None:
        if self.provider not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"engine.provider must be auto, cuda or cpu, got {self.provider!r}")
        if self.intra_op_threads < 0:
            raise ConfigError("engine.intra_op_threads must be >= 0")
        positive(self, "workers", "max_pending_utterances")
        if self.lag_report_ms < 0:
            raise ConfigError("engine.lag_report_ms must be >= 0")
        if not 0 < self.shed_unwatched_at <= self.refuse_streams_at <= 1:
            raise ConfigError(
                "engine: need 0 < shed_unwatched_at <= refuse_streams_at <= 1, got "
                f"{self.shed_unwatched_at} and {self.refuse_streams_at}"
            )
        positive(self, "max_batch", "max_batch_s")
        for name in ("batch_wait_ms", "bucket_ms", "priority_boost_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"engine.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class DecoderConfig:
    """How model outputs become transcripts and intents."""

    abstain_below: float = 0.5
    """An intent whose top probability is below this is flagged ``abstain``."""
    n_best: int = 3
    """Alternatives reported per label set."""
    ctc: str = "auto"
    """CTC search: ``auto`` (beam search with the bundle's language model when it ships one,
    else greedy), ``beam`` or ``greedy``."""
    beam_width: int = 64
    """Hypotheses the CTC beam search keeps per frame."""
    beam_token_min_logp: float = -8.0
    """The beam search skips characters below this log-probability in a frame."""
    grammars: bool = True
    """Hold a ctc bundle's transcript to the word list it ships for the utterance's intent (as
    said by a classify bundle served beside it); false: always the free search."""
    grammar_max_gap_per_frame: float = 0.0
    """The word list holds the transcript only when its best path scores at most this many nats
    per emitting frame below the free path; past it the word list does not fit what was said
    (a command word the intent model took for digits) and the free search reads it. 0 (chosen on
    validation speakers, bench/real_voices.py --part validation: lowest mean WER of inf, 1,
    0.5, 0.25, 0) keeps it only when it is the free greedy path; inf always holds it."""
    transcript_intent: bool = True
    """Combine a classify bundle's intent with what its transcript head (``text_intent.json``,
    when the bundle ships one) reads from the utterance's ctc transcript; false: the audio
    classifier's intent alone."""
    contexts: str = ""
    """Contexts (Rhino-format YAML) compiled at start: ``[NAME=]FILE`` items separated by commas
    (the name defaults to the file's stem); the first is every stream's default (``--context``)."""
    context_max_gap_per_frame: float = DEFAULT_MAX_GAP_PER_FRAME
    """A context rejects an utterance (``understood: false``) when its best in-context path scores
    this many nats per emitting frame below the free path (chosen on validation voices:
    bench/contexts.py)."""
    context_blank_penalty: float = DEFAULT_BLANK_PENALTY
    """Nats taken off the blank's log-probability in every frame before a context reads an
    utterance, so that characters the model is unsure of are spelt rather than dropped (chosen
    on validation voices: bench/contexts.py)."""

    def __post_init__(self) -> None:
        if not self.grammar_max_gap_per_frame >= 0:
            raise ConfigError("decoder.grammar_max_gap_per_frame must be >= 0")
        if not self.context_max_gap_per_frame >= 0:
            raise ConfigError("decoder.context_max_gap_per_frame must be >= 0")
        if not 0 <= self.context_blank_penalty <= 20:
            raise ConfigError("decoder.context_blank_penalty must be within 0-20")
        if not 0.0 <= self.abstain_below <= 1.0:
            raise ConfigError("decoder.abstain_below must be within 0-1")
        positive(self, "n_best")
        positive(self, "beam_width")
        if self.ctc not in ("auto", "beam", "greedy"):
            raise ConfigError(f"decoder.ctc must be auto, beam or greedy, got {self.ctc!r}")
        if not self.beam_token_min_logp < 0:
            raise ConfigError("decoder.beam_token_min_logp must be negative")


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    partials: PartialsConfig = field(default_factory=PartialsConfig)
    intents: IntentsConfig = field(default_factory=IntentsConfig)


SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "engine": EngineConfig,
    "decoder": DecoderConfig,
    "segmenter": SegmenterConfig,
    "security": SecurityConfig,
    "journal": JournalConfig,
    "bus": BusConfig,
    "partials": PartialsConfig,
    "intents": IntentsConfig,
}


def load_config(
    *,
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build a Config from defaults, a TOML file, ``STREAMER_*`` variables and flag overrides.

    Raises:
        ConfigError: unreadable file, unknown section or key, or a value of the wrong type.
    """
    layers: list[Mapping[str, Mapping[str, Any]]] = []
    if path is not None:
        layers.append(_read_toml(path))
    if env is not None:
        layers.append(_from_env(env))
    if overrides is not None:
        layers.append(overrides)
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for layer in layers:
        for section, values in layer.items():
            if section not in SECTIONS:
                raise ConfigError(
                    f"unknown config section [{section}] (known: {', '.join(SECTIONS)})"
                )
            merged[section].update(values)
    return Config(**{name: build_section(SECTIONS[name], merged[name]) for name in SECTIONS})


def build_section(cls: type[Any], values: Mapping[str, Any], *, base: Any = None) -> Any:
    """Build one section dataclass from ``values`` (on top of ``base`` if given), checking types.

    Raises:
        ConfigError: an unknown key or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    section = cls.__name__.removesuffix("Config").lower()
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown setting {section}.{key} (known: {', '.join(sorted(known))})"
            )
        checked[key] = _coerce(f"{section}.{key}", hints[key], value)
    try:
        return dataclasses.replace(base, **checked) if base is not None else cls(**checked)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {section} settings: {exc}") from None


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Check (and, for env strings, convert) one value against its declared type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        hint = options[0]
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, str):
            value = _parse(name, value, int)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, str):
            value = _parse(name, value, float)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{name} must be {hint.__name__}, got {value!r}")


def _parse(name: str, text: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{name} must be {kind.__name__}, got {text!r}") from None


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: {section!r} must be a [table]")
    return data


def _from_env(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in env.items():
        if not key.startswith("STREAMER_"):
            continue
        rest = key.removeprefix("STREAMER_").lower()
        section, _, name = rest.partition("_")
        if section in SECTIONS and name:
            out.setdefault(section, {})[name] = value
    return out

"""What every stream shares, and the overload rules applied to the live daemon.

:class:`Services` is built once per daemon (``streamer.app.build_services``) and handed to every
source and server. The rules themselves are pure functions in :mod:`streamer.overload`; the
functions here only read the live figures (the runner's pending utterances, the hub's
subscribers, the journal) and apply them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streamer import overload, protocol as proto
from streamer.config import Config, DecoderConfig
from streamer.contexts import Alphabet, Context, load_context
from streamer.decoding import OutputDecoder
from streamer.engine.bundles import load_manifest
from streamer.engine.runner import Runner
from streamer.errors import ConfigError, ModelError
from streamer.pubsub import Hub
from streamer.serve.client_errors import ClientErrorLog
from streamer.serve.journal import Journal
from streamer.serve.metrics import Metrics
from streamer.streams.registry import StreamRegistry

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What all streams share: configuration, the engine runner, decoders, hub and registry.

    ``streams`` admits new streams by the daemon's rules: a free name, and an engine not too far
    behind (:func:`admit_new_stream`). ``client_errors`` rate-limits the log lines that refused
    client messages cost, across every endpoint. ``contexts`` holds the contexts compiled at start
    (:func:`compile_contexts`): context name -> ctc model name -> compiled context; the first is
    every stream's default (:attr:`default_context`).
    """

    config: Config
    runner: Runner
    decoders: dict[str, OutputDecoder]
    hub: Hub[str]
    streams: StreamRegistry = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)
    journal: Journal | None = None
    client_errors: ClientErrorLog = field(default_factory=ClientErrorLog)
    contexts: dict[str, dict[str, Context]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.streams = StreamRegistry(admission=lambda: admit_new_stream(self))

    @property
    def default_context(self) -> str | None:
        """The context of a stream that names none: the first one given, or None."""
        return next(iter(self.contexts), None)


def compile_contexts(
    decoder: DecoderConfig, models: Mapping[str, Path]
) -> dict[str, dict[str, Context]]:
    """Read and compile every context of ``decoder.contexts`` for every ctc model, once.

    Runs before the bundles' graphs are loaded, so that a bad context file is the only thing a
    failed start prints.

    Args:
        decoder: the decoder settings (``contexts``).
        models: model name -> bundle folder of every model to serve (their manifests are read).

    Returns:
        context name -> ctc model name -> compiled context (empty without contexts).

    Raises:
        ContextError: a context file cannot be read or is invalid (``FILE:LINE: problem``).
        ConfigError: contexts are given but no ctc model is loaded.
    """
    files = context_files(decoder.contexts)
    if not files:
        return {}
    alphabets: dict[str, Alphabet] = {}
    for model, bundle_dir in models.items():
        manifest = load_manifest(bundle_dir)
        if manifest.task == "ctc":
            try:
                alphabets[model] = Alphabet.of(manifest)
            except ModelError as exc:
                raise ConfigError(f"contexts cannot use model {model}: {exc}") from None
    if not alphabets:
        raise ConfigError("contexts need a ctc model (--model of a ctc bundle)")
    compiled: dict[str, dict[str, Context]] = {}
    for name, path in files.items():
        started = time.perf_counter()
        by_alphabet: dict[Alphabet, Context] = {}
        for model, alphabet in alphabets.items():
            if alphabet not in by_alphabet:
                by_alphabet[alphabet] = load_context(path, alphabet, name=name)
            compiled.setdefault(name, {})[model] = by_alphabet[alphabet]
        log.info(
            "context %s (%s): %d intents, %d expressions, compiled in %.2f s",
            name,
            path,
            len(next(iter(by_alphabet.values())).intents),
            len(next(iter(by_alphabet.values())).spec.expressions),
            time.perf_counter() - started,
        )
    started = time.perf_counter()
    first = next(iter(next(iter(compiled.values())).values()))
    first.graph.prepare()  # one compiled search serves every context
    log.info("context search compiled in %.2f s", time.perf_counter() - started)
    return compiled


def load(services: Services) -> float:
    """The engine's load now: pending utterances over ``engine.max_pending_utterances``."""
    return overload.load_fraction(
        services.runner.pending, services.config.engine.max_pending_utterances
    )


def admit_partial(services: Services) -> bool:
    """Whether a partial run may start now (step 0 of the overload contract)."""
    batcher = services.runner.batcher
    partials = services.config.partials
    return overload.partial_allowed(
        load(services),
        shed_at=services.config.engine.shed_unwatched_at,
        utterance_waiting=batcher.foreground_waiting,
        share=batcher.background_share(partials.share_window_s),
        max_share=partials.engine_share,
    )


def accepting_streams(services: Services) -> bool:
    """Whether a new stream would be admitted now (what ``/readyz`` reports)."""
    return overload.accepting_streams(
        load(services), refuse_at=services.config.engine.refuse_streams_at
    )


def admit_new_stream(services: Services) -> None:
    """The registry's load rule: refuse a new stream while the engine is far behind.

    Raises:
        ProtocolError: code ``busy``, close code 1013.
    """
    overload.check_new_stream(load(services), refuse_at=services.config.engine.refuse_streams_at)


def watched(services: Services, stream: str) -> bool:
    """Whether any subscriber (other than the journal) would receive ``stream``'s results."""
    journal = services.journal.subscriber if services.journal is not None else None
    return overload.watched(services.hub, stream, exclude=journal)


def admit_utterance(services: Services, stream: str, *, live: bool) -> None:
    """Check that an utterance of ``stream`` is worth running now (step 2 of the contract).

    Args:
        services: the shared services.
        stream: the utterance's stream.
        live: whether the stream's own client (its ingest connection) still receives results.

    Raises:
        OverloadedError: the engine is behind and nobody would receive the result.
    """
    now = load(services)
    shed_at = services.config.engine.shed_unwatched_at
    if live or now < shed_at:  # the subscribers are only looked at when it matters
        return
    overload.check_utterance(
        now, shed_at=shed_at, stream=stream, live=live, watched=watched(services, stream)
    )


def context_files(text: str) -> dict[str, Path]:
    """Parse ``decoder.contexts`` (``[NAME=]FILE`` items, comma-separated) into name -> file.

    Raises:
        ConfigError: a name is not 1-64 of ``[A-Za-z0-9_.-]``, a file is empty, or a name repeats.
    """
    out: dict[str, Path] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, file = item.partition("=")
        file = file.strip() if sep else item
        path = Path(file)
        name = name.strip() if sep else path.stem
        if not proto.is_name(name) or not file:
            raise ConfigError(
                f"decoder.contexts: {item!r} must be NAME=FILE, NAME 1-64 of [A-Za-z0-9_.-]"
            )
        if name in out:
            raise ConfigError(f"decoder.contexts: the name {name!r} is given twice")
        out[name] = path
    return out

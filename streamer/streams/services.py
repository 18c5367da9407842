"""What every stream shares, and the overload rules applied to the live daemon.

:class:`Services` is built once per daemon (``streamer.app.build_services``) and handed to every
source and server. The rules themselves are pure functions in :mod:`streamer.overload`; the
functions here only read the live figures (the runner's pending utterances, the hub's
subscribers, the journal) and apply them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamer import overload
from streamer.config import Config
from streamer.decoding import OutputDecoder
from streamer.engine.runner import Runner
from streamer.pubsub import Hub
from streamer.serve.client_errors import ClientErrorLog
from streamer.serve.journal import Journal
from streamer.serve.metrics import Metrics
from streamer.streams.registry import StreamRegistry


@dataclass
class Services:
    """What all streams share: configuration, the engine runner, decoders, hub and registry.

    ``streams`` admits new streams by the daemon's rules: a free name, and an engine not too far
    behind (:func:`admit_new_stream`). ``client_errors`` rate-limits the log lines that refused
    client messages cost, across every endpoint.
    """

    config: Config
    runner: Runner
    decoders: dict[str, OutputDecoder]
    hub: Hub[str]
    streams: StreamRegistry = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)
    journal: Journal | None = None
    client_errors: ClientErrorLog = field(default_factory=ClientErrorLog)

    def __post_init__(self) -> None:
        self.streams = StreamRegistry(admission=lambda: admit_new_stream(self))


def load(services: Services) -> float:
    """The engine's load now: pending utterances over ``engine.max_pending_utterances``."""
    return overload.load_fraction(
        services.runner.pending, services.config.engine.max_pending_utterances
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

"""Prometheus metrics: one registry per daemon, fed by one-line calls from the pipeline and server.

Each :class:`Metrics` owns its own ``CollectorRegistry`` (never the process-global one), so two
daemons in one process (tests) never share or clash over a metric. Two kinds of figures:

- events, recorded as they happen: latency and engine histograms, errors by code, connections;
- state, read at scrape time by a collector over the live services: the runner's pending
  utterances, each stream's backlog and lag, each subscriber's queue depth and drops, the models
  and the provider each one runs on.

Everything here runs on the event loop thread (recording calls come from the pipeline and the
server, scrapes from the HTTP route), so no locking is needed. ``/metrics`` is served by
:func:`streamer.serve.routes.metrics_route`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from streamer import protocol as proto

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from streamer.engine.runner import Runner
    from streamer.pubsub import Hub, Subscriber
    from streamer.streams.registry import StreamRegistry

log = logging.getLogger(__name__)

#: End of speech → final result, in seconds.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
#: One encoder run (or its wait for the engine), in seconds.
ENGINE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Utterances per encoder run.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
METRICS_PATH = "/metrics"
#: The classic text format (what ``generate_latest`` writes): every Prometheus version reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _RunTiming(Protocol):
    """What :meth:`Metrics.observe_runs` reads from a runner result."""

    @property
    def queued_ms(self) -> float: ...

    @property
    def encode_ms(self) -> float: ...

    @property
    def batch_size(self) -> int: ...


class Metrics:
    """The daemon's metrics and the registry they live in.

    Call contract: the ``observe_*`` and ``*_opened``/``*_closed`` methods are cheap and never
    raise; call :meth:`watch` once with the live parts whose state a scrape should report.
    """

    def __init__(self) -> None:
        """Create every metric in a fresh registry of its own."""
        self.registry = CollectorRegistry()
        reg = self.registry
        self.latency = Histogram(
            "streamer_end_of_speech_to_final_seconds",
            "End of speech in the audio to the utterance's final result being sent.",
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.encode = Histogram(
            "streamer_encode_seconds",
            "One encoder run (inference only).",
            ["model"],
            buckets=ENGINE_BUCKETS_S,
            registry=reg,
        )
        self.queued = Histogram(
            "streamer_engine_queued_seconds",
            "Time an encoder run waited for an engine thread.",
            ["model"],
            buckets=ENGINE_BUCKETS_S,
            registry=reg,
        )
        self.batch = Histogram(
            "streamer_batch_size",
            "Size of the batched run each utterance's encoder run was part of "
            "(observed once per utterance, so a run of 4 counts 4 times).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.utterances = Counter(
            "streamer_utterances",
            "Utterances whose result (or error) was sent, by outcome.",
            ["outcome"],
            registry=reg,
        )
        self.errors = Counter(
            "streamer_errors", "Error events sent, by stable error code.", ["code"], registry=reg
        )
        self.connections = Gauge(
            "streamer_connections", "Open connections, by endpoint.", ["endpoint"], registry=reg
        )
        self.connections_total = Counter(
            "streamer_connections_accepted",
            "Connections accepted since start, by endpoint.",
            ["endpoint"],
            registry=reg,
        )
        self.live = Counter(
            "streamer_live_work",
            "Partial and eager work (start.want), by kind (partial, eager) and outcome: run, "
            "sent, skipped (the stream's previous partial still running), dropped (step 0 of "
            "the overload order), preempted (a partial run stopped for an utterance), reused (an "
            "eager run became the final), resumed.",
            ["kind", "outcome"],
            registry=reg,
        )
        self.dropped_retired = 0
        self._pending: dict[tuple[str, int], float] = {}
        self._subscribers: dict[int, tuple[str, Subscriber[str]]] = {}
        self._watching = False

    # ------------------------------------------------------------------ recording

    def utterance_pending(self, stream: str, seq: int) -> None:
        """An utterance was cut and handed to the engine (starts its lag clock)."""
        self._pending[(stream, seq)] = time.perf_counter()

    def utterance_done(self, stream: str, seq: int, event: proto.ServerEvent) -> None:
        """An utterance's result (or error) is being sent."""
        self._pending.pop((stream, seq), None)
        if isinstance(event, proto.Utterance):
            self.utterances.labels("ok").inc()
            self.latency.observe(event.latency_ms.end_of_speech_to_emit / 1000.0)
        elif isinstance(event, proto.Error):
            self.utterances.labels("error").inc()
            self.error(event.code)

    def observe_runs(self, models: Sequence[str], runs: Iterable[_RunTiming]) -> None:
        """Record one utterance's encoder runs (one per model)."""
        for model, run in zip(models, runs, strict=False):
            self.encode.labels(model).observe(run.encode_ms / 1000.0)
            self.queued.labels(model).observe(run.queued_ms / 1000.0)
            self.batch.labels(model).observe(run.batch_size)

    def live_work(self, kind: str, outcome: str) -> None:
        """Count one partial or eager step (see :class:`streamer.streams.live.LiveCounters`)."""
        self.live.labels(kind, outcome).inc()

    def error(self, code: str) -> None:
        """Count one error event of ``code``."""
        self.errors.labels(code).inc()

    def connection_opened(self, endpoint: str) -> None:
        """A connection to ``endpoint`` (a path, or ``wyoming``) was accepted."""
        self.connections.labels(endpoint).inc()
        self.connections_total.labels(endpoint).inc()

    def connection_closed(self, endpoint: str) -> None:
        """A connection to ``endpoint`` ended."""
        self.connections.labels(endpoint).dec()

    def subscriber_added(self, name: str, sub: Subscriber[str]) -> None:
        """Report ``sub``'s queue depth and drops under the label ``subscriber=name``."""
        self._subscribers[id(sub)] = (name, sub)

    def subscriber_removed(self, sub: Subscriber[str]) -> None:
        """Stop reporting ``sub``; its drops stay in the all-time total."""
        if self._subscribers.pop(id(sub), None) is not None:
            self.dropped_retired += sub.n_dropped

    # ------------------------------------------------------------------ reading

    def watch(self, *, runner: Runner, streams: StreamRegistry, hub: Hub[str]) -> None:
        """Report the live state of ``runner``, ``streams`` and ``hub`` from now on.

        Only the first call counts: one daemon has one runner, one registry and one hub.
        """
        if not self._watching:
            self._watching = True
            self.registry.register(_LiveState(self, runner=runner, streams=streams, hub=hub))

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)

    def lag_s(self, now: float) -> dict[str, float]:
        """Per stream, the age of its oldest utterance still waiting for a result."""
        lag: dict[str, float] = {}
        for (stream, _), since in self._pending.items():
            lag[stream] = max(lag.get(stream, 0.0), now - since)
        return lag

    def subscribers(self) -> list[tuple[str, Subscriber[str]]]:
        """The live subscribers being reported, with their labels."""
        return list(self._subscribers.values())


class _LiveState(Collector):
    """Reads the daemon's live state at scrape time."""

    def __init__(
        self, metrics: Metrics, *, runner: Runner, streams: StreamRegistry, hub: Hub[str]
    ) -> None:
        self.metrics = metrics
        self.runner = runner
        self.streams = streams
        self.hub = hub

    def describe(self) -> Iterable[Metric]:
        return []  # names are only known at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        metrics, runner = self.metrics, self.runner
        yield _gauge(
            "streamer_runner_pending_utterances",
            "Utterances waiting for or running in the engine.",
            runner.pending,
        )
        yield _gauge(
            "streamer_runner_max_pending_utterances",
            "Pending utterances allowed before new ones get an overloaded error.",
            runner.config.max_pending_utterances,
        )
        stats = runner.batcher.stats
        busy = CounterMetricFamily(
            "streamer_engine_busy_seconds",
            "Engine run time summed over workers, by lane (background: partial runs).",
            labels=["lane"],
        )
        busy.add_metric(["utterance"], stats.busy_s - stats.background_s)
        busy.add_metric(["background"], stats.background_s)
        yield busy
        streams = self.streams.backlogs()
        yield _gauge(
            "streamer_streams", "Live streams (ingest, microphone, Wyoming).", len(streams)
        )
        backlog = GaugeMetricFamily(
            "streamer_stream_backlog_utterances",
            "Per live stream, utterances handed to the engine whose result was not sent yet.",
            labels=["stream"],
        )
        for name, n_utterances in sorted(streams.items()):
            backlog.add_metric([name], n_utterances)
        yield backlog
        lag = GaugeMetricFamily(
            "streamer_stream_lag_seconds",
            "Per stream, age of its oldest utterance still waiting for a result (0: none).",
            labels=["stream"],
        )
        ages = metrics.lag_s(time.perf_counter())
        for name in sorted(set(streams) | set(ages)):
            lag.add_metric([name], ages.get(name, 0.0))
        yield lag
        yield from _subscriber_metrics(metrics, len(self.hub))
        info = InfoMetricFamily(
            "streamer_model",
            "Loaded bundles and the execution provider each one runs on.",
            labels=["model"],
        )
        for name, enc in sorted(runner.encoders.items()):
            m = enc.manifest
            info.add_metric(
                [name],
                {
                    "arch": m.arch,
                    "task": m.task,
                    "provider": enc.provider.provider,
                    "quantization": m.quantization or "none",
                },
            )
        yield info


def _subscriber_metrics(metrics: Metrics, n_subscribers: int) -> Iterator[Metric]:
    yield _gauge("streamer_subscribers", "Live event subscribers.", n_subscribers)
    depth = GaugeMetricFamily(
        "streamer_subscriber_queue_depth",
        "Per subscriber, events queued and not yet written to its socket.",
        labels=["subscriber"],
    )
    dropped = CounterMetricFamily(
        "streamer_subscriber_dropped_events",
        "Per live subscriber, events dropped (oldest first) because it read too slowly.",
        labels=["subscriber"],
    )
    live = metrics.subscribers()
    for name, sub in live:
        depth.add_metric([name], len(sub))
        dropped.add_metric([name], sub.n_dropped)
    yield depth
    yield dropped
    yield CounterMetricFamily(
        "streamer_dropped_events",
        "Events dropped for slow subscribers since start, all subscribers together.",
        value=metrics.dropped_retired + sum(sub.n_dropped for _, sub in live),
    )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)

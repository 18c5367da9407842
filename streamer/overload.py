"""The overload contract: how far behind results are, and what the server gives up, in order.

The engine's load is its pending utterances (``Runner.pending``) as a fraction of
``engine.max_pending_utterances``. As it rises the server degrades in a fixed order, each step
keeping everything the previous one kept:

1. **Behind** (any load): a result that waited at least ``engine.lag_report_ms`` between the
   segmenter's decision and its emission, beyond its own compute (engine queue plus earlier
   utterances of its stream), carries ``lag_ms``.
2. **Shed the unwatched** (load >= ``engine.shed_unwatched_at``): an utterance nobody will
   receive (no live ingest connection, no subscriber whose filter takes the stream's
   ``utterance`` events; the journal does not count) is not run; an ``overloaded`` error is
   published for it instead, so the journal shows the gap.
3. **Refuse new streams** (load >= ``engine.refuse_streams_at``): a ``start`` is answered with
   an ``error`` of code ``busy`` and close code 1013 (try again later); ``/readyz`` says 503.
   Streams already open go on.
4. **Refuse utterances** (load = 1): an utterance of any stream gets an ``overloaded`` error
   (``Runner.reserve``); its stream goes on.

Queues stay bounded throughout: nothing here waits for the engine to catch up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from streamer import protocol as proto
from streamer.engine.runner import OverloadedError
from streamer.errors import ProtocolError

if TYPE_CHECKING:
    from streamer.segmenter import SegmenterConfig
    from streamer.streams.pipeline import Services

#: Error code of a ``start`` refused because the engine is behind.
BUSY: Final = "busy"
#: WebSocket close code 1013, "Try Again Later" (IANA registry).
CLOSE_TRY_AGAIN_LATER: Final = 1013
#: Streams one ingest connection may carry (fixed by the protocol: ``start`` only once).
STREAMS_PER_CONNECTION: Final = 1


def load(services: Services) -> float:
    """The engine's load: pending utterances over ``engine.max_pending_utterances``."""
    return services.runner.pending / services.config.engine.max_pending_utterances


def accepting_streams(services: Services) -> bool:
    """Whether a new stream would be admitted now (step 3 of the contract)."""
    return load(services) < services.config.engine.refuse_streams_at


def admit_stream(services: Services) -> None:
    """Check that a new stream may start now.

    Raises:
        ProtocolError: code ``busy``, close code 1013, when the engine is too far behind.
    """
    if not accepting_streams(services):
        raise ProtocolError(
            BUSY,
            "the engine is behind; new streams are refused for now, try again later",
            close_code=CLOSE_TRY_AGAIN_LATER,
        )


def watched(services: Services, stream: str) -> bool:
    """Whether any subscriber (other than the journal) would receive ``stream``'s results."""
    journal = services.journal.subscriber if services.journal is not None else None
    # The hub's subscriber tuple is copied on write, so reading it here is safe.
    subscribers = services.hub._subscribers
    return any(s is not journal and s.matches("utterance", stream) for s in subscribers)


def admit_utterance(services: Services, stream: str, *, live: bool) -> None:
    """Check that an utterance of ``stream`` is worth running now (step 2 of the contract).

    Args:
        services: the shared services.
        stream: the utterance's stream.
        live: whether the stream's own client (its ingest connection) still receives results.

    Raises:
        OverloadedError: the engine is behind and nobody would receive the result.
    """
    if live or load(services) < services.config.engine.shed_unwatched_at:
        return
    if not watched(services, stream):
        raise OverloadedError(
            f"engine behind: utterance of stream {stream!r} dropped, nobody receives it"
        )


def with_lag(
    event: proto.Utterance, *, since_decision_ms: float, report_ms: float
) -> proto.Utterance:
    """Return ``event`` with ``lag_ms`` set when it waited at least ``report_ms`` (step 1).

    The lag is the time from the segmenter's decision (the utterance was complete) to the
    result, less the utterance's own encode and decode time: what it spent waiting for the engine
    and for earlier utterances of its stream. The hangover before the decision is not lag.
    """
    latency = event.latency_ms
    lag = since_decision_ms - latency.encode - latency.decode
    if lag < report_ms:
        return event
    return dataclasses.replace(event, lag_ms=round(lag, 1))


def check_endpointing(base: SegmenterConfig, endpointing: Mapping[str, float]) -> None:
    """Refuse a client override of ``max_utterance_s`` above the server's own setting.

    The server's ``segmenter.max_utterance_s`` bounds the audio one stream may buffer, so a
    client may lower it but not raise it.

    Raises:
        ProtocolError: ``bad_field`` (1007).
    """
    asked = endpointing.get("max_utterance_s")
    if asked is not None and asked > base.max_utterance_s:
        raise ProtocolError(
            proto.BAD_FIELD,
            f"endpointing.max_utterance_s may not exceed the server's {base.max_utterance_s:g}",
            close_code=proto.CLOSE_INVALID_DATA,
        )

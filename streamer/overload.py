"""The overload contract: how far behind results are, and what the server gives up, in order.

The engine's load is its pending utterances (``Runner.pending``) as a fraction of
``engine.max_pending_utterances``. As it rises the server degrades in a fixed order, each step
keeping everything the previous one kept:

0. **Drop partials** (any load): a partial transcript run (:mod:`streamer.partials`) is not
   started while an utterance waits for the engine, while the engine's load is at
   ``engine.shed_unwatched_at`` or more, or while partial runs took more than
   ``partials.engine_share`` of the engine's time; the next interval tries again. So partials
   go before any result is delayed or refused.
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

This module holds the rules only, as functions over plain numbers and the hub;
:mod:`streamer.streams.services` applies them to the live daemon.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from streamer import protocol as proto
from streamer.errors import OverloadedError, ProtocolError

if TYPE_CHECKING:
    from streamer.pubsub import Hub, Subscriber
    from streamer.segmenter_config import SegmenterConfig

#: Error code of a ``start`` refused because the engine is behind.
BUSY: Final = "busy"
#: WebSocket close code 1013, "Try Again Later" (IANA registry).
CLOSE_TRY_AGAIN_LATER: Final = 1013
#: Streams one ingest connection may carry (fixed by the protocol: ``start`` only once).
STREAMS_PER_CONNECTION: Final = 1


def load_fraction(pending: int, max_pending: int) -> float:
    """The engine's load: ``pending`` utterances over the ``max_pending`` allowed (0 to 1)."""
    return pending / max_pending


def partial_allowed(
    load: float, *, shed_at: float, utterance_waiting: bool, share: float, max_share: float
) -> bool:
    """Whether a partial run may start now (step 0 of the contract)."""
    return load < shed_at and not utterance_waiting and share < max_share


def accepting_streams(load: float, *, refuse_at: float) -> bool:
    """Whether a new stream is admitted at ``load`` (step 3 of the contract)."""
    return load < refuse_at


def check_new_stream(load: float, *, refuse_at: float) -> None:
    """Check that a new stream may start at ``load`` (step 3 of the contract).

    Raises:
        ProtocolError: code ``busy``, close code 1013, when ``load`` reached ``refuse_at``.
    """
    if not accepting_streams(load, refuse_at=refuse_at):
        raise ProtocolError(
            BUSY,
            "the engine is behind; new streams are refused for now, try again later",
            close_code=CLOSE_TRY_AGAIN_LATER,
        )


def watched(hub: Hub[Any], stream: str, *, exclude: Subscriber[Any] | None = None) -> bool:
    """Whether any subscriber but ``exclude`` (the journal) takes ``stream``'s results."""
    return hub.any_subscriber(lambda s: s is not exclude and s.matches("utterance", stream))


def check_utterance(load: float, *, shed_at: float, stream: str, live: bool, watched: bool) -> None:
    """Check that an utterance of ``stream`` is worth running at ``load`` (step 2).

    Args:
        load: the engine's load (:func:`load_fraction`).
        shed_at: the load from which unwatched utterances are shed.
        stream: the utterance's stream (for the message).
        live: whether the stream's own client (its ingest connection) still receives results.
        watched: whether a subscriber takes the stream's results (:func:`watched`).

    Raises:
        OverloadedError: the engine is behind and nobody would receive the result.
    """
    if load >= shed_at and not live and not watched:
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
            field="endpointing",
        )

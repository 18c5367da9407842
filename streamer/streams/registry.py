"""The live streams by name: the one place a stream is named, admitted and ended.

Every source (WebSocket ingest, Wyoming, the microphone, ``streamer transcribe`` and
``streamer inspect``) asks :meth:`StreamRegistry.admit` for its stream name before it feeds any
audio. A name already live is refused the same way for every source, with a ``stream_in_use``
:class:`~streamer.errors.ProtocolError` (close code 1008), so no source can take over another's
stream. The claim it gets back holds the name until :meth:`StreamClaim.end`; the pipeline is
attached to it once built (a microphone learns its rate only when the device opens).

Call contract: use it from the event loop thread only (no locking).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Protocol

from streamer import protocol as proto
from streamer.errors import ProtocolError


class LiveStream(Protocol):
    """What the registry needs of a stream's pipeline (a :class:`StreamPipeline`)."""

    @property
    def backlog(self) -> int:
        """Utterances handed to the engine whose results were not emitted yet."""
        ...

    async def finish(self) -> None:
        """Flush the stream and wait for its last results."""
        ...


class NameLeases(Protocol):
    """The cluster-wide half of a name (a lease on the event bus, :mod:`streamer.serve.bus`)."""

    @property
    def replica(self) -> str:
        """This daemon's id, unique in the cluster (part of the names it makes up)."""
        ...

    def acquire(self, name: str) -> None:
        """Take ``name`` for this daemon; raise ``stream_in_use`` when another daemon holds it."""
        ...

    def release(self, name: str) -> None:
        """Free ``name`` (its stream ended here)."""
        ...


class StreamClaim:
    """One admitted stream name; attach its pipeline, and end it when the source ends.

    Call contract: :meth:`attach` at most once; :meth:`end` once, in a ``finally`` (it is
    idempotent, and it never removes a stream admitted later under the same name).
    """

    def __init__(self, registry: StreamRegistry, name: str) -> None:
        """Create the claim; use :meth:`StreamRegistry.admit` rather than this directly."""
        self.registry = registry
        self.name = name
        self.ended = False
        self.pipeline: LiveStream | None = None

    def attach(self, pipeline: LiveStream) -> None:
        """Make ``pipeline`` the stream's pipeline (drained at shutdown, reported in metrics).

        Raises:
            RuntimeError: the claim has ended, or already has a pipeline.
        """
        if self.ended or self.pipeline is not None:
            raise RuntimeError(f"stream {self.name!r}: claim ended or pipeline already attached")
        self.pipeline = pipeline

    def end(self) -> None:
        """Free the name: the stream is over (its pipeline, if any, finished)."""
        if not self.ended:
            self.ended = True
            self.registry._release(self)


class StreamRegistry:
    """The live streams, by name.

    ``admission`` is the daemon's other rule for new streams (the engine's load): called after
    the name was found free, it raises a :class:`~streamer.errors.ProtocolError` to refuse.
    ``leases``, set when the daemon shares an event bus with other replicas, makes a name taken
    on any replica ``stream_in_use`` here too: it is asked last, and told when the name is free.
    """

    def __init__(self, *, admission: Callable[[], None] | None = None) -> None:
        """Create an empty registry with an optional extra ``admission`` check."""
        self._admission = admission
        self._live: dict[str, StreamClaim] = {}
        self._ids = itertools.count(1)
        self.leases: NameLeases | None = None

    def admit(self, name: str) -> StreamClaim:
        """Admit a new stream called ``name`` and hold the name for it.

        Raises:
            ProtocolError: ``stream_in_use`` (close code 1008) when a live stream has the name;
                whatever the ``admission`` check raises (``busy``, 1013) when the engine is behind.
        """
        if name in self._live:
            raise ProtocolError(
                proto.STREAM_IN_USE,
                f"stream {name!r} is already live",
                close_code=proto.CLOSE_POLICY,
            )
        if self._admission is not None:
            self._admission()
        if self.leases is not None:
            self.leases.acquire(name)
        claim = StreamClaim(self, name)
        self._live[name] = claim
        return claim

    def unused_name(self, prefix: str) -> str:
        """A name no live stream uses: ``PREFIX-N``, N counting up from 1 per registry.

        With ``leases`` the name is ``PREFIX-REPLICA-N``: no other replica makes up the same
        one, so it is free cluster-wide too (without a round trip to the bus).
        """
        if self.leases is not None:
            prefix = f"{prefix}-{self.leases.replica}"
        while (name := f"{prefix}-{next(self._ids)}") in self._live:
            pass
        return name

    def pipelines(self) -> list[LiveStream]:
        """The attached pipelines of every live stream."""
        return [c.pipeline for c in self._live.values() if c.pipeline is not None]

    def backlogs(self) -> dict[str, int]:
        """Per live stream, its pipeline's backlog (0 while no pipeline is attached)."""
        return {
            name: 0 if c.pipeline is None else c.pipeline.backlog for name, c in self._live.items()
        }

    def __contains__(self, name: object) -> bool:
        """Whether a live stream is called ``name``."""
        return name in self._live

    def __iter__(self) -> Iterator[str]:
        """The live streams' names (a snapshot)."""
        return iter(list(self._live))

    def __len__(self) -> int:
        """Number of live streams."""
        return len(self._live)

    def _release(self, claim: StreamClaim) -> None:
        if self._live.get(claim.name) is claim:
            del self._live[claim.name]
            if self.leases is not None:
                self.leases.release(claim.name)

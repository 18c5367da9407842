"""Runs encoders off the event loop: one named thread pool, a bound on pending work, timings.

The event loop never blocks on inference: :meth:`Runner.infer` hands the run to a
``ThreadPoolExecutor`` whose threads are named ``ort-N`` (visible in py-spy and thread dumps) and
awaits it. At most ``max_pending_utterances`` runs may wait or run at once; past that
:class:`OverloadedError` is raised at once instead of growing a queue without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamer.config import EngineConfig
from streamer.engine import Encoder, Outputs
from streamer.errors import ModelError, StreamerError

log = logging.getLogger(__name__)


class OverloadedError(StreamerError):
    """The engine already holds its maximum of pending utterances."""


@dataclass(frozen=True)
class RunResult:
    """One encoder run's outputs and where its time went."""

    outputs: Outputs
    queued_ms: float
    encode_ms: float


class Runner:
    """Async front of the encoders; share one per daemon."""

    def __init__(self, encoders: dict[str, Encoder], *, config: EngineConfig) -> None:
        self.encoders = encoders
        self.config = config
        self._pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="ort")
        self._pending = 0

    @property
    def pending(self) -> int:
        """Runs submitted and not finished yet."""
        return self._pending

    def reserve(self) -> None:
        """Claim a pending slot for one utterance before its runs are awaited.

        Raises:
            OverloadedError: ``max_pending_utterances`` are already pending.
        """
        if self._pending >= self.config.max_pending_utterances:
            raise OverloadedError(
                f"engine overloaded: {self._pending} utterances pending "
                f"(engine.max_pending_utterances = {self.config.max_pending_utterances})"
            )
        self._pending += 1

    def release(self) -> None:
        """Give back a slot claimed with :meth:`reserve`."""
        self._pending -= 1

    async def infer(self, model: str, audio: npt.NDArray[np.float32]) -> RunResult:
        """Run ``audio`` through ``model`` in the pool; the caller holds a reserved slot.

        Raises:
            ModelError: unknown model, bad input, or the run failed.
        """
        encoder = self.encoders.get(model)
        if encoder is None:
            raise ModelError(f"unknown model {model!r}")
        loop = asyncio.get_running_loop()
        submitted = time.perf_counter()

        def work() -> tuple[Outputs, float, float]:
            started = time.perf_counter()
            outputs = encoder.run(audio)
            return outputs, started, time.perf_counter()

        outputs, started, finished = await loop.run_in_executor(self._pool, work)
        return RunResult(
            outputs=outputs,
            queued_ms=(started - submitted) * 1000.0,
            encode_ms=(finished - started) * 1000.0,
        )

    def close(self) -> None:
        """Stop the pool; runs already started finish, queued ones are cancelled."""
        self._pool.shutdown(wait=False, cancel_futures=True)

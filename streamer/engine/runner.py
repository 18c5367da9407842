"""Runs encoders off the event loop: one named thread pool, a bound on pending work, timings.

The event loop never blocks on inference: :meth:`Runner.infer` hands the run to a
``ThreadPoolExecutor`` whose threads are named ``ort-N`` (visible in py-spy and thread dumps) and
awaits it. At most ``max_pending_utterances`` runs may wait or run at once; past that
:class:`~streamer.errors.OverloadedError` is raised at once instead of growing a queue without
bound. Runs go through a :class:`~streamer.engine.batcher.MicroBatcher`, which orders them by
priority and runs equal-length utterances of different streams together.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from streamer.config import EngineConfig
from streamer.engine.batcher import MicroBatcher, RunResult
from streamer.engine.encoder import Encoder
from streamer.errors import ModelError, OverloadedError

log = logging.getLogger(__name__)

__all__ = ["RunResult", "Runner"]


class Runner:
    """Async front of the encoders; share one per daemon."""

    def __init__(self, encoders: dict[str, Encoder], *, config: EngineConfig) -> None:
        self.encoders = encoders
        self.config = config
        self._pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="ort")
        self._pending = 0
        rate_hz = max((e.manifest.sample_rate for e in encoders.values()), default=16000)
        self.batcher = MicroBatcher(
            self._pool,
            workers=config.workers,
            max_batch=config.max_batch,
            max_batch_samples=round(config.max_batch_s * rate_hz),
            wait_s=config.batch_wait_ms / 1000.0,
            priority_boost_s=config.priority_boost_ms / 1000.0,
        )

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

    async def infer(
        self,
        model: str,
        audio: npt.NDArray[np.float32],
        *,
        priority: bool = False,
        background: bool = False,
    ) -> RunResult:
        """Run ``audio`` through ``model`` in the pool; the caller holds a reserved slot.

        ``priority`` marks work whose result a voice assistant waits for (docs/throughput.md).
        ``background`` marks a partial run: it holds no slot, runs only when nothing else waits
        and is the first work dropped under load (:mod:`streamer.partials`).

        Raises:
            ModelError: unknown model, bad input, or the run failed.
        """
        encoder = self.encoders.get(model)
        if encoder is None:
            raise ModelError(f"unknown model {model!r}")
        encoder.check_input(audio)
        return await self.batcher.submit(encoder, audio, priority=priority, background=background)

    def close(self) -> None:
        """Stop the pool; runs already started finish, queued ones fail with ModelError."""
        stats = self.batcher.stats
        if stats.runs:
            log.info(
                "engine: %d utterance runs in %d batches (mean %.2f, sizes %s), busy %.3f s"
                " (partials %.3f s)",
                stats.requests,
                stats.runs,
                stats.mean_batch,
                dict(sorted(stats.sizes.items())),
                stats.busy_s,
                stats.background_s,
            )
        self.batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

"""Cross-stream micro-batching: equal-length utterances of one model share one onnxruntime run.

Why equal lengths only, never padding a request to its neighbours' length: zero-padding changes
the results of every SEW-D and wav2vec 2.0 model with a group-normalised feature encoder, because
the first GroupNorm normalises over the padded time axis (and the bundle's in-graph per-utterance
normalisation over the padded samples). Measured on a sew-d-tiny-size model with speech clips cut
mid-audio: 20 ms of zero padding moved logits by up to 0.27 and flipped 1.7% of the frames'
argmax; 250 ms flipped 10%. Rows of the same length, on the
other hand, are independent in a float32 graph (batched vs alone: max abs diff 0.0). So the
batcher groups requests for the same model whose inputs have exactly the same number of samples.

To make equal lengths common, each stream pads its utterances with zeros up to a multiple of
``engine.bucket_ms`` before they get here (:class:`streamer.buckets.LengthBuckets`).

Quantized bundles run alone: dynamic int8 quantization computes one activation scale per tensor,
that is over the whole batch, so a row's result would depend on the other rows (measured: max abs
diff 0.02 between a row run alone and in a batch of six).

Scheduling, on the event loop (call contract: every method from the loop's thread):

- The queue is ordered by *rank*: submission time, minus ``priority_boost_s`` for priority work
  (utterances of streams that run an intent model). The lowest rank always runs next.
- The next run takes the head of the queue plus every queued request of the same model and length,
  lowest rank first, up to ``max_batch`` requests and ``max_batch_samples`` samples in all.
- *Background* work (partial transcripts, :mod:`streamer.partials`) is a lane of its own: it
  starts only when no other request is queued, one background run at a time, and never shares
  a run with other work; :meth:`MicroBatcher.background_share` says how much engine time it took.
  A request that arrives while every worker is busy and one runs background work stops that run
  (it fails with :class:`~streamer.errors.PreemptedError`), so an utterance waits a few ms for a
  partial, not a whole run.
- While every worker is busy, requests gather in the queue; a worker that frees up starts the next
  batch at once. An idle engine waits at most ``wait_s`` after the head's submission for more
  requests of its length, and not at all when the batch is already full (a long utterance, whose
  batch is full with one member, never waits).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.engine.encoder import Encoder, Outputs, stoppable
from streamer.errors import ModelError

log = logging.getLogger(__name__)

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RunResult:
    """One encoder run's outputs (leading batch axis of 1) and where its time went."""

    outputs: Outputs
    queued_ms: float
    encode_ms: float
    batch_size: int = 1
    """Utterances that shared the run (``encode_ms`` is the whole run's time)."""


@dataclass(eq=False)
class _Request:
    encoder: Encoder
    audio: Audio
    rank: float
    submitted: float
    future: asyncio.Future[RunResult]
    background: bool = False


@dataclass
class BatchStats:
    """Counters of what the batcher ran, for logs and the benchmark."""

    runs: int = 0
    requests: int = 0
    busy_s: float = 0.0
    """Wall-clock seconds the runs took (summed over workers)."""
    background_s: float = 0.0
    """The part of ``busy_s`` spent on background runs."""
    sizes: Counter[int] = field(default_factory=Counter)

    @property
    def mean_batch(self) -> float:
        """Requests per run on average (1.0 before any run)."""
        return self.requests / self.runs if self.runs else 1.0


class MicroBatcher:
    """Queues encoder requests and runs equal-length ones together in an executor.

    Call contract: :meth:`submit` and :meth:`close` from the event loop's thread only; the
    executor threads only run ``Encoder.run_batch``.
    """

    def __init__(
        self,
        executor: Executor,
        *,
        workers: int,
        max_batch: int,
        max_batch_samples: int,
        wait_s: float,
        priority_boost_s: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._executor = executor
        self.workers = workers
        self.max_batch = max_batch
        self.max_batch_samples = max_batch_samples
        self.wait_s = wait_s
        self.priority_boost_s = priority_boost_s
        self._clock = clock
        self._queue: list[_Request] = []
        self._busy = 0
        self._busy_background = 0
        self._stoppable: Any = None  # the running background run's RunOptions
        self._background_runs: deque[tuple[float, float]] = deque()  # (finished, seconds)
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.stats = BatchStats()

    def capacity(self, encoder: Encoder, n_samples: int) -> int:
        """How many requests of ``n_samples`` for ``encoder`` one run may hold."""
        if encoder.manifest.quantization == "int8":
            return 1
        return max(1, min(self.max_batch, self.max_batch_samples // max(n_samples, 1)))

    @property
    def foreground_waiting(self) -> bool:
        """Whether a request other than background work waits in the queue."""
        return any(not r.background for r in self._queue)

    def background_share(self, window_s: float) -> float:
        """Share of engine time (all workers) that background runs took in the last ``window_s``."""
        since = self._clock() - window_s
        while self._background_runs and self._background_runs[0][0] < since:
            self._background_runs.popleft()
        busy = sum(seconds for _, seconds in self._background_runs)
        return busy / (window_s * self.workers)

    async def submit(
        self, encoder: Encoder, audio: Audio, *, priority: bool = False, background: bool = False
    ) -> RunResult:
        """Queue one checked utterance for ``encoder``; return its share of the run.

        ``background``: run it only when nothing else waits (see the module's scheduling rules).

        Raises:
            ModelError: the run failed, or the batcher was closed before it ran.
        """
        if self._closed:
            raise ModelError("the engine is shutting down")
        loop = asyncio.get_running_loop()
        now = self._clock()
        rank = now - (self.priority_boost_s if priority else 0.0)
        request = _Request(encoder, audio, rank, now, loop.create_future(), background)
        self._queue.append(request)
        if not background and self._busy >= self.workers and self._stoppable is not None:
            self._stoppable.terminate = True  # pre-empt the partial: its worker frees up
        self._dispatch()
        try:
            return await request.future
        except asyncio.CancelledError:
            if request in self._queue:
                self._queue.remove(request)
            raise

    def close(self) -> None:
        """Fail every queued request; runs in progress finish (their results are delivered)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for request in self._queue:
            if not request.future.done():
                request.future.set_exception(ModelError("the engine is shutting down"))
        self._queue.clear()

    def _dispatch(self) -> None:
        """Start batches while workers are free; arm a timer when the head may still gather."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._busy < self.workers and self._queue:
            foreground = [r for r in self._queue if not r.background]
            if not foreground and self._busy_background:
                return  # one background run at a time
            head = min(foreground or self._queue, key=lambda r: r.rank)
            batch = self._gather(head)
            wait_s = head.submitted + self.wait_s - self._clock()
            full = len(batch) >= self.capacity(head.encoder, head.audio.shape[0])
            if not full and wait_s > 0:
                self._timer = asyncio.get_running_loop().call_later(wait_s, self._dispatch)
                return
            self._start(batch)

    def _gather(self, head: _Request) -> list[_Request]:
        limit = self.capacity(head.encoder, head.audio.shape[0])
        same = [
            r
            for r in self._queue
            if r.encoder is head.encoder
            and r.audio.shape[0] == head.audio.shape[0]
            and r.background == head.background
        ]
        same.sort(key=lambda r: r.rank)
        return same[:limit]

    def _start(self, batch: list[_Request]) -> None:
        for request in batch:
            self._queue.remove(request)
        encoder = batch[0].encoder
        options = stoppable() if batch[0].background else None
        audio = (
            batch[0].audio[np.newaxis, :] if len(batch) == 1 else np.stack([r.audio for r in batch])
        )

        def work() -> tuple[Outputs, float, float]:
            started = self._clock()
            outputs = encoder.run_batch(audio, options)
            return outputs, started, self._clock()

        loop = asyncio.get_running_loop()
        try:
            running = loop.run_in_executor(self._executor, work)
        except RuntimeError:  # the executor was shut down
            _fail(batch, ModelError("the engine is shutting down"))
            return
        self._busy += 1
        self._busy_background += batch[0].background
        if options is not None:
            self._stoppable = options
        self.stats.runs += 1
        self.stats.requests += len(batch)
        self.stats.sizes[len(batch)] += 1
        running.add_done_callback(lambda done: self._finish(batch, done))

    def _finish(
        self, batch: list[_Request], done: asyncio.Future[tuple[Outputs, float, float]]
    ) -> None:
        self._busy -= 1
        self._busy_background -= batch[0].background
        if batch[0].background:
            self._stoppable = None
        if done.cancelled():
            _fail(batch, ModelError("the engine is shutting down"))
        elif (exc := done.exception()) is not None:
            _fail(batch, exc)
        else:
            outputs, started, finished = done.result()
            encode_ms = (finished - started) * 1000.0
            self.stats.busy_s += finished - started
            if batch[0].background:
                self.stats.background_s += finished - started
                self._background_runs.append((finished, finished - started))
            for i, request in enumerate(batch):
                if request.future.done():  # its awaiting task was cancelled
                    continue
                share = {name: value[i : i + 1].copy() for name, value in outputs.items()}
                request.future.set_result(
                    RunResult(
                        outputs=share,
                        queued_ms=(started - request.submitted) * 1000.0,
                        encode_ms=encode_ms,
                        batch_size=len(batch),
                    )
                )
        if not self._closed:
            self._dispatch()


def _fail(batch: list[_Request], exc: BaseException) -> None:
    for request in batch:
        if not request.future.done():
            request.future.set_exception(exc)

"""One loop for every local audio source: feed its chunks through a :class:`StreamPipeline`.

``streamer transcribe`` (files), the microphone and ``streamer inspect`` all call
:func:`run_source`; network sources (WebSocket, Wyoming) feed their pipelines frame by frame
from their connection handlers instead. Either way the stream is admitted by the registry first,
so a source never takes over a live stream's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from streamer.audio import AudioFormat, F32Array, quiet_lead_in
from streamer.segmenter_config import SegmenterConfig
from streamer.streams.pipeline import Emit, StreamPipeline, stream_segmenter_config
from streamer.streams.registry import StreamClaim
from streamer.streams.services import Services
from streamer.streams.sources import chunks

#: Chunk length used to feed files through the pipeline, in ms.
FILE_CHUNK_MS = 100
#: Utterances of one file allowed in flight before reading more of it (backpressure).
FILE_BACKLOG = 4


def sample_pipeline(
    services: Services,
    *,
    stream: str,
    rate_hz: int,
    models: Sequence[str] | None = None,
    emit: Emit | None = None,
    segmenter: Mapping[str, Any] | None = None,
) -> StreamPipeline:
    """A pipeline fed float32 mono samples at ``rate_hz`` (microphone, files, Wyoming).

    ``models``: None runs every loaded model. Endpointing is the server's with ``segmenter``'s
    overrides and the models' minimum length; the context is the server's default (the first
    ``--context``), if any.
    """
    names = tuple(services.runner.encoders) if models is None else tuple(models)
    return StreamPipeline(
        services,
        stream=stream,
        fmt=AudioFormat(rate_hz, "pcm_f32le", 1),
        models=names,
        segmenter=stream_segmenter_config(services, names, segmenter or {}),
        emit=emit,
        context=services.default_context,
    )


def file_stream_name(path: Path) -> str:
    """A valid stream name for an audio file: its stem, other characters replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:64] or "file"


class AudioSource(Protocol):
    """Float32 mono chunks at ``rate_hz`` (a microphone knows its rate once the device opens)."""

    @property
    def rate_hz(self) -> int:
        """The chunks' sample rate; valid once the first chunk was yielded."""
        ...

    def stream(self) -> AsyncIterator[F32Array]:
        """Yield chunks until the source ends (a file) or the task is cancelled."""
        ...


class ChunkSource:
    """Already-decoded audio (a file) as an :class:`AudioSource`."""

    def __init__(self, chunks: Iterable[F32Array], *, rate_hz: int) -> None:
        """Serve ``chunks`` (float32 mono at ``rate_hz``) in order."""
        self._chunks = chunks
        self._rate_hz = rate_hz

    @property
    def rate_hz(self) -> int:
        """The chunks' sample rate."""
        return self._rate_hz

    async def stream(self) -> AsyncIterator[F32Array]:
        """Yield every chunk."""
        for chunk in self._chunks:
            yield chunk


async def run_source(
    services: Services,
    source: AudioSource,
    claim: StreamClaim,
    *,
    emit: Emit | None = None,
    backlog: int | None = None,
    on_pipeline: Callable[[StreamPipeline], None] | None = None,
    segmenter: Mapping[str, Any] | None = None,
) -> StreamPipeline | None:
    """Feed ``source`` through a new pipeline for the admitted stream ``claim`` until it ends.

    The pipeline is built at the first chunk (a device's rate is known only then) and attached
    to ``claim``; when the source ends, fails or is cancelled, the pipeline is finished (every
    utterance so far still gets its result) and the claim is ended.

    Args:
        services: the shared services.
        source: the audio.
        claim: the stream's admission (``services.streams.admit(name)``); ended on return.
        emit: the pipeline's own result callback (stdout for files; None: the hub only).
        backlog: utterances allowed in flight before reading more; None reads on regardless
            (a live source cannot wait).
        on_pipeline: called with the pipeline once built, before any audio reaches it.
        segmenter: overrides of the server's segmenter settings for this source.

    Returns:
        The finished pipeline (its ``n_utterances`` and ``n_errors``), or None if the source
        ended before its first chunk.

    Raises:
        Whatever ``source.stream()`` raises (e.g. ``DeviceError``), after the cleanup above.
    """
    pipeline: StreamPipeline | None = None
    try:
        async for chunk in source.stream():
            if pipeline is None:
                pipeline = sample_pipeline(
                    services,
                    stream=claim.name,
                    rate_hz=source.rate_hz,
                    emit=emit,
                    segmenter=segmenter,
                )
                claim.attach(pipeline)
                if on_pipeline is not None:
                    on_pipeline(pipeline)
            pipeline.feed_samples(chunk)
            if backlog is not None:
                await pipeline.wait_backlog(backlog)
    finally:
        try:
            if pipeline is not None:
                # cancelled (the daemon stops): still finish what was heard
                with contextlib.suppress(asyncio.CancelledError):
                    await pipeline.finish()
        finally:
            claim.end()
    return pipeline


async def run_file(
    services: Services,
    samples: F32Array,
    *,
    rate_hz: int,
    claim: StreamClaim,
    emit: Emit | None = None,
    progress: Callable[[Iterable[F32Array]], Iterable[F32Array]] | None = None,
    on_pipeline: Callable[[StreamPipeline], None] | None = None,
) -> StreamPipeline | None:
    """A whole file through :func:`run_source`, as ``streamer transcribe`` reads one.

    The file is read ahead: when it starts inside a sound, its segmenter first hears
    ``segmenter.file_lead_in_ms`` of the quietest stretch of its start
    (:func:`streamer.audio.quiet_lead_in`), so speech from the first sample starts an
    utterance; the models never hear that, and times still count from the file's start. Then
    the file is fed in :data:`FILE_CHUNK_MS` chunks with at most :data:`FILE_BACKLOG`
    utterances in flight. Its utterances keep ``segmenter.file_post_roll_ms`` after their speech
    (no eager result waits on a file's cut), and the segmenter knows where the file ends
    (``segmenter.file_tail_ms``). ``progress`` wraps the chunks (a progress bar);
    ``on_pipeline`` is called with the pipeline once it has heard the lead-in, before the file.
    Returns what :func:`run_source` returns.
    """
    lead = file_lead_in(samples, rate_hz=rate_hz, config=services.config.segmenter)
    pieces: Iterable[F32Array] = chunks(samples, rate_hz * FILE_CHUNK_MS // 1000)
    return await run_source(
        services,
        ChunkSource(progress(pieces) if progress is not None else pieces, rate_hz=rate_hz),
        claim,
        emit=emit,
        backlog=FILE_BACKLOG,
        on_pipeline=functools.partial(_hear, lead, samples.size, rate_hz, on_pipeline),
        segmenter={"post_roll_ms": services.config.segmenter.file_post_roll_ms},
    )


def file_lead_in(samples: F32Array, *, rate_hz: int, config: SegmenterConfig) -> F32Array:
    """The lead-in a file gets with segmenter settings ``config`` (empty: none).

    See :func:`streamer.audio.quiet_lead_in` and ``segmenter.file_lead_in_ms``.
    """
    return quiet_lead_in(
        samples,
        rate_hz=rate_hz,
        seconds=config.file_lead_in_ms / 1000.0,
        min_rise_db=config.file_lead_in_rise_db,
        search_ms=config.noise_window_ms,
    )


def _hear(
    lead: F32Array,
    length: int,
    rate_hz: int,
    then: Callable[[StreamPipeline], None] | None,
    pipeline: StreamPipeline,
) -> None:
    pipeline.hear_lead_in(lead, rate_hz=rate_hz, stream_samples=length)
    if then is not None:
        then(pipeline)

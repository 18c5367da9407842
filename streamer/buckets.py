"""Length buckets: which utterances may share an encoder run, and which streams go first.

Two utterances of one model share a run (:mod:`streamer.engine.batcher`) only when their inputs
have exactly the same number of samples, because zero padding to a neighbour's length changes
the results of group-normalised feature encoders (SEW-D, wav2vec 2.0). To make equal lengths
common, each stream pads its utterances with zeros up to a multiple of ``engine.bucket_ms``
(:class:`LengthBuckets`), whether or not an utterance will share a run: the solo path uses the
same buckets, so an utterance's input, hence its result, never depends on its neighbours. The
padding follows the segmenter's post-roll of quiet audio, where it moves results far less than
after speech cut mid-audio (bench/RESULTS.md, "What bucket padding costs").

Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from streamer.config import EngineConfig
from streamer.manifest import Manifest
from streamer.segmenter import UtteranceReady


class LengthBuckets:
    """Pads a stream's utterances with zeros up to a multiple of ``bucket_samples``.

    Every utterance of the stream is padded, whether or not it will share a run: the solo path
    uses the same buckets, so an utterance's input never depends on its neighbours. The zeros
    follow the segmenter's quiet post-roll, where they move results least (bench/RESULTS.md). An
    utterance cut at the length limit (speech goes on) keeps its length: zeros right after speech
    cut mid-audio move results most (see the module docstring).

    Call contract: :meth:`align` each utterance once, in any order; it keeps no state.
    """

    def __init__(self, *, bucket_samples: int) -> None:
        """Buckets of ``bucket_samples`` (0 or less: no padding at all)."""
        self.bucket_samples = bucket_samples

    def align(self, utt: UtteranceReady) -> UtteranceReady:
        """Return ``utt`` padded up to the bucket, or ``utt`` itself when it is on one or cut."""
        need = -utt.audio.shape[0] % self.bucket_samples if self.bucket_samples > 0 else 0
        if need == 0 or utt.forced_cut:
            return utt
        return dataclasses.replace(utt, audio=np.pad(utt.audio, (0, need)))


def stream_buckets(engine: EngineConfig, *, rate_hz: int) -> LengthBuckets:
    """The length buckets of ``engine.bucket_ms`` at ``rate_hz``."""
    return LengthBuckets(bucket_samples=round(engine.bucket_ms * rate_hz / 1000))


def is_priority(manifests: Iterable[Manifest]) -> bool:
    """Whether a stream running these models is priority work: one of them yields an intent."""
    return any(m.task == "classify" for m in manifests)

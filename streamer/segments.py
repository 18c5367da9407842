"""What the segmenter reports, and the pure rules it reads frame scores with. No I/O.

:class:`SpeechStarted` and :class:`UtteranceReady` are the events of
:class:`~streamer.segmenter.Segmenter` (imported from there by most callers);
:func:`last_onset` is the rule that turns a short word at a stream's end into an utterance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamer.vad import VadThresholds


@dataclass(frozen=True)
class SpeechStarted:
    """Speech began at ``start_sample`` (counted from the stream's first sample)."""

    start_sample: int


@dataclass(frozen=True, eq=False)
class UtteranceReady:
    """One utterance: its audio and where, in stream samples, its speech starts and ends.

    ``audio`` runs from ``audio_start_sample`` and includes the pre-roll and post-roll;
    ``speech_start_sample``/``speech_end_sample`` bound the speech itself (end exclusive).
    ``forced_cut`` is True when ``max_utterance_s`` ended it rather than silence.
    """

    audio: npt.NDArray[np.float32]
    speech_start_sample: int
    speech_end_sample: int
    audio_start_sample: int
    forced_cut: bool

    @property
    def audio_end_sample(self) -> int:
        """Stream sample just after the last sample of ``audio``."""
        return self.audio_start_sample + int(self.audio.size)


SegmenterEvent = SpeechStarted | UtteranceReady
#: Per-frame observer: (frame start sample, score). For plots and debugging.
FrameObserver = Callable[[int, float], None]


def last_onset(
    scores: Iterable[tuple[int, float]], thresholds: VadThresholds, *, min_frames: int, since: int
) -> tuple[int, int] | None:
    """The last run of at least ``min_frames`` speech-like frames, as (first, last) frame.

    ``scores`` are (frame index, score) in order; frames before ``since`` are ignored. Every
    frame of the run scores at least ``thresholds.edge`` and one at least ``thresholds.start``.
    At a stream's end this is a short word that ended the stream before enough confident frames
    came to start an utterance (a trimmed clip's word); a stream that goes on never asks.
    """
    found, first, confident, prev = None, -1, False, -2
    for i, score in scores:
        if i < since or score < thresholds.edge:
            prev = -2
            continue
        if i != prev + 1:
            first, confident = i, False
        confident = confident or score >= thresholds.start
        prev = i
        if confident and i + 1 - first >= min_frames:
            found = (first, i)
    return found

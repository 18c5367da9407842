"""A frame detector whose scores a test writes as audio: a 20 ms frame scores its first sample."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from streamer.vad import VadThresholds

FRAME_SAMPLES = 320


class ScriptedVad:
    """Scores a frame by its first sample, read with ``thresholds``."""

    frame_samples = FRAME_SAMPLES

    def __init__(self, thresholds: VadThresholds) -> None:
        self.thresholds = thresholds

    def score(self, frame: npt.NDArray[np.float32]) -> float:
        return float(frame[0])

    def revised_start_scores(self) -> list[float] | None:
        return None


def scripted_frames(scores: Sequence[float]) -> npt.NDArray[np.float32]:
    """Audio whose frames score ``scores`` under :class:`ScriptedVad`."""
    return np.repeat(np.asarray(scores, dtype=np.float32), FRAME_SAMPLES)

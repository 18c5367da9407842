"""Scoring segmentation against truth: boundary matching and boundary F1; pure, no I/O.

Shared by ``bench/segmentation.py`` and the segmenter tests, so the figure a benchmark reports
and the one a test asserts are computed by the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

#: A boundary counts as found when a predicted one lies within this many seconds of it.
TOLERANCE_S = 0.2

Spans = Sequence[tuple[float, float]]


def matched_boundaries(
    pred: Sequence[float], true: Sequence[float], *, tolerance_s: float = TOLERANCE_S
) -> int:
    """Count predicted boundaries within ``tolerance_s`` of a true one.

    Matching is one-to-one, closest pairs first.
    """
    pairs = sorted(
        (abs(p - t), i, j)
        for i, p in enumerate(pred)
        for j, t in enumerate(true)
        if abs(p - t) <= tolerance_s
    )
    used_p: set[int] = set()
    used_t: set[int] = set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_p)


def boundary_hits(pred: Spans, true: Spans, *, tolerance_s: float = TOLERANCE_S) -> int:
    """Matched boundaries: starts matched to starts, ends to ends (at most two per utterance)."""
    hits = matched_boundaries([s for s, _ in pred], [s for s, _ in true], tolerance_s=tolerance_s)
    hits += matched_boundaries([e for _, e in pred], [e for _, e in true], tolerance_s=tolerance_s)
    return hits


def f1_from_hits(hits: int, n_pred: int, n_true: int) -> float:
    """Boundary F1 from :func:`boundary_hits` and the utterance counts (summed over files, too).

    Two empty segmentations agree perfectly (1.0); one empty against one not scores 0.0.
    """
    if hits == 0:
        return 1.0 if n_pred == n_true == 0 else 0.0
    precision, recall = hits / (2 * n_pred), hits / (2 * n_true)
    return 2 * precision * recall / (precision + recall)


def boundary_f1(pred: Spans, true: Spans, *, tolerance_s: float = TOLERANCE_S) -> float:
    """F1 over utterance starts and ends (each matched only to its own kind).

    Two empty segmentations agree perfectly (1.0); one empty against one not scores 0.0.
    """
    return f1_from_hits(boundary_hits(pred, true, tolerance_s=tolerance_s), len(pred), len(true))

"""Matching an utterance's sentence embedding to the intents of an intents file, by cosine.

The file's examples are embedded once at start (:mod:`streamer.streams.intents_setup`);
:class:`IntentMatcher` then compares each utterance's speech embedding (same space) with them:
one matrix product per utterance.

**Why the maximum over examples.** An intent's examples may lie far apart in the embedding
space ("lights on" and "it's too dark in here"); their centroid sits between them, near neither,
and near whatever else lies between. Scoring an intent by its *closest* example keeps every
phrasing a first-class way to say it. ``scoring="centroid"`` is kept for comparison only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from streamer.intents import IntentsFile

_MIN_NORM: Final = 1e-12
"""A vector with a smaller L2 norm is treated as zero (it has no direction)."""

Scoring = Literal["max", "centroid"]


@dataclass(frozen=True)
class IntentMatch:
    """The intents an utterance's embedding is closest to.

    Attributes:
        intent: the best intent's name, or None when abstaining.
        score: the best intent's score (cosine, -1..1); 0.0 for a zero or non-finite embedding.
        abstain: whether the best score is below the best intent's threshold (its own if set,
            else the file's), or the embedding was zero or non-finite.
        nbest: up to ``top_k`` (name, score), best first, also when abstaining; empty for a
            zero or non-finite embedding.
        margin: the best score minus the second best (the best score when there is one intent).
    """

    intent: str | None
    score: float
    abstain: bool
    nbest: tuple[tuple[str, float], ...]
    margin: float


_NO_MATCH: Final = IntentMatch(None, 0.0, True, (), 0.0)


@dataclass(frozen=True, eq=False)
class IntentMatcher:
    """Matches embeddings to the intents of one file; build once, then match per utterance.

    Call contract: :meth:`build` with the file and its examples' text embeddings (raises on a
    wrong shape or an unusable row), then :meth:`match` or :meth:`match_many` any number of times
    from any thread (nothing is mutated). A zero or non-finite embedding abstains rather than
    raising; an embedding of the wrong size raises :class:`ValueError`.

    Attributes:
        names: the intents' names, in file order.
        thresholds: each intent's threshold (its own, else the file's).
        top_k: length of the n-best lists.
        scoring: ``"max"`` (an intent scores its closest example) or ``"centroid"`` (the
            normalised mean of its examples).
    """

    names: tuple[str, ...]
    thresholds: npt.NDArray[np.float32]
    top_k: int
    scoring: Scoring
    _targets: npt.NDArray[np.float32]  # rows compared with an embedding: examples or centroids
    _starts: npt.NDArray[np.intp]  # first row of each intent in _targets

    @property
    def dim(self) -> int:
        """The embedding size."""
        return int(self._targets.shape[1])

    @classmethod
    def build(
        cls,
        intents: IntentsFile,
        example_vectors: npt.ArrayLike,
        *,
        scoring: Scoring = "max",
    ) -> IntentMatcher:
        """Prepare the matcher from the examples' embeddings.

        Args:
            intents: the checked intents file.
            example_vectors: ``[n_examples, dim]``, one row per sentence of
                ``intents.sentences()``, in that order; L2-normalised here whatever they are.
            scoring: ``"max"`` (default) or ``"centroid"``.

        Raises:
            ValueError: the array is not 2-D with one row per example, a row is zero or not
                finite, or ``scoring`` is unknown.
        """
        sentences = intents.sentences()
        vectors = np.asarray(example_vectors, dtype=np.float64)  # float32 squares may overflow
        if vectors.ndim != 2 or vectors.shape[0] != len(sentences) or vectors.shape[1] == 0:
            raise ValueError(
                f"example vectors of shape {vectors.shape} for {len(sentences)} example sentences "
                f"of {intents.path}: expected ({len(sentences)}, dim)"
            )
        norms = np.linalg.norm(vectors, axis=1)
        bad = np.flatnonzero(~np.isfinite(norms) | (norms < _MIN_NORM))
        if bad.size:
            index, sentence = sentences[int(bad[0])]
            raise ValueError(
                f"example vector {int(bad[0])} ({intents.intents[index].name!r}: {sentence!r}) "
                "is zero or not finite"
            )
        vectors = vectors / norms[:, None]
        counts = np.array([len(intent.examples) for intent in intents.intents], dtype=np.intp)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.intp)
        if scoring == "centroid":
            sums = np.add.reduceat(vectors, starts, axis=0)
            lengths = np.linalg.norm(sums, axis=1, keepdims=True)
            # examples that cancel out leave no direction: that centroid scores 0 against all
            vectors = np.where(lengths < _MIN_NORM, 0.0, sums / np.maximum(lengths, _MIN_NORM))
            starts = np.arange(len(intents.intents), dtype=np.intp)
        elif scoring != "max":
            raise ValueError(f"unknown scoring {scoring!r} (use 'max' or 'centroid')")
        thresholds = np.array(
            [
                i.threshold if i.threshold is not None else intents.threshold
                for i in intents.intents
            ],
            dtype=np.float32,
        )
        names = tuple(intent.name for intent in intents.intents)
        return cls(names, thresholds, intents.top_k, scoring, vectors.astype(np.float32), starts)

    def match(self, vector: npt.ArrayLike) -> IntentMatch:
        """Match one utterance's embedding ``[dim]``.

        Raises:
            ValueError: the embedding is not ``[dim]``.
        """
        v = np.asarray(vector, dtype=np.float64)
        if v.shape != (self.dim,):
            raise ValueError(f"embedding of shape {v.shape}: expected ({self.dim},)")
        return self.match_many(v[None, :])[0]

    def match_many(self, vectors: npt.ArrayLike) -> list[IntentMatch]:
        """Match a batch of embeddings ``[n, dim]`` (one matrix product for all).

        Raises:
            ValueError: the embeddings are not ``[n, dim]``.
        """
        v = np.asarray(vectors, dtype=np.float64)  # float32 squares may overflow
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"embeddings of shape {v.shape}: expected (n, {self.dim})")
        norms = np.linalg.norm(v, axis=1)  # inf or NaN for a row with inf or NaN
        usable = np.isfinite(norms) & (norms >= _MIN_NORM)
        unit = np.where(usable[:, None], v / np.where(usable, norms, 1.0)[:, None], 0.0)
        cosines = unit.astype(np.float32) @ self._targets.T
        scores = np.maximum.reduceat(cosines, self._starts, axis=1) if cosines.size else cosines
        return [
            self._result(row) if ok else _NO_MATCH
            for row, ok in zip(scores, usable.tolist(), strict=True)
        ]

    def _result(self, scores: npt.NDArray[np.float32]) -> IntentMatch:
        order = np.argsort(-scores, kind="stable")  # ties keep file order
        best = int(order[0])
        score = float(scores[best])
        margin = score - float(scores[order[1]]) if len(order) > 1 else score
        abstain = bool(scores[best] < self.thresholds[best])
        nbest = tuple((self.names[int(i)], float(scores[i])) for i in order[: self.top_k])
        return IntentMatch(None if abstain else self.names[best], score, abstain, nbest, margin)

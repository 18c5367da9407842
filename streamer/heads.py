"""Utterance-level heads: intent and labels (classify), value (regress), embedding (embed).

Each reads one utterance's outputs (batch axis removed), checked as in :mod:`streamer.outputs`.
Results are the wire types of :mod:`streamer.protocol`; confidences are rounded to 1e-4.

Pure numpy; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamer.errors import ConfigError, ModelError
from streamer.manifest import Manifest
from streamer.outputs import checked, declared_size, softmax, take
from streamer.protocol import Alternative, Intent


@dataclass(frozen=True)
class Classification:
    """A classifier's result: the first label set is the intent, the others are labels."""

    intent: Intent
    labels: tuple[Intent, ...] = ()


class IntentDecoder:
    """Softmax n-best per label set, with ``abstain`` set when the best is below a threshold.

    ``name`` is always the most likely label, even when abstaining; ``alternatives`` are the
    next ``n_best - 1`` labels, most likely first (ties keep label order).
    """

    def __init__(self, manifest: Manifest, *, abstain_below: float = 0.5, n_best: int = 3) -> None:
        """Prepare for a classify bundle.

        Args:
            manifest: the bundle's manifest.
            abstain_below: abstain when the best probability is below this (0 never abstains).
            n_best: how many labels to report per set, the best included.

        Raises:
            ModelError: the bundle is not classify, or an output disagrees with its labels.
            ConfigError: abstain_below is outside [0, 1] or n_best is below 1.
        """
        if manifest.task != "classify":
            raise ModelError(f"intent decoding needs a classify bundle, got {manifest.task!r}")
        if not 0.0 <= abstain_below <= 1.0 or n_best < 1:
            raise ConfigError("abstain_below must be in [0, 1] and n_best at least 1")
        self.abstain_below = abstain_below
        self.n_best = n_best
        self.label_sets = manifest.label_sets
        single = len(self.label_sets) == 1 and manifest.output("logits") is not None
        self.outputs = (
            ["logits"] if single else [f"logits_{i}" for i in range(len(self.label_sets))]
        )
        for name, labels in zip(self.outputs, self.label_sets, strict=True):
            n = declared_size(manifest, name)
            if isinstance(n, int) and n != len(labels):
                raise ModelError(f"output {name!r} has {n} classes but {len(labels)} labels")

    def decode(self, outputs: Mapping[str, npt.ArrayLike]) -> Classification:
        """Decode one utterance's classifier outputs (``logits`` or ``logits_0``, ``logits_1``...).

        Raises:
            ModelError: an output is missing or its shape, dtype or values are wrong.
        """
        results = [
            self._choose(take(outputs, name), labels)
            for name, labels in zip(self.outputs, self.label_sets, strict=True)
        ]
        return Classification(intent=results[0], labels=tuple(results[1:]))

    def intent_logits(self, outputs: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.float64]:
        """The intent label set's logits of one utterance, checked.

        Raises:
            ModelError: the output is missing or its shape, dtype or values are wrong.
        """
        labels = self.label_sets[0]
        return checked(take(outputs, self.outputs[0]), "classifier logits", (len(labels),))

    def choose_intent(self, logits: npt.ArrayLike) -> Intent:
        """The intent (n-best, abstain) of intent-set ``logits`` (log-probabilities will do)."""
        return self._choose(logits, self.label_sets[0])

    def _choose(self, logits: npt.ArrayLike, labels: Sequence[str]) -> Intent:
        """Return the n-best of one label set from its logits [n_labels]."""
        probs = softmax(checked(logits, "classifier logits", (len(labels),)))
        order = np.argsort(-probs, kind="stable")[: self.n_best].tolist()
        best = float(probs[order[0]])
        return Intent(
            name=labels[order[0]],
            confidence=round(best, 4),
            alternatives=tuple(
                Alternative(labels[i], round(float(probs[i]), 4)) for i in order[1:]
            ),
            abstain=best < self.abstain_below,
        )


def decode_value(value: npt.ArrayLike) -> float:
    """Return a regression output (shape [] or [1]) as a float.

    Raises:
        ModelError: not a single finite float.
    """
    arr = np.asarray(value)
    return float(checked(arr.reshape(-1) if arr.ndim == 0 else arr, "value", (1,))[0])


def decode_embedding(
    value: npt.ArrayLike, *, dim: int | None = None, normalize: bool = False
) -> tuple[float, ...]:
    """Return an embedding [dim] as floats: as the graph emits it, or L2-normalized.

    Normalizing makes cosine similarity a dot product; a zero vector stays zero. Values keep
    float32 precision and are given as the shortest decimal that reads back as that float32, which
    about halves the JSON.

    Raises:
        ModelError: not a finite float vector of ``dim`` entries.
    """
    vec = checked(value, "embedding", (dim,))
    norm = float(np.linalg.norm(vec))
    if normalize and norm > 0.0:
        vec = vec / norm
    return tuple(float(str(v)) for v in vec.astype(np.float32))

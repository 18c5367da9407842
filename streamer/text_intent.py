"""An intent classifier's second opinion, read from the utterance's transcript.

A classify bundle may ship ``text_intent.json``: a linear classifier over the words and word
pairs of a transcript, trained on the same command sentences as the audio classifier
(``streamer_training/text_intent.py``). When a stream also runs a ctc bundle,
:func:`streamer.decoding.decode_utterance` combines the two readings of the intent, log-linearly:
``audio_weight`` times the audio classifier's log-probabilities plus ``1 - audio_weight`` times
this head's, renormalized. The two fail on different utterances (an unseen voice the audio head
mishears but the transcript spells; a transcript with one wrong word the audio head hears past).

Pure numpy; the one file read is :meth:`TextIntentHead.load`.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streamer.errors import ModelError
from streamer.heads import IntentDecoder
from streamer.outputs import log_softmax
from streamer.protocol import Intent

TEXT_INTENT_FILE = "text_intent.json"
"""The file name a classify bundle ships its transcript head under."""
FORMAT_VERSION = 1


def features(text: str) -> list[str]:
    """The features of a transcript: its lower-cased words and each pair of adjacent words."""
    words = text.lower().split()
    return [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]


@dataclass(frozen=True)
class TextIntentHead:
    """A linear classifier over a transcript's :func:`features` (each counted once)."""

    labels: tuple[str, ...]
    index: dict[str, int]
    weights: npt.NDArray[np.float64]  # [n_features, n_labels]
    bias: npt.NDArray[np.float64]  # [n_labels]
    audio_weight: float

    def log_probs(self, text: str) -> npt.NDArray[np.float64]:
        """Log-probabilities of each label given ``text`` (an empty text gives the bias alone)."""
        rows = sorted({self.index[f] for f in features(text) if f in self.index})
        z = self.bias + self.weights[rows].sum(axis=0)
        return log_softmax(z)

    def fuse(self, audio_logits: npt.ArrayLike, text: str) -> npt.NDArray[np.float64]:
        """Combined log-probabilities of the audio classifier's ``audio_logits`` and ``text``."""
        audio = log_softmax(np.asarray(audio_logits, dtype=np.float64))
        w = self.audio_weight
        return log_softmax(w * audio + (1.0 - w) * self.log_probs(text))

    @classmethod
    def find(cls, bundle_dir: Path, labels: Sequence[str]) -> TextIntentHead | None:
        """The head ``bundle_dir`` ships (:meth:`load`), or None when it ships none."""
        path = bundle_dir / TEXT_INTENT_FILE
        return cls.load(path, labels) if path.is_file() else None

    @classmethod
    def load(cls, path: Path, labels: Sequence[str]) -> TextIntentHead:
        """Read a head written by ``streamer_training.text_intent``; its labels must be ``labels``.

        Raises:
            ModelError: the file cannot be read, is not this format, or does not fit ``labels``.
        """
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: cannot read the transcript intent head: {exc}") from exc
        try:
            if raw["format_version"] != FORMAT_VERSION:
                raise ModelError(
                    f"{path}: format_version {raw['format_version']!r}, expected {FORMAT_VERSION}"
                )
            head = cls(
                labels=tuple(str(x) for x in raw["labels"]),
                index={str(f): i for i, f in enumerate(raw["features"])},
                weights=np.asarray(raw["weights"], dtype=np.float64),
                bias=np.asarray(raw["bias"], dtype=np.float64),
                audio_weight=float(raw["audio_weight"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}: not a transcript intent head ({exc!r})") from exc
        n_labels, n_features = len(head.labels), len(head.index)
        if head.labels != tuple(labels):
            raise ModelError(f"{path}: labels {list(head.labels)} differ from the bundle's")
        if head.weights.shape != (n_features, n_labels) or head.bias.shape != (n_labels,):
            raise ModelError(
                f"{path}: weights {head.weights.shape} and bias {head.bias.shape} do not fit "
                f"{n_features} features and {n_labels} labels"
            )
        if not (np.isfinite(head.weights).all() and np.isfinite(head.bias).all()):
            raise ModelError(f"{path}: weights are not finite")
        if not (math.isfinite(head.audio_weight) and 0.0 <= head.audio_weight <= 1.0):
            raise ModelError(f"{path}: audio_weight must be within 0-1")
        return head


def combined_intent(
    decoder: IntentDecoder, head: TextIntentHead, outputs: Mapping[str, npt.ArrayLike], text: str
) -> Intent:
    """The classifier's intent (``outputs`` of one utterance) combined with ``head``'s ``text``.

    Raises:
        ModelError: the classifier's intent output is missing or malformed.
    """
    return decoder.choose_intent(head.fuse(decoder.intent_logits(outputs), text))

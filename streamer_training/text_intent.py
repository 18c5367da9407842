"""Train a classify bundle's transcript head (``text_intent.json``, :mod:`streamer.text_intent`).

A multinomial logistic regression over the words and word pairs of command sentences drawn from
the same grammar the audio classifier was trained on (:mod:`streamer_training.grammar`), fitted by
full-batch gradient descent in numpy: no voice, no audio, no download. ``--audio-weight`` is the
log-linear weight of the audio classifier when the daemon combines the two (chosen on the
decoder's tuning set, never on test voices; the card says how).

Usage: ``python -m streamer_training.text_intent --bundle exported/commands-intent
[--audio-weight 0.5]`` (writes ``BUNDLE/text_intent.json``; ``bin/train_demo``'s export
stage writes one into every commands-intent bundle it exports).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streamer.manifest import Manifest
from streamer.text_intent import FORMAT_VERSION, TEXT_INTENT_FILE, features
from streamer_training import grammar


def fit(
    texts: Sequence[str],
    targets: Sequence[int],
    n_labels: int,
    *,
    epochs: int = 300,
    lr: float = 0.5,
    l2: float = 1e-4,
) -> tuple[list[str], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(features, weights [n_features, n_labels], bias [n_labels]) fitted to ``texts``."""
    names: dict[str, int] = {}
    for text in texts:
        for f in features(text):
            names.setdefault(f, len(names))
    x = np.zeros((len(texts), len(names)), np.float64)
    for i, text in enumerate(texts):
        x[i, [names[f] for f in set(features(text))]] = 1.0
    y = np.asarray(targets)
    w = np.zeros((len(names), n_labels))
    b = np.zeros(n_labels)
    for _ in range(epochs):
        z = x @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        w -= lr * (x.T @ p / len(y) + l2 * w)
        b -= lr * p.mean(axis=0)
    return list(names), w, b


def train(n: int, seed: int) -> tuple[list[str], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Fit on ``n`` grammar commands, intents balanced, drawn with ``seed``."""
    rng = random.Random(seed)
    labels = list(grammar.INTENTS)
    commands = [grammar.sample_command(rng, intent=labels[k % len(labels)]) for k in range(n)]
    return fit([c.text for c in commands], [labels.index(c.intent) for c in commands], len(labels))


AUDIO_WEIGHT = 0.5
"""The audio classifier's weight, chosen on the decoder's tuning set, new sentences in training
voices (``bench/real_voices.py --part validation --synthetic data/demo/synth_dev.npz``: intents
right 231 of 240 alone; 234, 237, 239, 238, 236 at 0.2, 0.35, 0.5, 0.65, 0.8)."""


def write_head(
    bundle: Path, *, audio_weight: float = AUDIO_WEIGHT, sentences: int = 24_000, seed: int = 5
) -> Path:
    """Train a head for the classify ``bundle`` and write it there; return its path.

    Raises:
        ValueError: the bundle's intents are not the grammar's.
    """
    labels = list(grammar.INTENTS)
    manifest = Manifest.from_dict(json.loads((bundle / "manifest.json").read_text()))
    if list(manifest.label_sets[0]) != labels:
        raise ValueError(
            f"the bundle's intents {list(manifest.label_sets[0])} are not the grammar's {labels}"
        )
    names, w, b = train(sentences, seed)
    head = {
        "format_version": FORMAT_VERSION,
        "labels": labels,
        "audio_weight": audio_weight,
        "trained_on": f"{sentences} grammar commands (streamer_training.grammar), seed {seed}; "
        "words and word pairs; logistic regression",
        "features": names,
        "bias": [round(float(v), 4) for v in b],
        "weights": [[round(float(v), 4) for v in row] for row in w],
    }
    out = bundle / TEXT_INTENT_FILE
    out.write_text(json.dumps(head, separators=(",", ":")) + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the classify bundle")
    parser.add_argument("--audio-weight", type=float, default=AUDIO_WEIGHT)
    parser.add_argument("--sentences", type=int, default=24_000)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        out = write_head(
            args.bundle, audio_weight=args.audio_weight, sentences=args.sentences, seed=args.seed
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

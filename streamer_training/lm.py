"""A word n-gram language model of the command grammar, written as an ARPA file.

The demo SEW-D bundle ships it (``lm.arpa``) so the runtime's CTC beam search can pull a
misheard character string ("kill the lam") towards the sentences the grammar can say ("kill
the lamp"). The model is estimated from sentences drawn from :mod:`streamer_training.grammar`
with interpolated absolute discounting: for a history ``h`` seen ``C(h)`` times followed by
``N(h)`` distinct words, ``p(w|h) = max(c(h,w) - D, 0) / C(h) + a(h) p(w|h')`` with
``a(h) = D N(h) / C(h)`` and ``h'`` the history without its first word; unigrams are relative
counts, with a small fixed mass for ``<unk>``. Written in ARPA backoff form, an n-gram's line
holds its interpolated probability and ``a(h)`` is the backoff weight of ``h``, so a reader
that backs off for unseen words gets exactly the interpolated model.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from streamer_training import grammar

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
UNK_PROB = 1e-6
"""Unigram probability of ``<unk>``; the rest of the unigram mass is shared by relative count."""


def grammar_sentences(n: int, *, seed: int) -> list[str]:
    """Draw ``n`` commands, intents balanced, as the grammar's training data writes them."""
    rng = random.Random(seed)
    return [
        grammar.sample_command(rng, intent=grammar.INTENTS[k % len(grammar.INTENTS)]).text
        for k in range(n)
    ]


def count_ngrams(sentences: Iterable[str], order: int) -> list[Counter[tuple[str, ...]]]:
    """Count every 1..``order``-gram of the sentences, each wrapped in ``<s>`` ... ``</s>``."""
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order)]
    for sentence in sentences:
        tokens = (BOS, *sentence.split(), EOS)
        for k in range(1, order + 1):
            for i in range(len(tokens) - k + 1):
                gram = tokens[i : i + k]
                if gram != (BOS,):
                    counts[k - 1][gram] += 1
    return counts


def estimate(
    counts: Sequence[Counter[tuple[str, ...]]], *, discount: float = 0.5
) -> tuple[list[dict[tuple[str, ...], float]], dict[tuple[str, ...], float]]:
    """Return per-order n-gram probabilities and per-history backoff weights (not logs).

    Raises:
        ValueError: the discount is outside (0, 1), or there are no counts.
    """
    if not 0.0 < discount < 1.0:
        raise ValueError(f"discount must be in (0, 1), got {discount}")
    if not counts or not counts[0]:
        raise ValueError("no n-gram counts to estimate from")
    total = sum(counts[0].values())
    probs: list[dict[tuple[str, ...], float]] = [
        {g: (1.0 - UNK_PROB) * c / total for g, c in counts[0].items()}
    ]
    probs[0][(UNK,)] = UNK_PROB
    backoff: dict[tuple[str, ...], float] = {}
    for k in range(1, len(counts)):
        history_total: dict[tuple[str, ...], int] = defaultdict(int)
        history_types: dict[tuple[str, ...], int] = defaultdict(int)
        for gram, c in counts[k].items():
            history_total[gram[:-1]] += c
            history_types[gram[:-1]] += 1
        for h, c_h in history_total.items():
            backoff[h] = discount * history_types[h] / c_h
        lower = probs[k - 1]
        probs.append(
            {
                gram: (c - discount) / history_total[gram[:-1]]
                + backoff[gram[:-1]] * lower[gram[1:]]
                for gram, c in counts[k].items()
            }
        )
    return probs, backoff


def write_arpa(
    sentences: Iterable[str], path: Path, *, order: int = 3, discount: float = 0.5
) -> Path:
    """Estimate an ``order``-gram model of ``sentences`` and write it to ``path`` as ARPA."""
    probs, backoff = estimate(count_ngrams(sentences, order), discount=discount)
    lines = ["", "\\data\\"]
    # <s> is a history only: listed among the unigrams (ARPA needs it) with the customary
    # log10 probability of -99, since no sentence predicts it.
    n_grams = [len(p) + (1 if k == 0 else 0) for k, p in enumerate(probs)]
    lines += [f"ngram {k + 1}={n}" for k, n in enumerate(n_grams)]
    for k, table in enumerate(probs):
        lines += ["", f"\\{k + 1}-grams:"]
        entries = sorted(table.items())
        if k == 0:
            entries = [((BOS,), 0.0), *entries]
        for gram, p in entries:
            logp = -99.0 if gram == (BOS,) else math.log10(p)
            fields = [f"{logp:.6f}", " ".join(gram)]
            if k < len(probs) - 1 and gram in backoff:
                fields.append(f"{math.log10(backoff[gram]):.6f}")
            elif k == 0 and gram not in ((EOS,), (UNK,)):
                # A plain word never seen as a history still gets a (zero) backoff field:
                # readers that take the vocabulary from the ARPA file count only three-field
                # unigram lines as words.
                fields.append("0.000000")
            lines.append("\t".join(fields))
    lines += ["", "\\end\\", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

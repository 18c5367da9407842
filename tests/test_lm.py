"""Tests for the grammar's word n-gram LM: a proper distribution, valid ARPA, and it steers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from streamer_training import grammar, lm

SENTENCES = ["turn on the light", "turn off the light", "turn on the lamp", "kill the light"]


def _prob(
    probs: list[dict[tuple[str, ...], float]],
    backoff: dict[tuple[str, ...], float],
    history: tuple[str, ...],
    word: str,
) -> float:
    """p(word | history) the way an ARPA reader backs off."""
    history = history[max(0, len(history) - (len(probs) - 1)) :]
    gram = (*history, word)
    if gram in probs[len(gram) - 1]:
        return probs[len(gram) - 1][gram]
    if not history:
        return probs[0].get((lm.UNK,), 0.0) if word == lm.UNK else 0.0
    return backoff.get(history, 1.0) * _prob(probs, backoff, history[1:], word)


@pytest.mark.parametrize("order", [2, 3])
def test_every_history_predicts_a_distribution(order: int) -> None:
    """For every history seen, p(w|h) over the vocabulary (</s> and <unk> included) sums to 1."""
    probs, backoff = lm.estimate(lm.count_ngrams(SENTENCES, order), discount=0.5)
    vocab = [g[0] for g in probs[0] if g != (lm.BOS,)]
    histories = {g[:-1] for table in probs[1:] for g in table} | {()}
    for h in histories:
        total = sum(_prob(probs, backoff, h, w) for w in vocab)
        assert math.isclose(total, 1.0, abs_tol=1e-9), (h, total)
    # seen continuations beat unseen ones after the same history
    assert _prob(probs, backoff, ("turn", "on"), "the") > _prob(
        probs, backoff, ("turn", "on"), "kill"
    )


def test_estimate_rejects_bad_input() -> None:
    """A discount outside (0, 1) or no counts at all is an error, not a broken file."""
    with pytest.raises(ValueError, match="discount"):
        lm.estimate(lm.count_ngrams(SENTENCES, 2), discount=1.0)
    with pytest.raises(ValueError, match="no n-gram counts"):
        lm.estimate(lm.count_ngrams([], 2))
    with pytest.raises(ValueError, match="order"):
        lm.count_ngrams(SENTENCES, 0)


def test_arpa_header_counts_match_the_sections(tmp_path: Path) -> None:
    """The \\data\\ counts equal the lines of each section; words carry a backoff field."""
    path = lm.write_arpa(SENTENCES, tmp_path / "lm.arpa", order=3)
    text = path.read_text(encoding="utf-8")
    header, _, body = text.partition("\\1-grams:")
    counts = [int(line.split("=")[1]) for line in header.splitlines() if line.startswith("ngram")]
    sections = body.split("\\end\\")[0].split("-grams:")
    lengths = [len([ln for ln in s.splitlines() if "\t" in ln]) for s in sections]
    assert counts == lengths
    unigrams = {ln.split("\t")[1]: ln.split("\t") for ln in sections[0].splitlines() if "\t" in ln}
    assert len(unigrams["light"]) == 3
    assert len(unigrams[lm.EOS]) == 2
    assert float(unigrams[lm.BOS][0]) == -99.0
    assert set(unigrams) == {lm.BOS, lm.EOS, lm.UNK, *" ".join(SENTENCES).split()}


def test_grammar_lm_knows_every_grammar_word_and_loads_in_the_beam_search(tmp_path: Path) -> None:
    """An LM of 3,000 grammar sentences holds the digits and rooms and loads in KenLM."""
    from ctc_beam_decoder import build_ctcdecoder

    sentences = lm.grammar_sentences(3000, seed=0)
    assert lm.grammar_sentences(3000, seed=0) == sentences
    path = lm.write_arpa(sentences, tmp_path / "lm.arpa")
    words = {ln.split("\t")[1] for ln in path.read_text().splitlines() if ln.count("\t") == 2}
    assert set(grammar.DIGIT_WORDS) <= words
    assert {"kitchen", "living", "room", "timer", "lights"} <= words
    labels = ["", "<unk>", " ", *"abcdefghijklmnopqrstuvwxyz'"]
    build_ctcdecoder(labels, kenlm_model_path=str(path))  # raises if KenLM rejects the file

"""Grammar-held CTC decoding: the word loop, the manifest's grammars, the decoder's use."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, strategies as st

from streamer.decoding import OutputDecoder
from streamer.errors import ManifestError, ModelError
from streamer.manifest import IntentGrammar, Manifest
from streamer.protocol import Intent
from streamer.wordloop import WordLoop
from tests.test_decoders import TWE, VOCAB, _ctc, _frames, _seq, _soft_frames

WORDS = ("ONE", "TWO", "THREE", "NINE")
MS_PER_FRAME = 20.0


def _loop(**kw: Any) -> WordLoop:
    return WordLoop(WORDS, VOCAB, blank_id=0, delimiter="|", **kw)


def _log(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    x = logits.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    out: npt.NDArray[np.float64] = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return out


def _read(ids: npt.NDArray[np.int64]) -> str:
    """The path's text, collapsed as CTC reads it (for assertions)."""
    out, prev = [], -1
    for i in ids.tolist():
        if i != prev and i != 0:
            out.append(VOCAB[i])
        prev = i
    return " ".join("".join(out).split("|"))


def _grammar_manifest(**grammar: Any) -> Manifest:
    fields = {"intent": "digits", "words": WORDS, **grammar}
    return dataclasses.replace(_ctc(), grammars=(IntentGrammar(**fields),))


def test_loop_reads_only_words_of_the_list() -> None:
    """Where the best frame spells a non-word, the loop takes the best word of the list."""
    assert _read(np.asarray(TWE).argmax(axis=1)) == "TWE"
    assert _read(_loop().best_path(_log(TWE))) == "TWO"


def test_loop_puts_a_blank_between_a_double_letter() -> None:
    """THREE is only spelled with a blank between its Es: the path bends a frame to make one."""
    assert _read(_loop().best_path(_log(_frames(_seq("THRE_E_"))))) == "THREE"
    path = _loop().best_path(_log(_frames(_seq("THREE_"))))
    assert [VOCAB[i] for i in path] == _seq("THRE_E")


def test_loop_too_short_for_any_word_is_empty() -> None:
    """No frames, or fewer frames than the shortest word has letters, read as nothing."""
    assert _loop().best_path(np.zeros((0, len(VOCAB)))).shape == (0,)
    assert _read(_loop().best_path(_log(_frames(_seq("ON"))))) == ""


def test_loop_word_penalty_prefers_fewer_words() -> None:
    """A word penalty above a weak second word's evidence drops that word."""
    frames = _soft_frames(
        [{"O": 0.9}, {"N": 0.9}, {"E": 0.9}, {"|": 0.3}, {"T": 0.3}, {"W": 0.3}, {"O": 0.3}]
    )
    assert _read(_loop().best_path(_log(frames))) == "ONE TWO"
    assert _read(_loop(word_penalty=40.0).best_path(_log(frames))) == "ONE"


@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=5), st.data())
def test_loop_decodes_any_alignment_of_its_words(sentence: list[str], data: Any) -> None:
    """Any clean CTC alignment of a sequence of the loop's words reads back as that sequence."""
    runs = st.integers(1, 3)
    tokens: list[str] = ["<pad>"] * data.draw(st.integers(0, 3))
    for w, word in enumerate(sentence):
        if w:
            tokens += ["<pad>"] * data.draw(st.integers(0, 2)) + ["|"] * data.draw(runs)
            tokens += ["<pad>"] * data.draw(st.integers(0, 2))
        for i, ch in enumerate(word):
            if i and (ch == word[i - 1] or data.draw(st.booleans())):
                tokens += ["<pad>"] * data.draw(runs)
            tokens += [ch] * data.draw(runs)
    tokens += ["<pad>"] * data.draw(st.integers(0, 2))
    assert _read(_loop().best_path(_log(_frames(tokens)))) == " ".join(sentence)


@pytest.mark.parametrize(
    ("words", "delimiter", "message"),
    [
        ((), "|", "at least one word"),
        (("ONE", ""), "|", "cannot be spelled"),
        (("ONE", "SIX"), "|", r"cannot be spelled with the vocab \['S', 'X'\]"),
        (("ONE",), " ", "delimiter ' ' is not in the vocab"),
    ],
)
def test_loop_rejects_what_it_cannot_spell(
    words: tuple[str, ...], delimiter: str, message: str
) -> None:
    """No words, an empty word, a letter outside the vocab or an unknown delimiter raise."""
    with pytest.raises(ModelError, match=message):
        WordLoop(words, VOCAB, blank_id=0, delimiter=delimiter)


def test_decoder_holds_the_transcript_to_the_intents_grammar() -> None:
    """The intent with a grammar gets the loop (and says so); any other intent the free search."""
    decoder = OutputDecoder(_grammar_manifest())
    sure = Intent("digits", 0.9)
    held = decoder.decode({"logits": TWE}, intent=sure, offset_ms=100.0).transcript
    assert held is not None
    assert (held.text, held.grammar) == ("two", "digits")
    (word,) = held.words
    assert (word.start_ms, word.end_ms) == (100.0, 100.0 + 3 * MS_PER_FRAME)
    p = np.exp(_log(TWE))
    expected = (p[0, VOCAB.index("T")] + p[1, VOCAB.index("W")] + p[2, VOCAB.index("O")]) / 3
    assert word.confidence == pytest.approx(expected, abs=1e-4)
    for other in (None, Intent("weather", 0.9), Intent("digits", 0.3, abstain=True)):
        free = decoder.decode({"logits": TWE}, intent=other).transcript
        assert free is not None
        assert (free.text, free.grammar) == ("twe", None)


def test_decoder_without_grammars_ignores_the_intent() -> None:
    """A ctc bundle with no grammars decodes the same with or without an intent."""
    decoder = OutputDecoder(_ctc())
    assert decoder.grammars == {}
    with_intent = decoder.decode({"logits": TWE}, intent=Intent("digits", 1.0))
    assert with_intent == decoder.decode({"logits": TWE})


def test_manifest_grammars_round_trip() -> None:
    """Grammars survive manifest.json; an absent field means none."""
    m = _grammar_manifest(word_penalty=1.5)
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    plain = _ctc().to_dict()
    del plain["grammars"]
    assert Manifest.from_dict(plain).grammars == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grammars": {"intent": "digits"}}, "grammars must be a list"),
        ({"grammars": [{"words": ["ONE"]}]}, "lacks required field 'intent'"),
        ({"grammars": [{"intent": "digits", "words": []}]}, "has no words"),
        ({"grammars": [{"intent": "digits", "words": ["SIX"]}]}, r"no 'S', 'X'"),
        (
            {"grammars": [{"intent": "d", "words": ["ONE"]}, {"intent": "d", "words": ["TWO"]}]},
            "empty or repeated",
        ),
        (
            {"grammars": [{"intent": "d", "words": ["ONE"], "word_penalty": float("nan")}]},
            "must be finite",
        ),
        ({"word_delimiter": None}, "need a word_delimiter"),
        ({"task": "classify", "labels": ["a"]}, "only a ctc bundle can carry grammars"),
    ],
)
def test_manifest_grammars_are_validated(change: dict[str, Any], message: str) -> None:
    """Each grammar names one intent once, with words the vocab can spell, on a ctc bundle."""
    good = _grammar_manifest().to_dict()
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict({**good, **change})

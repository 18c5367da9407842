"""Tests for the decoders: CTC greedy transcripts, intents, values, embeddings, and validation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, strategies as st

from streamer.ctc import CtcGreedyDecoder, _without_kenlm_banner
from streamer.decoding import Decoded, OutputDecoder, decode_utterance
from streamer.errors import ConfigError, ManifestError, ModelError
from streamer.heads import Classification, IntentDecoder, decode_embedding, decode_value
from streamer.manifest import IntentGrammar, LanguageModel, Manifest, Source, TensorSpec
from streamer.outputs import log_softmax
from streamer.protocol import Alternative, Intent, Transcript, Word
from streamer.wordloop import word_list_gap

VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|", *"ABCDEHILNORTW'")
ID = {t: i for i, t in enumerate(VOCAB)}
MS_PER_FRAME = 20.0  # 320 samples at 16 kHz


def _manifest(task: str, outputs: Mapping[str, tuple[int | str, ...]], **extra: Any) -> Manifest:
    return Manifest(
        arch="sew-d",
        task=task,
        sample_rate=16000,
        inputs=(TensorSpec("input_values", "float32", ("batch", "samples")),),
        outputs=tuple(TensorSpec(n, "float32", s) for n, s in outputs.items()),
        min_samples=400,
        frame_stride_samples=320,
        opset=17,
        source=Source(path="test"),
        parity=None,
        **extra,
    )


def _ctc(vocab: tuple[str, ...] = VOCAB, n_out: int | str | None = None) -> Manifest:
    n = len(vocab) if n_out is None else n_out
    return _manifest(
        "ctc",
        {"logits": ("batch", "frames", n)},
        vocab=vocab,
        blank_id=0,
        word_delimiter="|",
    )


def _frames(tokens: list[str], vocab: tuple[str, ...] = VOCAB, peak: float = 8.0) -> Any:
    logits = np.zeros((len(tokens), len(vocab)), np.float32)
    for t, tok in enumerate(tokens):
        logits[t, vocab.index(tok)] = peak
    return logits


def _seq(spec: str) -> list[str]:
    """'_' is blank, '|' the delimiter, other characters themselves."""
    return ["<pad>" if c == "_" else c for c in spec]


def test_ctc_collapses_repeats_drops_blanks_and_splits_words() -> None:
    """Repeated frames collapse, a blank separates a real double letter, '|' splits words."""
    tr = CtcGreedyDecoder(_ctc()).decode(_frames(_seq("__HHE_LL_LLO___|_WWO_RLD_")))
    assert tr.text == "hello world"
    assert [w.word for w in tr.words] == ["hello", "world"]


def test_ctc_word_times_follow_frames_and_offset() -> None:
    """A word spans its first to last character frame, at stride/rate per frame, plus offset."""
    tr = CtcGreedyDecoder(_ctc()).decode(_frames(_seq("__HI__|___NO_")), offset_ms=1000.0)
    hi, no = tr.words
    assert (hi.start_ms, hi.end_ms) == (1000.0 + 2 * MS_PER_FRAME, 1000.0 + 4 * MS_PER_FRAME)
    assert (no.start_ms, no.end_ms) == (1000.0 + 10 * MS_PER_FRAME, 1000.0 + 12 * MS_PER_FRAME)


def test_ctc_confidence_is_mean_of_character_frames() -> None:
    """Confidence averages the top probability of the word's character frames only."""
    logits = _frames(_seq("AB_"))
    logits[1] = 0.0  # a flat frame: top probability 1/vocab
    logits[1, ID["B"]] = 1e-3
    p_sure = 1.0 / (1.0 + (len(VOCAB) - 1) * np.exp(-8.0))
    p_flat = np.exp(1e-3) / (np.exp(1e-3) + len(VOCAB) - 1)
    (word,) = CtcGreedyDecoder(_ctc()).decode(logits).words
    assert word.word == "ab"
    assert word.confidence == pytest.approx((p_sure + p_flat) / 2, abs=1e-4)
    (low,) = CtcGreedyDecoder(_ctc(), aggregate="min").decode(logits).words
    assert low.confidence == pytest.approx(p_flat, abs=1e-4)


def test_ctc_special_tokens_vanish_without_splitting_words() -> None:
    """<s>, </s>, <unk> and [PAD]-style tokens are dropped and do not break a word."""
    vocab = (*VOCAB, "[UNK]", "")
    tokens = ["<s>", "O", "<unk>", "N", "[UNK]", "E", "", "</s>"]
    tr = CtcGreedyDecoder(_ctc(vocab)).decode(_frames(tokens, vocab))
    assert tr == Transcript("one", (Word("one", 20.0, 120.0, tr.words[0].confidence),))


def test_ctc_space_and_sentencepiece_tokens_delimit_words() -> None:
    """A space token and a token starting with U+2581 start new words."""
    vocab = ("<blank>", " ", "\u2581", "\u2581THE", "RE", "A")
    tr = CtcGreedyDecoder(_ctc(vocab)).decode(
        _frames(["\u2581THE", "RE", " ", "A", "\u2581", "A", "\u2581THE"], vocab)
    )
    assert tr.text == "there a a the"


def test_ctc_keeps_case_when_asked() -> None:
    """lowercase=False leaves the vocab's case alone."""
    tr = CtcGreedyDecoder(_ctc(), lowercase=False).decode(_frames(_seq("HI")))
    assert tr.text == "HI"


@pytest.mark.parametrize("spec", ["", "____", "||_|", "<s>"])
def test_ctc_silence_gives_empty_transcript(spec: str) -> None:
    """No frames, only blanks, delimiters or specials give an empty transcript."""
    tokens = ["<s>"] if spec == "<s>" else _seq(spec)
    assert CtcGreedyDecoder(_ctc()).decode(_frames(tokens)) == Transcript("", ())


def test_ctc_empty_frames_array() -> None:
    """A [0, vocab] array decodes to an empty transcript."""
    empty = np.zeros((0, len(VOCAB)), np.float32)
    assert CtcGreedyDecoder(_ctc()).decode(empty).text == ""


letters = st.sampled_from("ABCDEHILNORTW'")
sentences = st.lists(st.lists(letters, min_size=1, max_size=6), min_size=1, max_size=5)


@given(sentences, st.data())
def test_ctc_decodes_any_constructed_alignment(sentence: list[list[str]], data: Any) -> None:
    """Any CTC alignment of a word sequence decodes to those words at the right frames."""
    runs = st.integers(1, 3)
    tokens: list[str] = ["<pad>"] * data.draw(st.integers(0, 3))
    spans = []
    for w, word in enumerate(sentence):
        if w:
            tokens += ["<pad>"] * data.draw(st.integers(0, 2)) + ["|"] * data.draw(runs)
            tokens += ["<pad>"] * data.draw(st.integers(0, 2))
        first = len(tokens)
        for i, ch in enumerate(word):
            if i and (ch == word[i - 1] or data.draw(st.booleans())):
                tokens += ["<pad>"] * data.draw(runs)
            tokens += [ch] * data.draw(runs)
        spans.append((first, len(tokens)))
    tokens += ["<pad>", "|"] * data.draw(st.integers(0, 2))
    offset = data.draw(st.floats(0, 1e6))
    tr = CtcGreedyDecoder(_ctc()).decode(_frames(tokens), offset_ms=offset)
    assert tr.text == " ".join("".join(w).lower() for w in sentence)
    for got, (first, end) in zip(tr.words, spans, strict=True):
        assert got.start_ms == pytest.approx(offset + first * MS_PER_FRAME)
        assert got.end_ms == pytest.approx(offset + end * MS_PER_FRAME)
        assert 0.99 < got.confidence <= 1.0


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (np.zeros((3,), np.float32), r"shape \[3\], expected \[\*, 19\]"),
        (np.zeros((3, 18), np.float32), r"shape \[3, 18\]"),
        (np.zeros((3, 19), np.int64), "dtype int64"),
        (np.full((3, 19), np.nan, np.float32), "NaN"),
        (np.full((3, 19), np.inf, np.float16), "NaN or inf"),
    ],
)
def test_ctc_rejects_bad_logits(logits: npt.NDArray[Any], message: str) -> None:
    """Wrong rank, vocab size, dtype or non-finite values raise ModelError."""
    with pytest.raises(ModelError, match=message):
        CtcGreedyDecoder(_ctc()).decode(logits)


def test_ctc_rejects_bundles_that_do_not_fit() -> None:
    """A non-ctc bundle, a missing logits output, or a logits size off the vocab are refused."""
    with pytest.raises(ModelError, match="ctc bundle"):
        CtcGreedyDecoder(_manifest("regress", {"value": ("batch",)}))
    with pytest.raises(ModelError, match="logits has 40 classes"):
        CtcGreedyDecoder(_ctc(n_out=40))
    no_logits = _manifest("ctc", {"scores": ()}, vocab=VOCAB, blank_id=0)
    with pytest.raises(ModelError, match="needs an output named 'logits'"):
        CtcGreedyDecoder(no_logits)
    assert CtcGreedyDecoder(_ctc(n_out="vocab")).n_vocab == len(VOCAB)


INTENTS = ("lights_on", "lights_off", "weather", "timer")
ROOMS = ("kitchen", "bedroom", "none")


def _classify(labels: Any, outputs: dict[str, tuple[int | str, ...]] | None = None) -> Manifest:
    if outputs is None:
        outputs = {"logits": ("batch", len(labels))}
    return _manifest("classify", outputs, labels=labels)


def _multi() -> Manifest:
    outputs = {"logits_0": ("batch", 4), "logits_1": ("batch", 3), "embedding": ("batch", 4)}
    return _manifest("classify", outputs, labels=(INTENTS, ROOMS), embedding_dim=4)


def test_intent_n_best_and_abstain() -> None:
    """The best label comes with its runners-up in order; abstain follows the threshold."""
    logits = np.log(np.array([0.1, 0.6, 0.2, 0.1]))
    sure = IntentDecoder(_classify(INTENTS), abstain_below=0.5, n_best=3).decode({"logits": logits})
    assert sure.intent == Intent(
        "lights_off", 0.6, (Alternative("weather", 0.2), Alternative("lights_on", 0.1)), False
    )
    unsure = IntentDecoder(_classify(INTENTS), abstain_below=0.7, n_best=1).decode(
        {"logits": logits}
    )
    assert unsure == Classification(Intent("lights_off", 0.6, (), True))


def test_intent_ties_keep_label_order() -> None:
    """Equal probabilities rank in label order, so results are deterministic."""
    decoder = IntentDecoder(_classify(INTENTS), n_best=4)
    got = decoder.decode({"logits": np.zeros(4, np.float32)}).intent
    assert [got.name, *(a.name for a in got.alternatives)] == list(INTENTS)
    assert got.confidence == 0.25
    assert got.abstain


def test_multi_label_gives_intent_and_labels() -> None:
    """The first label set is the intent and each further set one entry of labels."""
    decoder = IntentDecoder(_multi(), abstain_below=0.0, n_best=2)
    assert decoder.outputs == ["logits_0", "logits_1"]
    out = decoder.decode(
        {"logits_0": np.array([0.0, 0.0, 5.0, 0.0]), "logits_1": np.array([3.0, 0.0, 0.0])}
    )
    assert out.intent.name == "weather"
    assert [label.name for label in out.labels] == ["kitchen"]
    assert not out.labels[0].abstain


def test_single_nested_label_set_uses_indexed_output() -> None:
    """A single label set written as a list of lists reads output logits_0."""
    decoder = IntentDecoder(_classify((INTENTS,), {"logits_0": ("batch", 4)}))
    assert decoder.outputs == ["logits_0"]


def test_intent_validation() -> None:
    """Bad options, non-classify bundles, size mismatches and missing outputs are refused."""
    with pytest.raises(ConfigError):
        IntentDecoder(_classify(INTENTS), abstain_below=1.5)
    with pytest.raises(ConfigError):
        IntentDecoder(_classify(INTENTS), n_best=0)
    with pytest.raises(ModelError, match="classify bundle"):
        IntentDecoder(_ctc())
    with pytest.raises(ModelError, match="has 5 classes but 4 labels"):
        IntentDecoder(_classify(INTENTS, {"logits": ("batch", 5)}))
    decoder = IntentDecoder(_multi())
    with pytest.raises(ModelError, match="no 'logits_1' output"):
        decoder.decode({"logits_0": np.zeros(4, np.float32)})
    with pytest.raises(ModelError, match="expected \\[3\\]"):
        decoder.decode({"logits_0": np.zeros(4), "logits_1": np.zeros(4)})


def test_decode_value() -> None:
    """A regression output of shape [] or [1] becomes a float; anything else is an error."""
    assert decode_value(np.float32(2.5)) == 2.5
    assert decode_value(np.array([-1.0])) == -1.0
    with pytest.raises(ModelError, match="value has shape \\[2\\]"):
        decode_value(np.zeros(2))
    with pytest.raises(ModelError, match="NaN"):
        decode_value(np.array(np.nan))


def test_decode_embedding() -> None:
    """Embeddings pass through at float32 precision or come out with unit L2 norm."""
    raw = decode_embedding(np.array([3.0, 4.0], np.float32), dim=2)
    assert raw == (3.0, 4.0)
    unit = decode_embedding(np.array([3.0, 4.0]), normalize=True)
    assert unit == (0.6, 0.8)
    assert decode_embedding(np.zeros(3), normalize=True) == (0.0, 0.0, 0.0)
    assert decode_embedding(np.array([0.1], np.float32)) == (0.1,)
    with pytest.raises(ModelError, match="embedding has shape \\[3\\], expected \\[2\\]"):
        decode_embedding(np.zeros(3), dim=2)


def test_output_decoder_per_task() -> None:
    """Each task fills its own result field; embeddings only for embed or when wanted."""
    ctc = OutputDecoder(_ctc()).decode({"logits": _frames(_seq("HI"))})
    assert ctc.transcript is not None
    assert ctc.transcript.text == "hi"
    multi = OutputDecoder(_multi())
    outputs = {"logits_0": np.zeros(4), "logits_1": np.zeros(3), "embedding": np.ones(4)}
    plain = multi.decode(outputs)
    assert plain.intent is not None
    assert plain.labels is not None
    assert plain.embedding is None
    assert multi.decode(outputs, want_embedding=True).embedding == (1.0,) * 4
    single = OutputDecoder(_classify(INTENTS)).decode({"logits": np.zeros(4)})
    assert single.labels is None
    regress = OutputDecoder(_manifest("regress", {"value": ("batch",)}))
    assert regress.decode({"value": np.float32(0.5)}, want_embedding=True) == Decoded(value=0.5)
    embed = OutputDecoder(_manifest("embed", {"embedding": ("batch", 2)}), normalize_embedding=True)
    assert embed.decode({"embedding": np.array([0.0, 2.0])}) == Decoded(embedding=(0.0, 1.0))


def test_output_decoder_needs_the_task_output() -> None:
    """A regress or embed bundle without its output is refused when the decoder is built."""
    with pytest.raises(ModelError, match="'value'"):
        OutputDecoder(_manifest("regress", {"score": ("batch",)}))
    with pytest.raises(ModelError, match="'embedding'"):
        OutputDecoder(_manifest("embed", {"vector": ("batch", 2)}))


def test_decoded_merge_prefers_self() -> None:
    """Merging two bundles' results fills gaps from the other and keeps self on a clash."""
    words = Decoded(transcript=Transcript("hi"), value=0.0)
    intent = Decoded(intent=Intent("x", 1.0), labels=(Intent("y", 1.0),), value=1.0)
    merged = words.merge(intent).merge(Decoded(embedding=(1.0,), transcript=Transcript("no")))
    assert merged == Decoded(Transcript("hi"), Intent("x", 1.0), (Intent("y", 1.0),), 0.0, (1.0,))
    assert Decoded().merge(intent).value == 1.0


# --- beam search with a language model ----------------------------------------------------------

LM_SENTENCES = ["hello world", "hello there", "hi there", "hi world", "hello there world"]


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Path]:
    """A ctc manifest naming ``lm.arpa`` (a bigram of LM_SENTENCES) and its bundle folder."""
    from streamer_training.lm import write_arpa

    folder = tmp_path_factory.mktemp("lm-bundle")
    write_arpa(LM_SENTENCES, folder / "lm.arpa", order=2)
    return _ctc_with_lm(), folder


def _ctc_with_lm(**lm: Any) -> Manifest:
    fields = {"file": "lm.arpa", "alpha": 0.5, "beta": 1.0, **lm}
    return _manifest(
        "ctc",
        {"logits": ("batch", "frames", len(VOCAB))},
        vocab=VOCAB,
        blank_id=0,
        word_delimiter="|",
        lm=LanguageModel(**fields),
    )


def _soft_frames(frames: list[dict[str, float]]) -> npt.NDArray[np.float32]:
    """Log-probabilities; each frame gives probabilities of some tokens, the rest share 1e-4."""
    out = np.full((len(frames), len(VOCAB)), 1e-4, np.float64)
    for t, probs in enumerate(frames):
        for tok, p in probs.items():
            out[t, VOCAB.index(tok)] = p
    out /= out.sum(axis=1, keepdims=True)
    return np.log(out).astype(np.float32)


# "hi ther" by the best frame each time; the LM knows "there", and its last "E" is 40% likely.
HI_THERE = _soft_frames(
    [
        {"H": 0.9},
        {"I": 0.9},
        {"|": 0.9},
        {"T": 0.9},
        {"H": 0.9},
        {"E": 0.9},
        {"R": 0.9},
        {"<pad>": 0.6, "E": 0.4},
        {"<pad>": 0.9},
    ]
)


def test_beam_search_with_lm_spells_words_the_lm_knows(lm_bundle: tuple[Manifest, Path]) -> None:
    """Greedy reads 'hi ther'; beam search fused with the LM reads 'hi there', with times."""
    manifest, folder = lm_bundle
    assert CtcGreedyDecoder(manifest).decode(HI_THERE).text == "hi ther"
    decoder = OutputDecoder(manifest, bundle_dir=folder)
    assert decoder.ctc_search == "beam search with lm.arpa, width 64"
    found = decoder.decode({"logits": HI_THERE}, offset_ms=1000.0).transcript
    assert found is not None
    assert found.text == "hi there"
    assert [w.word for w in found.words] == ["hi", "there"]
    hi, there = found.words
    assert 1000.0 <= hi.start_ms < hi.end_ms <= there.start_ms < there.end_ms
    assert there.end_ms <= 1000.0 + len(HI_THERE) * MS_PER_FRAME
    assert all(0.0 < w.confidence <= 1.0 for w in found.words)


def test_loading_the_lm_keeps_kenlm_banner_off_stderr(
    lm_bundle: tuple[Manifest, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """KenLM's C++ banner and progress bar go to the debug log, not to the daemon's stderr."""
    manifest, folder = lm_bundle
    OutputDecoder(manifest, bundle_dir=folder)
    err = capfd.readouterr().err
    assert "binary file" not in err
    assert "****" not in err


def test_kenlm_banner_filter_passes_other_stderr_through(capfd: pytest.CaptureFixture[str]) -> None:
    """Only banner lines are dropped: another writer's line in the same window still shows."""
    with _without_kenlm_banner():
        os.write(2, b"Reading /x/lm.arpa\n----5---10---15---100\n*****\nreal trouble\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "real trouble\nafter\n"


def test_beam_search_without_lm_follows_the_model(lm_bundle: tuple[Manifest, Path]) -> None:
    """ctc="beam" on a bundle without an LM searches the model alone: 'hi ther' again."""
    _, folder = lm_bundle
    decoder = OutputDecoder(_ctc(), bundle_dir=folder, ctc="beam")
    assert decoder.ctc_search == "beam search without a language model, width 64"
    found = decoder.decode({"logits": HI_THERE}).transcript
    assert found is not None
    assert found.text == "hi ther"


def test_ctc_search_choice(lm_bundle: tuple[Manifest, Path], tmp_path: Path) -> None:
    """auto: beam with the LM when the bundle ships one, else greedy; greedy when asked."""
    manifest, folder = lm_bundle
    assert OutputDecoder(_ctc(), bundle_dir=folder).ctc_search == (
        "greedy (the bundle ships no language model)"
    )
    assert OutputDecoder(manifest).ctc_search == "greedy (no bundle folder to read lm.arpa from)"
    greedy = OutputDecoder(manifest, bundle_dir=folder, ctc="greedy")
    assert greedy.ctc_search == "greedy (asked for)"
    found = greedy.decode({"logits": HI_THERE}).transcript
    assert found is not None
    assert found.text == "hi ther"
    with pytest.raises(ModelError, match=r"language model .*lm\.arpa is missing"):
        OutputDecoder(manifest, bundle_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"decoder\.ctc"):
        OutputDecoder(manifest, bundle_dir=folder, ctc="fancy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="beam_width"):
        OutputDecoder(manifest, bundle_dir=folder, beam_width=0)


def test_missing_beam_library_falls_back_to_greedy_unless_beam_is_required(
    lm_bundle: tuple[Manifest, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the beam search library cannot load, auto decodes greedily and says why."""
    manifest, folder = lm_bundle
    monkeypatch.setitem(sys.modules, "ctc_beam_decoder", None)  # import raises ImportError
    decoder = OutputDecoder(manifest, bundle_dir=folder)
    assert decoder.ctc_search.startswith("greedy (CTC beam search cannot load:")
    found = decoder.decode({"logits": HI_THERE}).transcript
    assert found is not None
    assert found.text == "hi ther"
    with pytest.raises(ModelError, match="beam search cannot load"):
        OutputDecoder(manifest, bundle_dir=folder, ctc="beam")


def test_beam_search_rejects_bad_logits_and_decodes_silence(
    lm_bundle: tuple[Manifest, Path],
) -> None:
    """The beam search checks its input like the greedy decoder; silence gives no words."""
    manifest, folder = lm_bundle
    decoder = OutputDecoder(manifest, bundle_dir=folder)
    with pytest.raises(ModelError, match="NaN or inf"):
        decoder.decode({"logits": np.full((3, len(VOCAB)), np.nan, np.float32)})
    with pytest.raises(ModelError, match="shape"):
        decoder.decode({"logits": np.zeros((3, 5), np.float32)})
    for logits in (np.zeros((0, len(VOCAB)), np.float32), _frames(["<pad>"] * 5)):
        found = decoder.decode({"logits": logits}).transcript
        assert found is not None
        assert found.text == ""
        assert found.words == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lm": {"file": "../lm.arpa", "alpha": 0.5, "beta": 1.0}}, "file name inside"),
        ({"lm": {"file": "lm.arpa", "alpha": -1.0, "beta": 1.0}}, "alpha must be >= 0"),
        ({"lm": {"file": "lm.arpa", "alpha": 0.5, "beta": float("inf")}}, "finite"),
        ({"lm": {"file": "lm.arpa", "alpha": 0.5}}, "lacks required field 'beta'"),
        ({"task": "classify", "labels": ["a"]}, "only a ctc bundle can carry an lm"),
    ],
)
def test_manifest_lm_is_validated(change: dict[str, Any], message: str) -> None:
    """A manifest's lm must name a file inside the bundle, with finite weights, on a ctc bundle."""
    good = _ctc_with_lm().to_dict()
    assert Manifest.from_dict(json.loads(json.dumps(good))) == _ctc_with_lm()
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict({**good, **change})


# --- the rule across bundles: classifiers first, then CTC held to the intent's word list --------

DIGIT_WORDS = ("ONE", "TWO", "THREE", "NINE")
LABELS = ("digits", "weather", "timer")

# "TWE": the greedy path spells no word; the third frame's runner-up is "O" (word list: "two").
TWE = _soft_frames([{"T": 0.9}, {"W": 0.9}, {"E": 0.55, "O": 0.4}, {"<pad>": 0.9}])


def _intent_logits(best: str, margin: float = 6.0) -> dict[str, npt.NDArray[np.float32]]:
    logits = np.zeros(len(LABELS), np.float32)
    logits[LABELS.index(best)] = margin
    return {"logits": logits}


def _decoders(**manifests: Manifest) -> dict[str, OutputDecoder]:
    """A ctc bundle ("ctc") that holds the intent 'digits' to DIGIT_WORDS, plus ``manifests``."""
    held = dataclasses.replace(_ctc(), grammars=(IntentGrammar("digits", DIGIT_WORDS),))
    return {name: OutputDecoder(m) for name, m in {"ctc": held, **manifests}.items()}


def test_utterance_with_a_word_list_intent_reads_the_word_list() -> None:
    """A sure intent whose word list the ctc bundle has gets the word-list reading."""
    decoders = _decoders(intent=_classify(LABELS))
    rows = {"intent": _intent_logits("digits"), "ctc": {"logits": TWE}}
    got = decode_utterance(decoders, rows, offset_ms=100.0)
    assert got.intent is not None
    assert (got.intent.name, got.intent.abstain) == ("digits", False)
    assert got.transcript is not None
    assert (got.transcript.text, got.transcript.grammar) == ("two", "digits")
    assert got.transcript.words[0].start_ms == 100.0
    assert got.transcript == decoders["ctc"].transcribe(TWE, 100.0, intent=got.intent)


def test_a_word_list_far_from_what_was_said_gives_way_to_the_free_search() -> None:
    """With decoder.grammar_max_gap_per_frame, a word-list path scoring far below the free path
    (a command word the intent model took for digits) is not forced into the list."""
    clear = _soft_frames([{"T": 0.95}, {"W": 0.95}, {"E": 0.95}, {"<pad>": 0.95}])
    held = dataclasses.replace(_ctc(), grammars=(IntentGrammar("digits", DIGIT_WORDS),))
    digits = Intent("digits", 0.99)
    log_probs = log_softmax(np.asarray(clear, np.float64))
    loop = OutputDecoder(held).grammars["digits"]
    gap = word_list_gap(log_probs, loop.best_path(log_probs), blank=held.blank_id)
    assert gap > 0.5
    assert word_list_gap(log_probs, log_probs.argmax(axis=1), blank=held.blank_id) == 0.0
    for limit, text in ((math.inf, "two"), (gap + 0.01, "two"), (gap - 0.01, "twe")):
        decoder = OutputDecoder(held, grammar_max_gap_per_frame=limit)
        assert decoder.transcribe(clear, 0.0, intent=digits).text == text
    # TWE's third frame nearly says "O": the word list is close, so it holds at a small limit
    assert (
        OutputDecoder(held, grammar_max_gap_per_frame=0.5).transcribe(TWE, 0.0, intent=digits).text
        == "two"
    )


def test_the_greedy_reading_ignores_the_word_list_and_needs_a_ctc_bundle() -> None:
    """Partials check stable words against the acoustics alone: no grammar, no LM."""
    decoders = _decoders(intent=_classify(LABELS))
    greedy = decoders["ctc"].greedy(TWE, 100.0)
    assert greedy.text == "twe"  # the word list would read "two"
    assert greedy.words[0].start_ms == 100.0
    with pytest.raises(ModelError, match="no transcript"):
        decoders["intent"].greedy(TWE, 0.0)


@pytest.mark.parametrize(
    ("rows", "intent"),
    [
        ({"intent": _intent_logits("digits", margin=0.5)}, "digits"),  # abstains (p 0.45)
        ({"intent": _intent_logits("weather")}, "weather"),  # no word list for it
        ({}, None),  # no intent head at all
    ],
    ids=["intent-abstains", "intent-without-word-list", "no-intent-head"],
)
def test_utterance_without_a_usable_intent_gets_the_free_transcript(
    rows: dict[str, dict[str, Any]], intent: str | None
) -> None:
    """An abstained intent, an intent without a word list, or no classifier: the free search."""
    decoders = _decoders(intent=_classify(LABELS))
    got = decode_utterance(decoders, {**rows, "ctc": {"logits": TWE}})
    assert got.transcript is not None
    assert (got.transcript.text, got.transcript.grammar) == ("twe", None)
    assert (got.intent.name if got.intent else None) == intent


def test_utterance_classifiers_decode_first_whatever_the_model_order() -> None:
    """A ctc bundle listed before the classifier is still held to the classifier's intent."""
    decoders = _decoders(intent=_classify(LABELS))
    got = decode_utterance(decoders, {"ctc": {"logits": TWE}, "intent": _intent_logits("digits")})
    assert got.transcript is not None
    assert got.transcript.grammar == "digits"


def test_utterance_first_classifier_in_model_order_decides() -> None:
    """With two classifiers, the first one's intent steers the search and is the one reported."""
    decoders = _decoders(a=_classify(LABELS), b=_classify(LABELS))
    ctc = {"logits": TWE}
    weather_first = {"a": _intent_logits("weather"), "b": _intent_logits("digits"), "ctc": ctc}
    got = decode_utterance(decoders, weather_first)
    assert got.intent is not None
    assert got.transcript is not None
    assert (got.intent.name, got.transcript.text) == ("weather", "twe")
    digits_first = {"b": _intent_logits("digits"), "a": _intent_logits("weather"), "ctc": ctc}
    got = decode_utterance(decoders, digits_first)
    assert got.intent is not None
    assert got.transcript is not None
    assert (got.intent.name, got.transcript.text) == ("digits", "two")


def test_utterance_merges_every_bundle_and_refuses_an_unknown_model() -> None:
    """Value and embedding join the transcript and intent; a model with no decoder is an error."""
    decoders = _decoders(
        intent=_classify(LABELS),
        score=_manifest("regress", {"value": ("batch",)}),
        voice=_manifest("embed", {"embedding": ("batch", 2)}),
    )
    rows = {
        "ctc": {"logits": TWE},
        "intent": _intent_logits("timer"),
        "score": {"value": np.float32(0.5)},
        "voice": {"embedding": np.array([3.0, 4.0], np.float32)},
    }
    got = decode_utterance(decoders, rows)
    assert got.transcript is not None
    assert got.intent is not None
    assert (got.transcript.text, got.intent.name, got.value) == ("twe", "timer", 0.5)
    assert got.embedding == (3.0, 4.0)
    with pytest.raises(ModelError, match="no decoder for model 'other'"):
        decode_utterance(decoders, {**rows, "other": {}})

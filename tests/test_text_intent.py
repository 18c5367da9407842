"""A classifier's transcript head: its file, its reading, the intent combined with the audio's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.decoding import OutputDecoder, decode_utterance
from streamer.errors import ModelError
from streamer.manifest import IntentGrammar, Manifest
from streamer.text_intent import TEXT_INTENT_FILE, TextIntentHead, features
from streamer_training.text_intent import fit, write_head
from tests.test_decoders import _classify, _ctc, _frames, _seq

REPO = Path(__file__).resolve().parents[1]
LABELS = ("digits", "weather", "timer")
DIGIT_WORDS = ("ONE", "TWO", "THREE", "NINE")
SENTENCES = {
    "digits": ("one", "two", "three", "nine", "one two", "two nine three"),
    "weather": ("hot", "cold", "rain", "cold rain", "hot wind"),
    "timer": ("bell", "alert", "ten bell", "alert the bell"),
}


def _head_file(folder: Path, audio_weight: float = 0.5, **change: Any) -> Path:
    texts = [t for k in LABELS for t in SENTENCES[k]]
    targets = [LABELS.index(k) for k in LABELS for _ in SENTENCES[k]]
    names, w, b = fit(texts, targets, len(LABELS), epochs=200)
    raw = {
        "format_version": 1,
        "labels": list(LABELS),
        "audio_weight": audio_weight,
        "features": names,
        "weights": w.tolist(),
        "bias": b.tolist(),
        **change,
    }
    path = folder / TEXT_INTENT_FILE
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def _audio(best: str, margin: float) -> dict[str, Any]:
    logits = np.zeros(len(LABELS), np.float32)
    logits[LABELS.index(best)] = margin
    return {"logits": logits}


def _spelled(word: str) -> Any:
    return _frames(_seq("_" + "_".join(word.upper()) + "__"))


def test_features_are_words_and_word_pairs() -> None:
    assert features("Turn ON  the light") == [
        "turn",
        "on",
        "the",
        "light",
        "turn on",
        "on the",
        "the light",
    ]
    assert features("") == []


def test_the_head_reads_its_sentences_and_weighs_the_audio(tmp_path: Path) -> None:
    """Each training sentence reads as its intent; audio_weight 1 is the audio alone, 0 the text."""
    head = TextIntentHead.load(_head_file(tmp_path), LABELS)
    for label, texts in SENTENCES.items():
        for text in texts:
            assert LABELS[int(head.log_probs(text).argmax())] == label
    unknown = head.log_probs("something never seen")
    assert np.allclose(np.exp(unknown).sum(), 1.0)
    audio = np.array([2.0, 0.0, 0.0])
    for weight, best in ((1.0, "digits"), (0.0, "weather"), (0.5, "weather")):
        fused = dataclasses.replace(head, audio_weight=weight).fuse(audio, "cold rain")
        assert np.allclose(np.exp(fused).sum(), 1.0)
        assert LABELS[int(fused.argmax())] == best


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 2}, "format_version 2"),
        ({"labels": ["digits", "weather", "alarm"]}, "differ from the bundle's"),
        ({"bias": [0.0, 0.0]}, "do not fit"),
        ({"audio_weight": 1.5}, "audio_weight must be within 0-1"),
        ({"weights": "none"}, "not a transcript intent head"),
        ({"weights": [[1.0, 2.0, 3.0]]}, "do not fit"),
        ({"features": None}, "not a transcript intent head"),
    ],
)
def test_a_bad_head_file_is_a_clear_model_error(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = _head_file(tmp_path, **change)
    with pytest.raises(ModelError, match=message) as err:
        TextIntentHead.load(path, LABELS)
    assert str(path) in str(err.value)


def test_an_unreadable_head_file_names_itself(tmp_path: Path) -> None:
    path = tmp_path / TEXT_INTENT_FILE
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match="cannot read the transcript intent head"):
        OutputDecoder(_classify(LABELS), bundle_dir=tmp_path)


def _decoders(folder: Path, *, text_head: bool = True) -> dict[str, OutputDecoder]:
    held = dataclasses.replace(_ctc(), grammars=(IntentGrammar("digits", DIGIT_WORDS),))
    return {
        "intent": OutputDecoder(_classify(LABELS), bundle_dir=folder, text_head=text_head),
        "ctc": OutputDecoder(held, grammar_max_gap_per_frame=0.0),
    }


def test_the_intent_combines_the_audio_and_the_transcript(tmp_path: Path) -> None:
    """The audio leans to digits, the transcript spells a weather word: the combined intent is
    weather; switched off (or with no head in the bundle) it stays the audio's."""
    _head_file(tmp_path)
    rows = {"intent": _audio("digits", 1.0), "ctc": {"logits": _spelled("cold")}}
    got = decode_utterance(_decoders(tmp_path), rows)
    assert got.intent is not None
    assert got.transcript is not None
    assert (got.intent.name, got.transcript.text) == ("weather", "cold")
    for decoders in (_decoders(tmp_path, text_head=False), _decoders(tmp_path / "none")):
        alone = decode_utterance(decoders, rows)
        assert alone.intent is not None
        assert alone.intent.name == "digits"
        assert alone.intent == decoders["intent"].decode(rows["intent"]).intent


def test_a_combined_intent_with_a_word_list_reads_the_transcript_again(tmp_path: Path) -> None:
    """The audio leans to weather (free search), the transcript says "two": the combined intent
    is digits, and the ctc bundle reads the utterance again with the digits word list."""
    _head_file(tmp_path)
    rows = {"intent": _audio("weather", 1.0), "ctc": {"logits": _spelled("two")}}
    got = decode_utterance(_decoders(tmp_path), rows)
    assert got.intent is not None
    assert got.transcript is not None
    assert (got.intent.name, got.transcript.text, got.transcript.grammar) == (
        "digits",
        "two",
        "digits",
    )
    alone = decode_utterance(_decoders(tmp_path, text_head=False), rows)
    assert alone.transcript is not None
    assert alone.intent is not None
    assert (alone.intent.name, alone.transcript.grammar) == ("weather", None)


def test_an_empty_transcript_leaves_the_audio_intent(tmp_path: Path) -> None:
    _head_file(tmp_path)
    rows = {"intent": _audio("timer", 1.0), "ctc": {"logits": _frames(_seq("____"))}}
    decoders = _decoders(tmp_path)
    got = decode_utterance(decoders, rows)
    assert got.intent == decoders["intent"].decode(rows["intent"]).intent


def test_the_shipped_head_fits_its_bundle_and_reads_commands() -> None:
    """exported/commands-intent ships a head with the bundle's intents that reads its commands."""
    bundle = REPO / "exported" / "commands-intent"
    manifest = Manifest.from_dict(json.loads((bundle / "manifest.json").read_text()))
    head = TextIntentHead.find(bundle, manifest.label_sets[0])
    assert head is not None
    assert 0.0 < head.audio_weight < 1.0
    for text, intent in (
        ("turn off the kitchen lights", "lights_off"),
        ("what time is it", "get_time"),
        ("make it louder", "volume_up"),
        ("four two seven", "digits"),
    ):
        assert head.labels[int(head.log_probs(text).argmax())] == intent


def test_the_recipe_writes_a_head_its_bundle_loads(tmp_path: Path) -> None:
    """write_head (the export stage's step) writes a head the shipped manifest's labels accept,
    and refuses a bundle whose intents are not the grammar's."""
    manifest = json.loads((REPO / "exported" / "commands-intent" / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    path = write_head(tmp_path, audio_weight=0.25, sentences=240, seed=1)
    head = TextIntentHead.load(path, Manifest.from_dict(manifest).label_sets[0])
    assert head.audio_weight == 0.25
    assert head.labels[int(head.log_probs("turn off the lights").argmax())] == "lights_off"
    manifest["labels"][0] = ["yes", "no", *manifest["labels"][0][2:]]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not the grammar's"):
        write_head(tmp_path, sentences=24)

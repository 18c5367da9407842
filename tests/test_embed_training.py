"""The sentence-embedding student's data split and its validation measure (no training here)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from streamer_training import embed_data


@pytest.fixture(scope="module")
def sentences() -> list[embed_data.Sentence]:
    """Every sentence with its part (reads ../shared/datasets)."""
    return embed_data.all_sentences()


def test_whole_intents_are_held_out(sentences: list[embed_data.Sentence]) -> None:
    """An intent lives in one part only; held-out intents are defined by text, never trained."""
    parts: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in sentences:
        if s.intent not in (embed_data.OOS, None):
            parts[(s.source, str(s.intent))].add(s.part)
    assert all(len(p) == 1 for p in parts.values())
    held = {part: {k for k, p in parts.items() if p == {part}} for part in ("validation", "test")}
    assert len(held["validation"]) >= 20
    assert len(held["test"]) >= 20
    trained_texts = {s.text for s in sentences if s.part == "train"}
    for part in ("validation", "test"):
        examples = embed_data.intents_of(sentences, part)
        assert len(examples) == len(held[part])
        sizes = [len(v) for v in examples.values()]  # a rare SLURP intent may have fewer
        assert all(1 <= n <= embed_data.EXAMPLES_PER_INTENT for n in sizes)
        assert sizes.count(embed_data.EXAMPLES_PER_INTENT) >= 0.8 * len(sizes)
        assert not trained_texts & {t for v in examples.values() for t in v}
    assert all(s.role == "speak" for s in sentences if s.part == "train")


def test_out_of_scope_sentences_are_never_trained(sentences: list[embed_data.Sentence]) -> None:
    oos = [s for s in sentences if s.intent == embed_data.OOS]
    assert {s.part for s in oos} == {"validation", "test"}
    assert sum(s.part == "test" for s in oos) == 1000


def test_validation_and_test_voices_are_disjoint_and_never_trained() -> None:
    """Held-out espeak-ng variants split in two; training draws none of them."""
    assert not set(embed_data.VALIDATION_VARIANTS) & set(embed_data.TEST_VARIANTS)
    for k in range(200):
        voice = embed_data._voice_for(f"key{k}", "train")
        assert voice.variant not in (*embed_data.VALIDATION_VARIANTS, *embed_data.TEST_VARIANTS)
        assert embed_data._voice_for(f"key{k}", "test").variant in embed_data.TEST_VARIANTS
        assert embed_data._voice_for(f"key{k}", "validation").variant in (
            embed_data.VALIDATION_VARIANTS
        )


def test_zero_shot_measure_scores_nearest_example_and_oos() -> None:
    """top1 by the closest example; out-of-scope rejected below the 90%-kept threshold."""
    pytest.importorskip("torch")
    from streamer_training.train_embed import Teacher, zero_shot

    teacher = Teacher.__new__(Teacher)
    texts = ["a1", "a2", "b1"]
    teacher.index = {t: i for i, t in enumerate(texts)}
    teacher.vectors = np.eye(3, dtype=np.float32)
    examples = {"clinc:a": ["a1", "a2"], "clinc:b": ["b1"]}
    vectors = np.array(
        [[0, 1, 0], [0, 0, 1], [0.9, 0, 0.1], [0.5, 0.5, 0.5]], dtype=np.float32
    )  # a (via a2), b, a, oos
    intents = ["clinc:a", "clinc:b", "clinc:b", "clinc:oos"]
    found = zero_shot(vectors, intents, examples, teacher)
    assert found["top1"] == pytest.approx(2 / 3)
    assert found["oos_rejected_at_90_kept"] == 1.0

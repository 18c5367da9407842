"""The speaker split of the shared real-speech datasets; the shipped bundles on its test speakers.

The bundles run as ``streamer transcribe`` runs them (the daemon's pipeline in process, real
onnxruntime on ``exported/``), through the scoring code of ``bench/real_voices.py``. The floors
sit a few clips under what the bundles measured on the same fixed sample (bench/RESULTS.md,
"Real voices"), so a failure means a broken bundle, pipeline or split, not bad luck.
"""

from __future__ import annotations

import importlib.util
import string
import sys
from collections import defaultdict
from types import ModuleType
from typing import Any

import pytest
from conftest import REPO, running_in_ci

from streamer_training import speakers

DATASETS = speakers.DATASETS_ROOT
#: The AN4 speakers of the test part, pinned: the split must never move silently.
AN4_TEST_SPEAKERS = (
    *("fclc", "fjmd", "fmjc", "fwxs", "mdcs", "mdxn"),
    *("mgah", "mjes", "mmal", "mmap", "mrjc2"),
)
#: Fixed sample: clips per set (seeded hash subset of the test speakers' clips).
SAMPLE = {"fsdd": 40, "sc_commands": 30, "sc_digits": 10, "sc_noise": 60}
#: Keyword-accuracy floors on SAMPLE: measured on the shipped bundles with the learned segmenter
#: (fsdd 38/40, sc_commands 23/30, sc_digits 8/10; with the webrtc segmenter 34/40, 23/30, 7/10;
#: the release before the real-voices fine-tuning: 31/40, 3/30, 7/10), minus two or three clips.
FLOORS = {"fsdd": 0.875, "sc_commands": 0.68, "sc_digits": 0.6}


@pytest.fixture(scope="module", autouse=True)
def _datasets_present() -> None:
    """Without the shared datasets: fail in CI with the folder named, skip with a reason outside."""
    if (DATASETS / "an4" / "manifest.csv").is_file():
        return
    message = f"the shared speech datasets are missing: {DATASETS} (see README 'Development')"
    if running_in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """``bench/real_voices.py`` as a module (its daemon runner and its scoring)."""
    name = "bench_real_voices"
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "real_voices.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_split_is_speaker_disjoint_with_several_speakers_per_part() -> None:
    """Every AN4 and Speech Commands speaker is in exactly one part; each part has several."""
    for dataset in ("an4", "speech_commands"):
        parts_of: dict[str, set[str]] = defaultdict(set)
        for r in speakers.load_records(datasets=[dataset]):
            if r.speaker is not None:
                parts_of[r.speaker].add(r.part)
        assert all(len(parts) == 1 for parts in parts_of.values())
        count: dict[str, int] = defaultdict(int)
        for parts in parts_of.values():
            count[next(iter(parts))] += 1
        assert set(count) == {"train", "validation", "test"}
        assert min(count["validation"], count["test"]) >= 8, (dataset, dict(count))
        assert count["train"] > 3 * count["test"]


def test_split_is_deterministic_and_pinned() -> None:
    """Two reads give the same records, and the AN4 test speakers are the pinned ones."""
    first = speakers.load_records(datasets=["an4", "speech_commands"])
    assert first == speakers.load_records(datasets=["an4", "speech_commands"])
    an4_test = sorted({str(r.speaker) for r in first if r.dataset == "an4" and r.part == "test"})
    assert tuple(an4_test) == AN4_TEST_SPEAKERS
    sample = speakers.unseen_speaker_items(max_per_set=25, seed=1)
    assert sample == speakers.unseen_speaker_items(max_per_set=25, seed=1)
    full = speakers.unseen_speaker_items()
    for name, records in sample.items():
        assert len(records) == min(25, len(full[name]))
        assert set(records) <= set(full[name])


def test_records_follow_the_rules_of_each_dataset() -> None:
    """Noise has no words, FSDD holds lucas out, unsplittable sets train, text fits the alphabet."""
    records = speakers.load_records()
    alphabet = set(string.ascii_lowercase + "' ")
    for r in records:
        assert r.path.is_file(), r.path
        assert r.transcript is None or set(r.transcript) <= alphabet, r.transcript
        if r.kind == "noise":
            assert r.transcript is None
            assert r.speaker is None
        if r.dataset in ("wake_words", "librispeech"):
            assert r.part == "train"
        if r.dataset == "fsdd":
            index = int(r.path.stem.split("_")[2])
            expected = "test" if r.speaker == "lucas" else "reserved" if index < 4 else "train"
            assert r.part == expected
    noise_parts = {r.part for r in records if r.kind == "noise"}
    assert noise_parts == {"train", "validation", "test"}
    an4 = {r.path.stem: r.transcript for r in records if r.dataset == "an4"}
    assert an4["an251-fash-b"] == "yes"


@pytest.fixture(scope="module")
def scores(bench: ModuleType) -> dict[str, Any]:
    """The shipped bundles' scores on :data:`SAMPLE`, each set's clips run once."""
    items = {
        name: speakers.unseen_speaker_items(max_per_set=n, sets=[name])[name]
        for name, n in SAMPLE.items()
    }
    clips = [r for records in items.values() for r in records]
    run, _ = bench.daemon_system([])
    results = dict(zip(map(id, clips), run(clips), strict=True))
    out: dict[str, Any] = {}
    for name, records in items.items():
        out[name] = score = bench.Score()
        for record in records:
            score.add(record, results[id(record)])
    return out


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_bundles_reach_the_floor_on_unseen_speakers(
    scores: dict[str, Any], name: str
) -> None:
    """Single digits and commands of speakers no bundle heard reach the measured floor."""
    score = scores[name]
    assert score.n == SAMPLE[name]
    assert score.keyword / score.n >= FLOORS[name], (name, score.keyword, score.n)


def test_noise_only_clips_give_no_utterance(scores: dict[str, Any]) -> None:
    """No noise-only test clip gives an utterance (the webrtc detector, the default before the
    learned one, cut _silence_/2224.flac's bursts at -25 dBFS as one)."""
    assert scores["sc_noise"].noise_out == 0

"""Real multi-speaker speech from the shared datasets, split by speaker (numpy-free, torch-free).

Reads the manifests of ``datasets/an4``, ``datasets/speech_commands``, ``datasets/wake_words``,
``datasets/librispeech_sentences`` and the file names of ``datasets/fsdd`` into one
:class:`Record` type, and assigns each record to a part, deterministically:

- **AN4** and **Speech Commands**: by speaker. The bucket is the first 32 bits of
  ``sha1("<dataset>:<speaker>")`` modulo 100: 0-69 ``train``, 70-84 ``validation``, 85-99
  ``test`` (74 AN4 speakers give 53 / 10 / 11; 197 Speech Commands speakers 147 / 26 / 24). The
  dataset name is part of the key because Speech Commands' own holdout already used the plain
  ``sha1(speaker)``: the speakers here are exactly those whose digest does *not* start with 0-2,
  so the plain digest would not split them evenly. Noise-only Speech Commands clips
  (``_silence_``) have no speaker: they go by ``sha1("speech_commands:file:<file name>")``
  instead, same buckets. Their transcript is None: they must yield nothing.
- **FSDD** (three speakers): ``lucas`` is ``test`` (the shipped bundles never heard him);
  ``george`` and ``jackson`` recordings 4-49 are ``train``; their recordings 0-3 are ``reserved``
  (the copies in ``shared/audio/fsdd``, never trained on). With three speakers there is no
  validation speaker in this split: FSDD validation is by rotation, i.e. retraining with another
  speaker held out (``test_speaker=`` here, ``bin/train_demo --heldout-speaker`` for training).
- **Wake words** (no speaker ids) and **LibriSpeech** (no transcripts): ``train`` only.

Transcripts are normalised to the CTC alphabet (lower-case a-z, apostrophe, single spaces):
AN4's spelled letters stay single letters and numbers stay words, as in the manifests.

The AN4 and Speech Commands speakers of the official test sets are not in the shared folder at
all (see the datasets' READMEs); ``test`` here is a split of the shared part. Attribution and
licences: the README.md of each dataset folder (AN4: CMU BSD-2-style notice in ``an4/LICENSE``;
Speech Commands v0.02, P. Warden, Google, CC BY 4.0; LibriSpeech, V. Panayotov et al., CC BY 4.0;
Picovoice wake-word benchmark, Apache-2.0; FSDD, Z. Jackson et al., CC BY-SA 4.0).
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from streamer_training.workspace import HELDOUT_SPEAKER, REPO

DATASETS_ROOT = REPO.parent / "shared" / "datasets"
"""Where the shared datasets live (``../shared/datasets`` beside the repository)."""

Part = Literal["train", "validation", "test", "reserved"]
DATASETS: tuple[str, ...] = ("an4", "speech_commands", "fsdd", "wake_words", "librispeech")
"""Every dataset :func:`load_records` reads, by the name records carry."""
_FOLDERS: Mapping[str, str] = {"librispeech": "librispeech_sentences"}
TRAIN_PERCENT = 70
VALIDATION_PERCENT = 15
"""Share of speakers in ``train`` and ``validation``; the rest (about 15%) is ``test``."""
FSDD_DIGITS: tuple[str, ...] = (
    *("zero", "one", "two", "three", "four"),
    *("five", "six", "seven", "eight", "nine"),
)
FSDD_RESERVED_INDICES = frozenset(range(4))
"""FSDD recordings kept out of training for every speaker (the shared test-audio copies)."""

EVAL_SETS: Mapping[str, tuple[str, frozenset[str] | None]] = {
    "fsdd": ("fsdd", None),
    "an4": ("an4", None),
    "sc_commands": ("speech_commands", frozenset({"command"})),
    "sc_digits": ("speech_commands", frozenset({"digit"})),
    "sc_other_words": ("speech_commands", frozenset({"other_word"})),
    "sc_noise": ("speech_commands", frozenset({"noise"})),
}
"""Evaluation sets: name -> (dataset, the record kinds it holds; None: all)."""

_NOT_ALPHABET = re.compile(r"[^a-z' ]+")


class MissingDataError(FileNotFoundError):
    """A shared dataset folder or manifest is not where it should be."""


@dataclass(frozen=True)
class Record:
    """One recording of a shared dataset and the part of the speaker split it belongs to.

    Attributes:
        path: the audio file (absolute).
        transcript: what is said, in the CTC alphabet; None for noise-only clips and for
            unlabelled sets (LibriSpeech).
        speaker: the dataset's speaker id; None where unknown (wake words, noise clips).
        dataset: one of :data:`DATASETS`.
        kind: the dataset's own kind: AN4 ``digits|numbers|letters|command|mixed``; Speech
            Commands ``command|digit|other_word|noise``; FSDD ``digit``; wake words
            ``keyword``; LibriSpeech ``sentence``.
        part: ``train``, ``validation``, ``test`` or ``reserved`` (see the module docstring).
    """

    path: Path
    transcript: str | None
    speaker: str | None
    dataset: str
    kind: str
    part: Part


def normalise_transcript(text: str) -> str | None:
    """Lower-case ``text`` and keep only a-z, apostrophe and single spaces; None if empty."""
    words = _NOT_ALPHABET.sub(" ", text.lower()).split()
    return " ".join(words) or None


def hash_part(key: str) -> Part:
    """``train``, ``validation`` or ``test`` from the SHA-1 of ``key`` (module docstring)."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < TRAIN_PERCENT:
        return "train"
    return "validation" if bucket < TRAIN_PERCENT + VALIDATION_PERCENT else "test"


def load_records(
    *,
    root: Path | None = None,
    datasets: Iterable[str] = DATASETS,
    fsdd_test_speaker: str = HELDOUT_SPEAKER,
) -> list[Record]:
    """Every recording of ``datasets``, in manifest (FSDD: file name) order, with its part.

    Args:
        root: the ``datasets`` folder (default :data:`DATASETS_ROOT`).
        datasets: which of :data:`DATASETS` to read.
        fsdd_test_speaker: the FSDD speaker that is ``test`` (the other two train).

    Raises:
        MissingDataError: a dataset folder or its manifest is absent.
        ValueError: an unknown dataset name.
    """
    base = root or DATASETS_ROOT
    out: list[Record] = []
    for name in datasets:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
        folder = base / _FOLDERS.get(name, name)
        if not folder.is_dir():
            raise MissingDataError(f"shared dataset folder missing: {folder}")
        if name == "fsdd":
            out += _fsdd(folder, fsdd_test_speaker)
        else:
            out += [_record(name, folder, row) for row in _manifest(folder)]
    return out


def split_items(
    part: Part,
    *,
    max_per_set: int | None = None,
    seed: int = 0,
    sets: Sequence[str] | None = None,
    root: Path | None = None,
) -> dict[str, list[Record]]:
    """The records of ``part`` in each evaluation set of :data:`EVAL_SETS`, optionally capped.

    A set larger than ``max_per_set`` keeps the records whose
    ``sha1("<seed>:<dataset>/<folder>/<file>")`` sorts first (a deterministic pseudo-random
    subset; ``seed`` picks another). Records come back in path order. Sets without records in
    ``part`` are left out.

    Raises:
        MissingDataError: a needed dataset is absent.
        ValueError: an unknown set name.
    """
    names = list(sets or EVAL_SETS)
    unknown = [n for n in names if n not in EVAL_SETS]
    if unknown:
        raise ValueError(f"unknown evaluation set(s) {unknown} (known: {', '.join(EVAL_SETS)})")
    datasets = sorted({EVAL_SETS[n][0] for n in names})
    records = [r for r in load_records(root=root, datasets=datasets) if r.part == part]
    out: dict[str, list[Record]] = {}
    for name in names:
        dataset, kinds = EVAL_SETS[name]
        chosen = [r for r in records if r.dataset == dataset and (kinds is None or r.kind in kinds)]
        if max_per_set is not None and len(chosen) > max_per_set:
            chosen = sorted(chosen, key=lambda r: _digest(f"{seed}:{_relative(r)}"))
            chosen = chosen[:max_per_set]
        if chosen:
            out[name] = sorted(chosen, key=lambda r: r.path)
    return out


def unseen_speaker_items(
    *,
    max_per_set: int | None = None,
    seed: int = 0,
    sets: Sequence[str] | None = None,
    root: Path | None = None,
) -> dict[str, list[Record]]:
    """The test-speaker records of each evaluation set (:func:`split_items` of ``test``)."""
    return split_items("test", max_per_set=max_per_set, seed=seed, sets=sets, root=root)


def _digest(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def _relative(record: Record) -> str:
    """A key of the record that does not depend on where the datasets folder is."""
    return f"{record.dataset}/{record.path.parent.name}/{record.path.name}"


def _manifest(folder: Path) -> list[dict[str, str]]:
    path = folder / "manifest.csv"
    if not path.is_file():
        raise MissingDataError(f"shared dataset manifest missing: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _record(dataset: str, folder: Path, row: Mapping[str, str]) -> Record:
    speaker = row.get("speaker") or None
    transcript = normalise_transcript(row.get("transcript", ""))
    kind = row.get("kind") or {"wake_words": "keyword", "librispeech": "sentence"}[dataset]
    part: Part = "train"
    if dataset in ("an4", "speech_commands"):
        key = speaker if speaker is not None else "file:" + Path(row["file"]).name
        part = hash_part(f"{dataset}:{key}")
    if dataset == "librispeech":
        transcript = None
    return Record(folder / row["file"], transcript, speaker, dataset, kind, part)


def _fsdd(folder: Path, test_speaker: str) -> list[Record]:
    out = []
    for path in sorted(folder.glob("*.wav")):
        digit, speaker, index = path.stem.split("_")
        part: Part = "train"
        if speaker == test_speaker:
            part = "test"
        elif int(index) in FSDD_RESERVED_INDICES:
            part = "reserved"
        out.append(Record(path, FSDD_DIGITS[int(digit)], speaker, "fsdd", "digit", part))
    return out

"""A compact, self-contained copy of the ``real`` stage's training data, for a training machine.

The ``real`` stage reads the shared datasets, the synthetic corpus and the noise recordings from
this machine's folders. To train elsewhere (a machine with a CUDA GPU, say) everything it draws
from is packed into one folder: ``audio.ogg`` (every clip back to back, Ogg/Opus at about
31 kbit/s: speech stays intelligible, eight times smaller than 16-bit PCM), ``index.json`` (each
clip's offset, length, transcript and group) and ``init.pt`` (the starting weights).

Groups: the real **train** speakers by dataset (``an4``, ``speech_commands``, ``fsdd``,
``wake_words``), ``noise`` (noise-only clips, empty transcript), ``synthetic`` (the synthetic
training commands), ``background`` (the noise recordings augmentation mixes in), and
``val:<set>`` (the **validation** speakers' clips and new synthetic sentences that choose the
checkpoint). Test speakers are never packed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from streamer_training.workspace import SHARED_AUDIO, Paths

log = logging.getLogger(__name__)

RATE = 16000
AUDIO = "audio.ogg"
INDEX = "index.json"
INIT = "init.pt"
COMPRESSION_LEVEL = 0.88
"""libsndfile's Opus compression level (0 best, 1 smallest): 0.88 gave 31 kbit/s on this data."""
SYNTH_MAX_S = 2400.0
"""Synthetic commands packed, in seconds of audio (they are 20% of the draws; the pack must stay
small enough to copy)."""


@dataclass(frozen=True)
class Clip:
    """One packed clip, decoded."""

    group: str
    text: str
    audio: np.ndarray


def write(out_dir: Path, clips: Iterable[Clip]) -> dict[str, int]:
    """Write ``clips`` into ``out_dir`` (audio and index); return the clip count per group."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    chunks: list[np.ndarray] = []
    offset = 0
    for clip in clips:
        audio = np.clip(clip.audio.astype(np.float32), -1.0, 1.0)
        rows.append({"group": clip.group, "text": clip.text, "offset": offset, "n": len(audio)})
        chunks.append(audio)
        offset += len(audio)
    sf.write(
        out_dir / AUDIO,
        np.concatenate(chunks) if chunks else np.zeros(0, np.float32),
        RATE,
        format="OGG",
        subtype="OPUS",
        compression_level=COMPRESSION_LEVEL,
    )
    (out_dir / INDEX).write_text(json.dumps({"rate": RATE, "clips": rows}))
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row["group"])] = counts.get(str(row["group"]), 0) + 1
    return counts


def read(pack_dir: Path) -> list[Clip]:
    """Decode every clip of a pack written by :func:`write`.

    Raises:
        FileNotFoundError: the folder lacks the audio or the index.
        ValueError: the decoded audio is shorter than the index says.
    """
    for name in (AUDIO, INDEX):
        if not (pack_dir / name).exists():
            raise FileNotFoundError(f"{pack_dir / name}: no such file (not a training pack)")
    index = json.loads((pack_dir / INDEX).read_text())
    audio, rate = sf.read(pack_dir / AUDIO, dtype="float32")
    if rate != RATE:
        raise ValueError(f"{pack_dir / AUDIO}: {rate} Hz, expected {RATE}")
    out: list[Clip] = []
    for row in index["clips"]:
        start, n = int(row["offset"]), int(row["n"])
        if start + n > len(audio):
            raise ValueError(
                f"{pack_dir / AUDIO}: {len(audio)} samples, the index needs {start + n}"
            )
        out.append(Clip(str(row["group"]), str(row["text"]), audio[start : start + n].copy()))
    return out


def by_group(clips: Iterable[Clip]) -> dict[str, list[Clip]]:
    """Clips keyed by group, in pack order."""
    out: dict[str, list[Clip]] = {}
    for clip in clips:
        out.setdefault(clip.group, []).append(clip)
    return out


def stage_pack(paths: Paths, *, init_bundle: Path) -> Path:
    """Pack the ``real`` stage's data and ``init_bundle``'s weights (``paths.data_dir/pack``).

    ``python -m streamer_training.real_gpu --pack`` trains from it; its ``best.pt`` goes to
    ``paths.work_dir/real/best.pt``, where the ``export`` stage finds it. Returns the folder.
    """
    import torch

    from streamer_training import recover, train_ctc

    out = paths.data_dir / "pack"
    build(out, synthetic=paths.synth_train, synthetic_dev=paths.synth_dev)
    model = train_ctc.build_model(train_ctc.CtcRecipe())
    recover.load_released(model, init_bundle, train_ctc.save_hf)
    torch.save(model.state_dict(), out / INIT)
    return out


def build(
    out_dir: Path, *, synthetic: Path, synthetic_dev: Path, synthetic_max_s: float = SYNTH_MAX_S
) -> None:
    """Pack the ``real`` stage's data: train speakers, synthetic commands, noises, validation.

    ``synthetic_max_s`` caps the synthetic commands' total duration (the pack must stay small);
    they are taken in corpus order, which is already shuffled.
    """
    from streamer_training import augment, data, real_voices

    recipe = real_voices.RealRecipe()
    clips: list[Clip] = []
    for group, items in real_voices.load_part("train", max_s=recipe.max_s).items():
        clips += [Clip(group, item.text, item.audio) for item in items]
    total = 0.0
    for utt in data.Corpus.load(synthetic).items:
        if utt.audio.size > real_voices.SYNTH_ITEM_MAX_S * RATE:  # never drawn: not worth packing
            continue
        total += utt.audio.size / RATE
        if total > synthetic_max_s:
            break
        clips.append(Clip("synthetic", utt.text, utt.audio))
    for noise in augment.load_noises(data.noise_paths(SHARED_AUDIO)):
        clips.append(Clip("background", "", noise / (np.max(np.abs(noise)) + 1e-9)))
    evalsets = real_voices.validation_sets(data.Corpus.load(synthetic_dev))
    for name, val_items in evalsets.items():
        clips += [Clip(f"val:{name}", item.text, item.audio) for item in val_items]
    counts = write(out_dir, clips)
    size = (out_dir / AUDIO).stat().st_size
    log.info("packed %s into %s (%.1f MB)", counts, out_dir, size / 1e6)

"""Fine-tune the SEW-D CTC model on real multi-speaker speech (the ``real`` stage).

Starts from a trained SEW-D (the ``ctc`` stage's checkpoint, or the weights of a released bundle
recovered by :mod:`streamer_training.recover`) and trains on the **train** speakers of the shared
real datasets (:mod:`streamer_training.speakers`: AN4, Speech Commands, FSDD george/jackson,
wake words) mixed with synthetic grammar commands, so the commands the grammar knows are not
forgotten. Noise-only Speech Commands clips train the model to say nothing (empty target).
Checkpoints are chosen on the **validation** speakers only (greedy WER over AN4, Speech Commands
and new synthetic sentences); test speakers are never read here.

Loss: CTC (transformers' ``SEWDForCTC``), no teacher: the model already emits characters, so
it has no all-blank plateau to leave. Augmentation as in :mod:`streamer_training.augment`, plus
speed perturbation of real items (a new virtual speaker each time).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from streamer_training import augment, data, loop, speakers
from streamer_training.evaluate import load_audio
from streamer_training.train_ctc import (
    CtcRecipe,
    build_model,
    encode_batch,
    save_hf,
    transcribe,
)

log = logging.getLogger(__name__)

RATE = data.SAMPLE_RATE_HZ
SYNTH_ITEM_MAX_S = 3.5
"""Synthetic commands longer than this are never drawn (the real clips set the lengths)."""


@dataclass(frozen=True)
class RealRecipe:
    """Hyper-parameters of the fine-tuning run."""

    steps: int = 4000
    batch_size: int = 12
    peak_lr: float = 3e-4
    warmup_steps: int = 150
    seed: int = 21
    eval_every: int = 250
    checkpoint_every: int = 50
    p_synthetic: float = 0.2
    """Share of draws that are synthetic grammar commands (espeak-ng training voices)."""
    p_noise: float = 0.04
    """Share of draws that are noise-only clips with an empty transcript."""
    dataset_weights: tuple[tuple[str, float], ...] = (
        ("an4", 0.30),
        ("speech_commands", 0.35),
        ("fsdd", 0.20),
        ("wake_words", 0.15),
    )
    """How the real draws are shared between the datasets."""
    p_speed: float = 0.5
    speed_range: tuple[float, float] = (0.9, 1.1)
    max_s: float = 6.0
    """Longer real recordings are left out (a batch of 12 such clips costs seconds a step)."""
    bf16: bool = True


@dataclass
class _Item:
    audio: np.ndarray
    text: str


def load_part(part: str, *, max_s: float) -> dict[str, list[_Item]]:
    """Every labelled or noise-only record of ``part``, by dataset (``noise`` apart), read."""
    out: dict[str, list[_Item]] = {}
    for record in speakers.load_records(datasets=("an4", "speech_commands", "fsdd", "wake_words")):
        if record.part != part:
            continue
        audio = load_audio(record.path)
        if audio.size > max_s * RATE:
            continue
        key = "noise" if record.kind == "noise" else record.dataset
        if record.transcript is None and key != "noise":
            continue
        out.setdefault(key, []).append(_Item(audio, record.transcript or ""))
    return out


class RealMixture:
    """Draws augmented utterances: real train speakers, synthetic commands, noise-only clips."""

    def __init__(
        self,
        real: dict[str, list[_Item]],
        synthetic: data.Corpus,
        noises: list[np.ndarray],
        recipe: RealRecipe,
    ) -> None:
        self.real = real
        self.synthetic = [u for u in synthetic.items if u.audio.size <= SYNTH_ITEM_MAX_S * RATE]
        self.noises = noises
        self.recipe = recipe
        names = [n for n, _ in recipe.dataset_weights if real.get(n)]
        weights = np.array([w for n, w in recipe.dataset_weights if real.get(n)])
        self.names = names
        self.weights = weights / weights.sum()

    def draw(self, rng: np.random.Generator) -> data.Utterance:
        """One augmented utterance."""
        r = self.recipe
        u = rng.random()
        if u < r.p_noise and self.real.get("noise"):
            pool = self.real["noise"]
            item = pool[int(rng.integers(len(pool)))]
            audio, text, source = item.audio, "", "noise"
        elif u < r.p_noise + r.p_synthetic:
            utt = self.synthetic[int(rng.integers(len(self.synthetic)))]
            audio, text, source = utt.audio, utt.text, utt.source
        else:
            name = self.names[int(rng.choice(len(self.names), p=self.weights))]
            item = self.real[name][int(rng.integers(len(self.real[name])))]
            audio, text, source = item.audio, item.text, name
            if rng.random() < r.p_speed:
                audio = augment.speed(audio, float(rng.uniform(*r.speed_range)))
        clean = data.pad_silence(audio, rng)
        noisy = augment.augment(clean, self.noises, rng)
        return data.Utterance(noisy, text, "", "none", source)


def validation_sets(synthetic_dev: data.Corpus, *, per_set: int = 150) -> dict[str, list[_Item]]:
    """The validation speakers' clips (a fixed subset per set) and new synthetic sentences."""
    found = speakers.split_items(
        "validation", max_per_set=per_set, sets=("an4", "sc_commands", "sc_digits")
    )
    out = {
        name: [_Item(load_audio(r.path), r.transcript or "") for r in records]
        for name, records in found.items()
    }
    out["synth_dev"] = [_Item(u.audio, u.text) for u in synthetic_dev.items[:per_set]]
    return out


def train(
    mixture: RealMixture,
    evalsets: dict[str, list[_Item]],
    *,
    init: Any,
    work_dir: Path,
    recipe: RealRecipe,
    resume: bool,
) -> Path:
    """Fine-tune ``init`` (a ``SEWDForCTC``); keep the checkpoint best on ``evalsets``.

    Writes ``work_dir/checkpoint.pt`` (latest), ``best.pt`` (lowest mean validation WER),
    ``curve.json``, and the Hugging Face folder ``work_dir/hf`` of the best; returns that folder.
    """
    import torch

    from streamer_training.evaluate import word_error_rate

    torch.manual_seed(recipe.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = init
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.peak_lr, weight_decay=0.01)
    ckpt, best_path = work_dir / "checkpoint.pt", work_dir / "best.pt"
    curve_path, best_json = work_dir / "curve.json", work_dir / "best.json"
    step = loop.load_checkpoint(ckpt, model=model, optimizer=optimizer) if resume else 0
    curve = loop.Curve.load(curve_path) if resume and curve_path.exists() else loop.Curve()
    best = json.loads(best_json.read_text()) if resume and best_json.exists() else None

    def evaluate() -> dict[str, float]:
        row: dict[str, float] = {"step": float(step)}
        for name, items in evalsets.items():
            hyps = transcribe(model, [i.audio for i in items])
            row[f"{name}_wer"] = word_error_rate([i.text for i in items], hyps)
        row["mean_wer"] = float(np.mean([v for k, v in row.items() if k.endswith("_wer")]))
        return row

    if step == 0:
        row = evaluate()
        curve.evals.append(row)
        log.info("eval before fine-tuning %s", row)
        best = {"step": 0, "mean_wer": row["mean_wer"]}
        torch.save({"model": model.state_dict(), "step": 0}, best_path)
        best_json.write_text(json.dumps(best))
    model.train()
    bar = loop.Progress(recipe.steps, label="real")
    losses = loop.LossWindow(curve)
    while step < recipe.steps:
        rng = np.random.default_rng([recipe.seed, step])
        batch = loop.draw_batch(
            functools.partial(mixture.draw), recipe.batch_size, rng, length=lambda u: len(u.audio)
        )
        values, mask, _ = loop.pad_batch([u.audio for u in batch])
        labels = encode_batch([u.text for u in batch])
        lr = loop.lr_at(step, peak=recipe.peak_lr, warmup=recipe.warmup_steps, total=recipe.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with loop.autocast(recipe.bf16):
            out = model(
                torch.from_numpy(values),
                attention_mask=torch.from_numpy(mask),
                labels=torch.from_numpy(labels),
            )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        losses.add(step, float(out.loss.item()), lr)
        bar.update(step, f"loss {out.loss.item():.3f}")
        if step % recipe.eval_every == 0 or step == recipe.steps:
            row = evaluate()
            curve.evals.append(row)
            log.info("eval %s", row)
            if best is None or row["mean_wer"] < best["mean_wer"]:
                best = {"step": step, "mean_wer": row["mean_wer"]}
                torch.save({"model": model.state_dict(), "step": step}, best_path)
                best_json.write_text(json.dumps(best))
            model.train()
        if step % recipe.checkpoint_every == 0 or step == recipe.steps:
            loop.save_checkpoint(ckpt, model=model, optimizer=optimizer, step=step)
            curve.save(curve_path)
    return save_best(work_dir, recipe)


def save_best(work_dir: Path, recipe: RealRecipe) -> Path:
    """Write the Hugging Face folder ``work_dir/hf`` from ``best.pt``; return it."""
    import torch

    state = torch.load(work_dir / "best.pt", map_location="cpu", weights_only=True)
    # A run on a GPU machine (streamer_training.real_gpu) may have grown the encoder deeper.
    model = build_model(replace(CtcRecipe(), n_layers=int(state.get("layers", CtcRecipe.n_layers))))
    model.load_state_dict(state["model"])
    hf_dir = work_dir / "hf"
    save_hf(model, hf_dir)
    meta = {"best_step": int(state["step"]), "recipe": asdict(recipe)}
    (hf_dir / "training_meta.json").write_text(json.dumps(meta, indent=1))
    return hf_dir

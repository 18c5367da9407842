"""Train the small SEW-D character CTC model and save it in Hugging Face layout.

The vocabulary is ``<pad>`` (id 0, also the CTC blank), ``<unk>``, the word delimiter ``|``, the
apostrophe and a-z. The saved folder holds config.json, model.safetensors, vocab.json, the
tokenizer files and preprocessor_config.json (``do_normalize``), which is what ``bin/export_onnx``
reads.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer_training import grammar, loop
from streamer_training.data import Mixture, Utterance
from streamer_training.piper import VOICE_NAME

log = logging.getLogger(__name__)

VOCAB: tuple[str, ...] = ("<pad>", "<unk>", "|", *grammar.CHARSET)
"""CTC vocabulary, in id order; id 0 is the blank."""
CONV_DIM: tuple[int, ...] = (64,) * 7
CONV_KERNEL: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDE: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
CONV_GEOMETRY = (CONV_KERNEL, CONV_STRIDE)


@dataclass(frozen=True)
class CtcRecipe:
    """Hyper-parameters of the CTC run."""

    steps: int = 5400
    batch_size: int = 12
    peak_lr: float = 7e-4
    warmup_steps: int = 100
    restarts: tuple[int, ...] = (1900,)
    """Steps where a cosine cycle ends and the next (a warm restart) begins; the last one runs
    to ``steps``."""
    restart_peak_lr: float = 5e-4
    restart_warmup_steps: int = 100
    hidden_size: int = 192
    n_layers: int = 4
    n_heads: int = 4
    intermediate_size: int = 768
    seed: int = 7
    eval_every: int = 250
    checkpoint_every: int = 100
    digit_steps: int = 0
    short_steps: int = 300
    distill_weight: float = 1.0
    temperature: float = 2.0
    dropout: float = 0.0
    """Hidden, attention, activation and final dropout: none, the model underfits."""
    p_fsdd: float = 0.35
    """Share of draws that are real FSDD digit items: more than the intent model's, since the
    transcript of an unseen speaker's digits is this model's weakest measure."""
    p_piper: float = 0.4
    """Share of the other draws spoken by the Piper voice (the rest are espeak-ng). The intent
    model (the teacher) never heard it, so these items train on CTC alone, no distillation."""
    bf16: bool = True
    """Run the forward passes (student and teacher) under bfloat16 autocast where the CPU does
    bfloat16 natively (:func:`loop.native_bf16`; else float32); weights, optimizer and the losses
    stay float32. About twice the steps per hour on a CPU with AVX-512 BF16."""


def encode_text(text: str) -> list[int]:
    """Map a transcript to vocabulary ids (spaces become the word delimiter)."""
    index = {ch: i for i, ch in enumerate(VOCAB)}
    return [index.get("|" if ch == " " else ch, 1) for ch in grammar.normalize_text(text)]


def encode_batch(texts: list[str]) -> np.ndarray:
    """Vocabulary ids of ``texts``, one row each, padded with -100 (the CTC loss's ignore).

    At least one column, so a batch of empty transcripts (noise-only clips) is a valid target.
    """
    rows = [encode_text(t) for t in texts]
    labels = np.full((len(rows), max(1, *map(len, rows))), -100, dtype=np.int64)
    for i, row in enumerate(rows):
        labels[i, : len(row)] = row
    return labels


def greedy_decode(ids: np.ndarray) -> str:
    """Collapse repeats, drop blanks, map ``|`` to spaces."""
    out: list[str] = []
    prev = -1
    for i in ids.tolist():
        if i != prev and i != 0:
            out.append(VOCAB[i])
        prev = i
    return " ".join("".join(out).replace("|", " ").split())


def build_model(recipe: CtcRecipe) -> Any:
    """A randomly initialised ``SEWDForCTC`` with the reduced layer-norm conv feature extractor."""
    from transformers import SEWDConfig, SEWDForCTC

    config = SEWDConfig(
        vocab_size=len(VOCAB),
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.n_layers,
        num_attention_heads=recipe.n_heads,
        intermediate_size=recipe.intermediate_size,
        squeeze_factor=2,
        conv_dim=CONV_DIM,
        conv_kernel=CONV_KERNEL,
        conv_stride=CONV_STRIDE,
        conv_bias=True,
        feat_extract_norm="layer",
        num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=16,
        max_position_embeddings=512,
        position_buckets=64,
        hidden_dropout=recipe.dropout,
        attention_dropout=recipe.dropout,
        activation_dropout=recipe.dropout,
        final_dropout=recipe.dropout,
        mask_time_prob=0.05,
        mask_time_length=4,
        mask_time_min_masks=0,
        pad_token_id=0,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
        architectures=["SEWDForCTC"],
    )
    return SEWDForCTC(config)


def save_hf(model: Any, out_dir: Path) -> None:
    """Save model, vocabulary, tokenizer and feature-extractor files in Hugging Face layout."""
    from transformers import Wav2Vec2FeatureExtractor

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    (out_dir / "vocab.json").write_text(json.dumps({ch: i for i, ch in enumerate(VOCAB)}, indent=1))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "Wav2Vec2CTCTokenizer",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "word_delimiter_token": "|",
                "do_lower_case": False,
                "bos_token": None,
                "eos_token": None,
            },
            indent=1,
        )
    )
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"pad_token": "<pad>", "unk_token": "<unk>"}, indent=1)
    )
    Wav2Vec2FeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    ).save_pretrained(str(out_dir))


def transcribe(model: Any, clips: list[np.ndarray]) -> list[str]:
    """Greedy transcripts for ``clips`` (one at a time, no padding: what the bundle does)."""
    import torch

    out: list[str] = []
    model.eval()
    with torch.inference_mode():
        for clip in clips:
            values = torch.from_numpy(loop.normalize(clip))[None]
            logits = model(values).logits[0]
            out.append(greedy_decode(logits.argmax(-1).numpy()))
    model.train()
    return out


def train(
    mixture: Mixture,
    evalsets: dict[str, list[Utterance]],
    *,
    work_dir: Path,
    recipe: CtcRecipe,
    resume: bool,
    teacher: Callable[[Any, Any, np.ndarray], Any],
) -> Path:
    """Train (or resume) and save the Hugging Face folder ``work_dir/hf``; return that path.

    The loss is CTC plus ``recipe.distill_weight`` times the frame-level KL divergence to
    ``teacher(values, attention_mask, lengths)``, the per-frame character logits of the trained
    SEGUE encoder's auxiliary CTC head on the same batch: dense targets that carry the student
    over CTC's all-blank plateau, where plain CTC from scratch sat for thousands of steps.
    """
    import torch

    from streamer_training.evaluate import word_error_rate

    torch.manual_seed(recipe.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(recipe)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("SEW-D CTC: %d parameters", n_params)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.peak_lr, weight_decay=0.01)
    ckpt = work_dir / "checkpoint.pt"
    curve_path = work_dir / "curve.json"
    step = loop.load_checkpoint(ckpt, model=model, optimizer=optimizer) if resume else 0
    curve = loop.Curve.load(curve_path) if resume else loop.Curve()
    if step:
        log.info("resumed at step %d", step)
    model.train()
    bar = loop.Progress(recipe.steps, label="ctc")
    losses = loop.LossWindow(curve)
    while step < recipe.steps:
        rng = np.random.default_rng([recipe.seed, step])
        batch = loop.draw_batch(
            functools.partial(
                mixture.draw,
                digits=step < recipe.digit_steps,
                short=step < recipe.short_steps,
            ),
            recipe.batch_size,
            rng,
            length=lambda u: len(u.audio),
        )
        values, mask, lengths = loop.pad_batch([u.audio for u in batch])
        labels = encode_batch([u.text for u in batch])
        lr = loop.lr_cycles(recipe, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        values_t, mask_t = torch.from_numpy(values), torch.from_numpy(mask)
        with loop.autocast(recipe.bf16):
            out = model(values_t, attention_mask=mask_t, labels=torch.from_numpy(labels))
            with torch.no_grad():
                teacher_logits = teacher(values_t, mask_t, lengths)
        # Items the teacher never heard (the Piper voice) get no distillation: zero frames.
        frames = torch.tensor(
            [
                0 if u.source == VOICE_NAME else loop.conv_frames(int(n), *CONV_GEOMETRY)
                for u, n in zip(batch, lengths, strict=True)
            ]
        )
        loss = out.loss + recipe.distill_weight * loop.frame_kl(
            out.logits.float(), teacher_logits.float(), frames, recipe.temperature
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        losses.add(step, float(loss.item()), lr)
        bar.update(step, f"loss {loss.item():.3f}")
        if step % recipe.eval_every == 0 or step == recipe.steps:
            row: dict[str, float] = {"step": float(step)}
            for name, items in evalsets.items():
                hyps = transcribe(model, [u.audio for u in items])
                row[f"{name}_wer"] = word_error_rate([u.text for u in items], hyps)
            curve.evals.append(row)
            log.info("eval %s", row)
        if step % recipe.checkpoint_every == 0 or step == recipe.steps:
            loop.save_checkpoint(ckpt, model=model, optimizer=optimizer, step=step)
            curve.save(curve_path)
    return save_from_checkpoint(work_dir, recipe)


def save_from_checkpoint(work_dir: Path, recipe: CtcRecipe) -> Path:
    """Write the Hugging Face folder ``work_dir/hf`` from the latest training checkpoint."""
    import torch

    model = build_model(recipe)
    state = torch.load(work_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    hf_dir = work_dir / "hf"
    save_hf(model, hf_dir)
    n_params = sum(p.numel() for p in model.parameters())
    meta = {"n_parameters": n_params, "step": int(state["step"]), "recipe": recipe.__dict__}
    (hf_dir / "training_meta.json").write_text(json.dumps(meta, indent=1))
    return hf_dir

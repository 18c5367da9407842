"""Train the SEGUE-architecture intent model and save it in the SEGUE on-disk layout.

Architecture (as in SEGUE's classification model): a wav2vec 2.0 encoder, the mean of its last
hidden state over the valid frames (frame count from the input length by the conv-stack formula),
one Linear per label set. Training adds an auxiliary character CTC head on the encoder frames
(the dense supervision a from-scratch encoder needs to learn words); that head is not part of the
saved SEGUE checkpoint, but the training checkpoint keeps it, and the SEW-D CTC model is then
distilled from its per-frame posteriors (:mod:`streamer_training.train_ctc`). Saved as
``config.json`` (``architectures: ["SegueForClassification"]``, ``n_classes``,
``speech_encoder_config``, ``id2label`` per label set) plus ``pytorch_model.bin`` with
``speech_encoder.*`` and ``classification_heads.<i>.*`` tensors, which ``bin/export_onnx`` reads.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer_training import grammar, loop
from streamer_training.data import Mixture, Utterance
from streamer_training.train_ctc import VOCAB, encode_text

log = logging.getLogger(__name__)

LABEL_SETS: tuple[tuple[str, ...], ...] = (grammar.INTENTS, grammar.ROOMS)
"""Label sets in head order: intents, rooms."""
CONV_DIM: tuple[int, ...] = (64,) * 7
CONV_KERNEL: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDE: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)


@dataclass(frozen=True)
class IntentRecipe:
    """Hyper-parameters of the intent run."""

    steps: int = 10800
    batch_size: int = 12
    peak_lr: float = 7e-4
    warmup_steps: int = 200
    restarts: tuple[int, ...] = (3800, 6800, 9600)
    """Steps where a cosine cycle ends and the next (a warm restart) begins; the last one runs
    to ``steps``."""
    restart_peak_lr: float = 5e-4
    restart_warmup_steps: int = 100
    hidden_size: int = 192
    n_layers: int = 4
    n_heads: int = 4
    intermediate_size: int = 768
    seed: int = 11
    eval_every: int = 250
    checkpoint_every: int = 100
    digit_steps: int = 300
    short_steps: int = 1000
    ctc_weight: float = 1.0
    dropout: float = 0.0
    """Hidden, attention and activation dropout: none, the model underfits."""
    p_fsdd: float = 0.25
    """Share of draws that are real FSDD digit items; the rest are synthetic commands."""
    piper_from: int = 9600
    """First step that may draw the Piper voice (the last learning-rate cycle). The model as it
    is at this step is kept as ``teacher.pt``: commands-ctc distils from it, so the SEW-D run
    does not depend on this last cycle."""
    p_piper: float = 0.25
    """From ``piper_from`` on, the share of non-FSDD draws spoken by the Piper voice."""
    bf16: bool = True
    """Run the forward pass under bfloat16 autocast where the CPU does bfloat16 natively
    (:func:`loop.native_bf16`; else float32); weights, optimizer and the losses stay float32.
    About 1.6 times the steps per hour on a CPU with AVX-512 BF16."""


def encoder_config(recipe: IntentRecipe) -> dict[str, Any]:
    """The wav2vec 2.0 encoder config as a plain dict (stored in config.json)."""
    from transformers import Wav2Vec2Config

    cfg = Wav2Vec2Config(
        vocab_size=32,
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.n_layers,
        num_attention_heads=recipe.n_heads,
        intermediate_size=recipe.intermediate_size,
        conv_dim=CONV_DIM,
        conv_kernel=CONV_KERNEL,
        conv_stride=CONV_STRIDE,
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=16,
        hidden_dropout=recipe.dropout,
        attention_dropout=recipe.dropout,
        activation_dropout=recipe.dropout,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.05,
        mask_time_length=4,
        mask_time_min_masks=0,
    )
    raw: dict[str, Any] = cfg.to_dict()
    return raw


def build_model(recipe: IntentRecipe) -> Any:
    """A randomly initialised SEGUE classifier (encoder + mean pooling + one head per label set)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    class SegueForClassification(torch.nn.Module):
        """wav2vec 2.0 encoder, mean over valid frames, one Linear per label set."""

        def __init__(self, config: dict[str, Any], n_classes: tuple[int, ...]) -> None:
            super().__init__()
            self.speech_encoder = Wav2Vec2Model(Wav2Vec2Config(**config))
            hidden = int(config["hidden_size"])
            self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, n) for n in n_classes)
            # Auxiliary character CTC head: dense supervision for the encoder during training
            # (and the teacher of the SEW-D model); not part of the saved SEGUE checkpoint.
            self.ctc_head = torch.nn.Linear(hidden, len(VOCAB))

        def encode(self, values: Any, mask: Any, lengths: Any) -> tuple[Any, Any]:
            hidden = self.speech_encoder(values, attention_mask=mask).last_hidden_state
            frames = torch.tensor(
                [loop.conv_frames(int(n), CONV_KERNEL, CONV_STRIDE) for n in lengths]
            )
            return hidden, frames

        def pool_heads(self, hidden: Any, frames: Any) -> list[Any]:
            valid = torch.arange(hidden.shape[1])[None, :] < frames[:, None]
            pooled = (hidden * valid[..., None]).sum(1) / frames[:, None].clamp(min=1)
            return [head(pooled) for head in self.heads]

        def forward(self, values: Any, mask: Any, lengths: Any) -> list[Any]:
            hidden, frames = self.encode(values, mask, lengths)
            return self.pool_heads(hidden, frames)

    return SegueForClassification(encoder_config(recipe), tuple(len(s) for s in LABEL_SETS))


def save_segue(model: Any, recipe: IntentRecipe, out_dir: Path) -> None:
    """Write config.json, preprocessor_config.json and pytorch_model.bin in the SEGUE layout.

    Head tensors are stored as ``classification_heads.<i>.*``, the exporter's SEGUE key names.
    """
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["SegueForClassification"],
        "n_classes": [len(s) for s in LABEL_SETS],
        "speech_encoder_checkpoint": "local:streamer-commands-intent (trained from scratch)",
        "text_encoder_checkpoint": "none (no text encoder: trained directly on labels)",
        "train_backbone": True,
        "speech_encoder_config": encoder_config(recipe),
        "label_set_names": ["intent", "room"],
        "id2label": [{str(i): name for i, name in enumerate(s)} for s in LABEL_SETS],
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    write_feature_extractor(out_dir)
    state = {
        _segue_key(k): v.detach().clone()
        for k, v in model.state_dict().items()
        if not k.endswith("masked_spec_embed") and not k.startswith("ctc_head.")
    }
    torch.save(state, out_dir / "pytorch_model.bin")


def write_feature_extractor(out_dir: Path) -> None:
    """Write the ``preprocessor_config.json`` of a SEGUE folder: 16 kHz, normalised input."""
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_extractor_type": "Wav2Vec2FeatureExtractor",
                "do_normalize": True,
                "feature_size": 1,
                "padding_side": "right",
                "padding_value": 0.0,
                "return_attention_mask": True,
                "sampling_rate": 16000,
            },
            indent=1,
        )
    )


def _segue_key(key: str) -> str:
    return "classification_heads." + key[len("heads.") :] if key.startswith("heads.") else key


TEACHER = "teacher.pt"
"""The checkpoint of the step ``IntentRecipe.piper_from``, which commands-ctc distils from."""


def teacher_checkpoint(work_dir: Path) -> Path:
    """The checkpoint commands-ctc distils from.

    ``teacher.pt``, or for a run that stopped before ``piper_from`` (or predates it) the latest.
    """
    teacher = work_dir / TEACHER
    return teacher if teacher.exists() else work_dir / "checkpoint.pt"


def load_trained(
    work_dir: Path, recipe: IntentRecipe, *, checkpoint: Path | None = None
) -> tuple[Any, int]:
    """A checkpoint's model (auxiliary CTC head included, eval mode) and its step.

    ``checkpoint`` defaults to the latest training checkpoint.
    """
    import torch

    model = build_model(recipe)
    path = checkpoint or work_dir / "checkpoint.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    model.eval()
    return model, int(state["step"])


def save_from_checkpoint(work_dir: Path, recipe: IntentRecipe) -> Path:
    """Write the SEGUE folder ``work_dir/segue`` from the latest training checkpoint."""
    model, step = load_trained(work_dir, recipe)
    out_dir = work_dir / "segue"
    save_segue(model, recipe, out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    meta = {"n_parameters": n_params, "step": step, "recipe": recipe.__dict__}
    (out_dir / "training_meta.json").write_text(json.dumps(meta, indent=1))
    return out_dir


def classify(model: Any, clips: list[np.ndarray]) -> list[tuple[int, ...]]:
    """Arg-max label ids per head for ``clips`` (one at a time, no padding)."""
    import torch

    out: list[tuple[int, ...]] = []
    model.eval()
    with torch.inference_mode():
        for clip in clips:
            values = torch.from_numpy(loop.normalize(clip))[None]
            mask = torch.ones(values.shape, dtype=torch.long)
            logits = model(values, mask, [len(clip)])
            out.append(tuple(int(lg[0].argmax()) for lg in logits))
    model.train()
    return out


def train(
    mixture: Mixture,
    evalset: list[Utterance],
    *,
    work_dir: Path,
    recipe: IntentRecipe,
    resume: bool,
) -> Path:
    """Train (or resume) and save the SEGUE folder ``work_dir/segue``; return that path."""
    import torch

    torch.manual_seed(recipe.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(recipe)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("SEGUE intent: %d parameters", n_params)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.peak_lr, weight_decay=0.01)
    ckpt = work_dir / "checkpoint.pt"
    curve_path = work_dir / "curve.json"
    step = loop.load_checkpoint(ckpt, model=model, optimizer=optimizer) if resume else 0
    curve = loop.Curve.load(curve_path) if resume else loop.Curve()
    intent_index = {name: i for i, name in enumerate(grammar.INTENTS)}
    room_index = {name: i for i, name in enumerate(grammar.ROOMS)}
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    bar = loop.Progress(recipe.steps, label="intent")
    losses = loop.LossWindow(curve)
    while step < recipe.steps:
        rng = np.random.default_rng([recipe.seed, step])
        batch = loop.draw_batch(
            functools.partial(
                mixture.draw,
                digits=step < recipe.digit_steps,
                short=step < recipe.short_steps,
                piper=step >= recipe.piper_from,
            ),
            recipe.batch_size,
            rng,
            length=lambda u: len(u.audio),
        )
        values, mask, lengths = loop.pad_batch([u.audio for u in batch])
        intents = torch.tensor([intent_index[u.intent] for u in batch])
        rooms = torch.tensor([room_index[u.room] for u in batch])
        lr = loop.lr_cycles(recipe, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with loop.autocast(recipe.bf16):
            hidden, frames = model.encode(
                torch.from_numpy(values), torch.from_numpy(mask), lengths.tolist()
            )
            logits = [lg.float() for lg in model.pool_heads(hidden, frames)]
            char_logits = model.ctc_head(hidden).float()
        loss = loss_fn(logits[0], intents) + loss_fn(logits[1], rooms)
        targets = [encode_text(u.text) for u in batch]
        log_probs = char_logits.log_softmax(-1).transpose(0, 1)
        ctc = torch.nn.functional.ctc_loss(
            log_probs,
            torch.tensor([i for t in targets for i in t]),
            frames,
            torch.tensor([len(t) for t in targets]),
            blank=0,
            reduction="mean",
            zero_infinity=True,
        )
        loss = loss + recipe.ctc_weight * ctc
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        losses.add(step, float(loss.item()), lr)
        bar.update(step, f"loss {loss.item():.3f}")
        if step % recipe.eval_every == 0 or step == recipe.steps:
            preds = classify(model, [u.audio for u in evalset])
            row = {
                "step": float(step),
                "intent_acc": float(
                    np.mean(
                        [
                            p[0] == intent_index[u.intent]
                            for p, u in zip(preds, evalset, strict=True)
                        ]
                    )
                ),
                "room_acc": float(
                    np.mean(
                        [p[1] == room_index[u.room] for p, u in zip(preds, evalset, strict=True)]
                    )
                ),
            }
            curve.evals.append(row)
            log.info("eval %s", row)
        if step == recipe.piper_from:
            # before checkpoint.pt: a run stopped between the two resumes before this step and
            # writes the teacher again, rather than past it with no teacher
            loop.save_checkpoint(work_dir / TEACHER, model=model, optimizer=optimizer, step=step)
        if step % recipe.checkpoint_every == 0 or step == recipe.steps:
            loop.save_checkpoint(ckpt, model=model, optimizer=optimizer, step=step)
            curve.save(curve_path)
    return save_from_checkpoint(work_dir, recipe)

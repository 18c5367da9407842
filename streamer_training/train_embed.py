"""Train the sentence-embedding student: SEGUE's recipe on a small wav2vec 2.0 encoder.

SEGUE (declare-lab/segue-w2v2-base) trains a speech encoder so that its mean-pooled output matches
a frozen text embedder's embedding of the transcript; any sentence a user writes then lives in the
space of what was said. Here:

- **Encoder**: the wav2vec 2.0 encoder of the released ``commands-intent`` (192 wide, 4 layers;
  about 20 ms per 3 s on one core in int8), its weights recovered from the shipped ONNX graph
  (:mod:`streamer_training.recover`) so the run starts from an encoder that already hears
  speech, plus one linear projection into the teacher's 384 dimensions.
- **Teacher**: all-MiniLM-L6-v2 rather than SEGUE's all-mpnet-base-v2. The student is a tenth of
  SEGUE's width either way, so it needs a projection anyway; MiniLM is five times smaller and
  faster, which is what the daemon pays at start for every intents file (the text side ships
  with the daemon), and training targets cost nothing after the data stage.
- **Loss**: cosine distance to the teacher vector (unit vectors; the daemon matches by cosine,
  so the vector's norm carries nothing). SEGUE used MSE on unnormalised vectors; on unit
  targets, MSE adds a norm term the matcher ignores. The two were not trained side by side.
- **Data**: :mod:`streamer_training.embed_data` (synthetic speech of CLINC150 / SLURP training
  intents and the command grammar, training voices only) plus real AN4 and Speech Commands
  training speakers, all augmented (noise, reverberation, band limit, gain, speed).
- **Selection**: zero-shot top-1 on the *validation* intents in the validation voices, checked
  every ``eval_every`` steps; the best step is kept. Test intents and voices are never looked at.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer_training import augment, data, loop, recover, speakers
from streamer_training.centre import training_choice
from streamer_training.evaluate import load_audio
from streamer_training.train_intent import (
    CONV_KERNEL,
    CONV_STRIDE,
    IntentRecipe,
    build_model,
    encoder_config,
    save_segue,
    write_feature_extractor,
)

log = logging.getLogger(__name__)

RATE = data.SAMPLE_RATE_HZ
#: Training clips whose mean output centres the validation vectors at each evaluation.
CENTRE_CLIPS = 200


@dataclass(frozen=True)
class EmbedRecipe:
    """Hyper-parameters of the student run."""

    steps: int = 4000
    batch_size: int = 16
    peak_lr: float = 4e-4
    warmup_steps: int = 150
    seed: int = 31
    eval_every: int = 250
    checkpoint_every: int = 50
    projection_dim: int = 384
    p_real: float = 0.15
    """Share of draws that are real AN4 / Speech Commands training speakers."""
    p_augment: float = 0.7
    p_speed: float = 0.4
    speed_range: tuple[float, float] = (0.9, 1.12)
    real_max_s: float = 6.0
    bf16: bool = True


def build_student(recipe: EmbedRecipe, encoder: IntentRecipe | None = None) -> Any:
    """The student: a wav2vec 2.0 encoder, mean pooling, projection.

    ``encoder``: the encoder's shape, by default commands-intent's.
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    class SegueStudent(torch.nn.Module):
        def __init__(self, config: dict[str, Any], projection_dim: int) -> None:
            super().__init__()
            self.encoder_config = config
            self.speech_encoder = Wav2Vec2Model(Wav2Vec2Config(**config))
            self.embedding_projection = torch.nn.Linear(int(config["hidden_size"]), projection_dim)

        def forward(self, values: Any, mask: Any, lengths: Any) -> Any:
            hidden = self.speech_encoder(values, attention_mask=mask).last_hidden_state
            frames = torch.tensor(
                [loop.conv_frames(int(n), CONV_KERNEL, CONV_STRIDE) for n in lengths]
            )
            valid = torch.arange(hidden.shape[1])[None, :] < frames[:, None]
            pooled = (hidden * valid[..., None]).sum(1) / frames[:, None].clamp(min=1)
            return self.embedding_projection(pooled)

    return SegueStudent(encoder_config(encoder or IntentRecipe()), recipe.projection_dim)


def init_from_bundle(student: Any, bundle: Path) -> None:
    """Start ``student`` from a released bundle.

    A classify bundle (commands-intent) gives its wav2vec 2.0 encoder (the projection stays
    random); an embed bundle (a released commands-embed) gives the whole student, projection
    included, to train further (its output bias as shipped, centring included).
    """
    from streamer.engine.bundles import load_manifest

    if load_manifest(bundle).task == "embed":
        recover.load_released(student, bundle, lambda m, folder: save_student(m, folder, meta={}))
        return
    intent_recipe = IntentRecipe()
    donor = build_model(intent_recipe)
    recover.load_released(
        donor,
        bundle,
        lambda m, folder: save_segue(m, intent_recipe, folder),
        skip=("ctc_head.",),
    )
    student.speech_encoder.load_state_dict(donor.speech_encoder.state_dict())


def save_student(student: Any, out_dir: Path, *, meta: dict[str, Any]) -> Path:
    """Write a SEGUE ``SegueModel`` folder, projection included, for ``bin/export_onnx``."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["SegueModel"],
        "speech_encoder_checkpoint": "local:streamer-commands-intent encoder, distilled",
        "text_encoder_checkpoint": "sentence-transformers/all-MiniLM-L6-v2 (frozen teacher)",
        "speech_encoder_config": student.encoder_config,
        "embedding_projection_dim": int(student.embedding_projection.out_features),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    write_feature_extractor(out_dir)
    state = {
        k: v.detach().clone()
        for k, v in student.state_dict().items()
        if not k.endswith("masked_spec_embed")
    }
    torch.save(state, out_dir / "pytorch_model.bin")
    (out_dir / "training_meta.json").write_text(json.dumps(meta, indent=1))
    return out_dir


class Teacher:
    """Teacher vectors by sentence (``embed_teacher.npz`` of the data stage)."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as z:
            self.index = {str(t): i for i, t in enumerate(z["texts"])}
            self.vectors = z["embeddings"].astype(np.float32)

    def __call__(self, texts: list[str]) -> np.ndarray:
        rows: np.ndarray = self.vectors[[self.index[t] for t in texts]]
        return rows


class EmbedMixture:
    """Draws augmented (audio, sentence) pairs: synthetic sentences and real training speakers."""

    def __init__(
        self,
        synthetic: data.Corpus,
        real: list[tuple[np.ndarray, str]],
        noises: list[np.ndarray],
        recipe: EmbedRecipe,
    ) -> None:
        self.synthetic = synthetic.items
        self.real = real
        self.noises = noises
        self.recipe = recipe

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        r = self.recipe
        if self.real and rng.random() < r.p_real:
            audio, text = self.real[int(rng.integers(len(self.real)))]
        else:
            u = self.synthetic[int(rng.integers(len(self.synthetic)))]
            audio, text = u.audio, u.text
        if rng.random() < r.p_speed:
            audio = augment.speed(audio, float(rng.uniform(*r.speed_range)))
        if rng.random() < r.p_augment:
            audio = augment.augment(audio, self.noises, rng)
        return data.pad_silence(audio, rng), text


def load_real(max_s: float) -> list[tuple[np.ndarray, str]]:
    """Transcribed AN4 and Speech Commands recordings of training speakers."""
    out = []
    for r in speakers.load_records(datasets=("an4", "speech_commands")):
        if r.part != "train" or not r.transcript:
            continue
        audio = load_audio(r.path)
        if audio.size <= max_s * RATE:
            out.append((audio, r.transcript))
    return out


def embed_clips(
    student: Any, clips: list[np.ndarray], *, batch: int = 8, normalise: bool = True
) -> np.ndarray:
    """Student embeddings of ``clips``, unit-norm if ``normalise``, in clip order.

    The clips run sorted into similar-length batches.
    """
    import torch

    order = np.argsort([len(c) for c in clips])
    out = np.zeros((len(clips), student.embedding_projection.out_features), dtype=np.float32)
    student.eval()
    with torch.inference_mode():
        for k in range(0, len(order), batch):
            idx = order[k : k + batch]
            values, mask, lengths = loop.pad_batch([clips[i] for i in idx])
            vec = student(torch.from_numpy(values), torch.from_numpy(mask), lengths.tolist())
            vec = torch.nn.functional.normalize(vec.float(), dim=-1) if normalise else vec.float()
            out[idx] = vec.numpy()
    student.train()
    return out


def zero_shot(
    vectors: np.ndarray,
    intents: list[str],
    examples: dict[str, list[str]],
    teacher: Teacher,
) -> dict[str, float]:
    """Zero-shot figures of unit-norm speech ``vectors`` against ``examples``' intents.

    Top-1 (max cosine over each intent's examples) on in-scope items, and the share of
    out-of-scope items rejected at the threshold that keeps 90% of in-scope top scores.
    """
    names = sorted(examples)
    owner = np.array([names.index(n) for n in names for _ in examples[n]])
    bank = teacher([s for n in names for s in examples[n]])
    sims = vectors @ bank.T
    scores = np.full((len(vectors), len(names)), -2.0, dtype=np.float32)
    for j in range(len(names)):
        scores[:, j] = sims[:, owner == j].max(axis=1)
    best = scores.argmax(axis=1)
    top = scores.max(axis=1)
    inscope = np.array([i != "clinc:oos" for i in intents])
    truth = np.array([names.index(i) if i in names else -1 for i in intents])
    acc = float(np.mean(best[inscope] == truth[inscope]))
    threshold = float(np.quantile(top[inscope], 0.10))
    oos = float(np.mean(top[~inscope] < threshold)) if (~inscope).any() else float("nan")
    return {"top1": acc, "oos_rejected_at_90_kept": oos, "threshold_90_kept": threshold}


def train(
    *,
    data_dir: Path,
    work_dir: Path,
    init_bundle: Path,
    recipe: EmbedRecipe,
    resume: bool,
    max_minutes: float | None = None,
) -> Path:
    """Train (or resume); keep the best validation step; return its SEGUE folder."""
    import torch

    torch.manual_seed(recipe.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(data_dir / "embed_teacher.npz")
    synthetic = data.Corpus.load(data_dir / "embed_train.npz")
    validation = data.Corpus.load(data_dir / "embed_validation.npz")
    examples = json.loads((data_dir / "embed_intents.json").read_text())["validation"]
    real = load_real(recipe.real_max_s)
    noises = augment.load_noises(data.noise_paths(speakers.DATASETS_ROOT.parent / "audio"))
    mixture = EmbedMixture(synthetic, real, noises, recipe)
    log.info("embed: %d synthetic, %d real training clips", len(synthetic.items), len(real))
    student = build_student(recipe)
    ckpt, curve_path, best_path = (
        work_dir / "checkpoint.pt",
        work_dir / "curve.json",
        work_dir / "best.json",
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=recipe.peak_lr, weight_decay=0.01)
    if resume and ckpt.exists():
        step = loop.load_checkpoint(ckpt, model=student, optimizer=optimizer)
    else:
        init_from_bundle(student, init_bundle)
        step = 0
    curve = loop.Curve.load(curve_path) if resume and curve_path.exists() else loop.Curve()
    best = json.loads(best_path.read_text()) if resume and best_path.exists() else {"top1": -1.0}
    losses = loop.LossWindow(curve)
    bar = loop.Progress(recipe.steps, label="embed")
    started = time.monotonic()
    student.train()

    picked = training_choice(len(synthetic.items), CENTRE_CLIPS, recipe.seed)
    centre_on = [synthetic.items[i].audio for i in picked]

    def evaluate() -> None:
        raw = embed_clips(student, [u.audio for u in validation.items], normalise=False)
        vectors = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        target = teacher([u.text for u in validation.items])
        row = {"step": float(step), "cosine": float(np.mean(np.sum(vectors * target, axis=1)))}
        intents = [u.intent for u in validation.items]
        row |= zero_shot(vectors, intents, examples, teacher)
        # what ships is centred (streamer_training.centre): the best step is chosen centred
        centred = raw - embed_clips(student, centre_on, normalise=False).mean(axis=0)
        centred /= np.linalg.norm(centred, axis=1, keepdims=True)
        row["top1_uncentred"] = row["top1"]
        row["top1"] = zero_shot(centred, intents, examples, teacher)["top1"]
        curve.evals.append(row)
        log.info("eval %s", row)
        if row["top1"] > best["top1"]:
            best.clear()
            best.update(row)
            best_path.write_text(json.dumps(best, indent=1))
            loop.save_checkpoint(
                work_dir / "best.pt", model=student, optimizer=optimizer, step=step
            )

    while step < recipe.steps:
        rng = np.random.default_rng([recipe.seed, step])
        batch = loop.draw_batch(mixture.draw, recipe.batch_size, rng, length=lambda b: len(b[0]))
        values, mask, lengths = loop.pad_batch([a for a, _ in batch])
        target = torch.from_numpy(teacher([t for _, t in batch]))
        lr = loop.lr_at(step, peak=recipe.peak_lr, warmup=recipe.warmup_steps, total=recipe.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with loop.autocast(recipe.bf16):
            out = student(torch.from_numpy(values), torch.from_numpy(mask), lengths.tolist())
        loss: Any = (
            1.0 - torch.nn.functional.cosine_similarity(out.float(), target, dim=-1)
        ).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        optimizer.step()
        step += 1
        losses.add(step, float(loss.item()), lr)
        bar.update(step, f"loss {loss.item():.3f}")
        out_of_time = max_minutes is not None and time.monotonic() - started > 60 * max_minutes
        if step % recipe.eval_every == 0 or step == recipe.steps or out_of_time:
            evaluate()
        if step % recipe.checkpoint_every == 0 or step == recipe.steps or out_of_time:
            loop.save_checkpoint(ckpt, model=student, optimizer=optimizer, step=step)
            curve.save(curve_path)
        if out_of_time:
            log.info("embed: stopped at step %d after %.0f minutes", step, max_minutes)
            break
    loop.load_checkpoint(work_dir / "best.pt", model=student, optimizer=optimizer)
    meta = {"best": best, "recipe": asdict(recipe), "stopped_at_step": step}
    return save_student(student, work_dir / "segue", meta=meta)


def stage_embed(
    paths: Any,
    *,
    steps: int,
    resume: bool,
    max_minutes: float | None,
    init_bundle: Path | None = None,
    peak_lr: float = EmbedRecipe.peak_lr,
) -> Path:
    """Train the student from ``init_bundle`` (see :func:`init_from_bundle`); export both.

    ``init_bundle`` is by default the released commands-intent (its encoder only).

    Bundles land in ``work_dir/bundles/commands-embed-{fp32,int8}``; which one ships is chosen
    by the benchmark (``bench/intents_zero_shot.py``) on validation, as for the other models.
    """
    from streamer_training.pipeline import export_both

    recipe = EmbedRecipe(steps=steps, peak_lr=peak_lr)
    source = train(
        data_dir=paths.data_dir,
        work_dir=paths.work_dir / "embed",
        init_bundle=init_bundle or paths.exported_dir / "commands-intent",
        recipe=recipe,
        resume=resume,
        max_minutes=max_minutes,
    )
    export_both("commands-embed", source, paths.work_dir)
    return source

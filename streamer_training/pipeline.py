"""The demo-model pipeline behind ``bin/train_demo``: data → train both → export → evaluate → cards.

The ``lm`` stage is :func:`streamer_training.lm_tuning.stage_lm`; paths and corpus sizes are in
:mod:`streamer_training.workspace`.

Every stage reads what the previous one wrote under ``data_dir`` / ``work_dir``, so stages can be
run one at a time and a training stage can resume from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from streamer.config import DecoderConfig
from streamer_training import augment, card, data, evaluate
from streamer_training.workspace import (
    BUNDLE_NAMES,
    FSDD_ROOT,
    N_PIPER_TRAIN,
    N_SYNTH_DEV,
    N_SYNTH_TEST,
    N_SYNTH_TRAIN,
    PIPER_TRAIN_SEED,
    REPO,
    SHARED_AUDIO,
    SYNTH_DEV_SEED,
    SYNTH_TEST_SEED,
    SYNTH_TRAIN_SEED,
    Paths,
    relative,
)

log = logging.getLogger(__name__)


def stage_data(paths: Paths) -> None:
    """Synthesize the corpora: espeak-ng training, held-out voices, dev; the Piper voice's.

    Each is skipped when present.

    Raises:
        SynthError: espeak-ng or the Piper voice is missing (checked before any synthesis).
    """
    if not paths.piper_train.exists():
        from streamer_training import piper

        piper.PiperVoice.bundled()  # fail now, not after minutes of espeak-ng
    for path, n, heldout, seed in (
        (paths.synth_train, N_SYNTH_TRAIN, False, SYNTH_TRAIN_SEED),
        (paths.synth_test, N_SYNTH_TEST, True, SYNTH_TEST_SEED),
        (paths.synth_dev, N_SYNTH_DEV, False, SYNTH_DEV_SEED),
    ):
        if path.exists():
            log.info("%s exists, keeping it", path)
            continue
        from streamer_training.loop import Progress

        bar = Progress(n, label=f"synth {path.stem}", every=1000)

        def tick(k: int, bar: Progress = bar) -> None:
            bar.update(k, "")

        corpus = data.build_synthetic(n, heldout=heldout, seed=seed, progress=tick)
        corpus.save(path)
    if paths.piper_train.exists():
        log.info("%s exists, keeping it", paths.piper_train)
        return
    from streamer_training.loop import Progress

    piper_bar = Progress(N_PIPER_TRAIN, label="synth piper_train", every=500)
    data.build_piper(
        N_PIPER_TRAIN, seed=PIPER_TRAIN_SEED, progress=lambda k: piper_bar.update(k, "")
    ).save(paths.piper_train)


def fsdd_sets(heldout_speaker: str) -> tuple[list[data.FsddClip], list[data.FsddClip]]:
    """FSDD (train, held-out speaker) clips."""
    return data.fsdd_split(data.load_fsdd(FSDD_ROOT), heldout_speaker=heldout_speaker)


def fsdd_eval_items(test: list[data.FsddClip], *, every: int) -> list[data.Utterance]:
    """Every ``every``-th held-out-speaker clip as an evaluation utterance."""
    from streamer_training.grammar import DIGIT_WORDS

    return [
        data.Utterance(c.audio, DIGIT_WORDS[c.digit], "digits", "none", f"fsdd:{c.speaker}")
        for c in test[::every]
    ]


def mixture(paths: Paths, *, p_fsdd: float, p_piper: float = 0.0) -> data.Mixture:
    """The augmented training mixture: ``p_fsdd`` of its draws FSDD digits.

    A share ``p_piper`` of the rest is the Piper voice (its corpus is read only when that share
    is above zero).
    """
    fsdd_train, _ = fsdd_sets(paths.heldout_speaker)
    noises = augment.load_noises(data.noise_paths(SHARED_AUDIO))
    return data.Mixture(
        data.Corpus.load(paths.synth_train),
        fsdd_train,
        noises,
        p_fsdd=p_fsdd,
        piper_corpus=data.Corpus.load(paths.piper_train) if p_piper > 0 else None,
        p_piper=p_piper,
    )


def stage_intent(paths: Paths, *, steps: int, resume: bool) -> Path:
    """Train the SEGUE-architecture intent model (plus auxiliary CTC head); return its folder."""
    from streamer_training import train_intent

    evalset = data.Corpus.load(paths.synth_test).items[:96]
    recipe = train_intent.IntentRecipe(steps=steps)
    return train_intent.train(
        mixture(paths, p_fsdd=recipe.p_fsdd, p_piper=recipe.p_piper),
        evalset,
        work_dir=paths.work_dir / "intent",
        recipe=recipe,
        resume=resume,
    )


def stage_ctc(paths: Paths, *, steps: int, resume: bool) -> Path:
    """Train the SEW-D CTC model, distilled from the intent model's CTC head; return its folder."""
    import torch

    from streamer_training import train_ctc, train_intent

    intent_dir = paths.work_dir / "intent"
    teacher_at = train_intent.teacher_checkpoint(intent_dir)
    segue, _ = train_intent.load_trained(
        intent_dir, train_intent.IntentRecipe(), checkpoint=teacher_at
    )
    segue.requires_grad_(False)

    def teacher(values: torch.Tensor, mask: torch.Tensor, lengths: np.ndarray) -> torch.Tensor:
        hidden, _ = segue.encode(values, mask, lengths.tolist())
        logits: torch.Tensor = segue.ctc_head(hidden)
        return logits

    _, fsdd_test = fsdd_sets(paths.heldout_speaker)
    evalsets = {
        "synth_heldout": data.Corpus.load(paths.synth_test).items[:64],
        "fsdd_heldout": fsdd_eval_items(fsdd_test, every=8),
    }
    recipe = train_ctc.CtcRecipe(steps=steps)
    return train_ctc.train(
        mixture(paths, p_fsdd=recipe.p_fsdd, p_piper=recipe.p_piper),
        evalsets,
        work_dir=paths.work_dir / "ctc",
        recipe=recipe,
        resume=resume,
        teacher=teacher,
    )


def stage_real(paths: Paths, *, steps: int, resume: bool, init_bundle: Path | None) -> Path:
    """Fine-tune the SEW-D model on the real train speakers; return its folder.

    Starts from the ``ctc`` stage's model, or from the weights of ``init_bundle`` (a released
    commands-ctc bundle, :mod:`streamer_training.recover`) when given.
    """
    from streamer_training import real_voices, recover, train_ctc

    recipe = real_voices.RealRecipe(steps=steps)
    model = train_ctc.build_model(train_ctc.CtcRecipe())
    if init_bundle is not None:
        recover.load_released(model, init_bundle, train_ctc.save_hf)
    else:
        import torch

        state = torch.load(paths.work_dir / "ctc" / "checkpoint.pt", weights_only=True)
        model.load_state_dict(state["model"])
    mixture = real_voices.RealMixture(
        real_voices.load_part("train", max_s=recipe.max_s),
        data.Corpus.load(paths.synth_train),
        augment.load_noises(data.noise_paths(SHARED_AUDIO)),
        recipe,
    )
    evalsets = real_voices.validation_sets(data.Corpus.load(paths.synth_dev))
    return real_voices.train(
        mixture,
        evalsets,
        init=model,
        work_dir=paths.work_dir / "real",
        recipe=recipe,
        resume=resume,
    )


def export(source: Path, out: Path, *, quantize: bool) -> None:
    """Run ``bin/export_onnx`` on a checkpoint folder.

    Raises:
        subprocess.CalledProcessError: the exporter failed (its message is on stderr).
    """
    # Run from the repository with a relative source, so the manifest's source.path does not
    # record where this machine keeps its checkout.
    src = source.resolve()
    rel = src.relative_to(REPO) if src.is_relative_to(REPO) else src
    cmd = [sys.executable, str(REPO / "bin" / "export_onnx"), str(rel), "--out", str(out.resolve())]
    if quantize:
        cmd += ["--quantize", "int8"]
    log.info("exporting: %s", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO)


def stage_export(paths: Paths) -> None:
    """Write the checkpoint folders from the last training checkpoints, export fp32 and int8.

    commands-ctc comes from the ``real`` stage when it ran (its best validation checkpoint),
    else from the ``ctc`` stage. A model whose stage did not run here (no checkpoint) is not
    exported: a ``real`` run started from a released bundle keeps the released commands-intent.
    """
    from streamer_training import real_voices, train_ctc, train_intent

    sources: dict[str, Path] = {}
    if (paths.work_dir / "real" / "best.pt").exists():
        sources["commands-ctc"] = real_voices.save_best(
            paths.work_dir / "real", real_voices.RealRecipe()
        )
    else:
        sources["commands-ctc"] = train_ctc.save_from_checkpoint(
            paths.work_dir / "ctc", train_ctc.CtcRecipe()
        )
    if (paths.work_dir / "intent" / "checkpoint.pt").exists():
        sources["commands-intent"] = train_intent.save_from_checkpoint(
            paths.work_dir / "intent", train_intent.IntentRecipe()
        )
    else:
        log.warning("no intent checkpoint under %s: commands-intent not exported", paths.work_dir)
    for name, source in sources.items():
        export_both(name, source, paths.work_dir)


def export_both(name: str, source: Path, work_dir: Path) -> None:
    """Export ``source`` as ``work_dir/bundles/<name>-fp32`` and ``-int8`` (replacing them)."""
    for quantize in (False, True):
        out = work_dir / "bundles" / f"{name}-{'int8' if quantize else 'fp32'}"
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        export(relative(source), relative(out), quantize=quantize)
        record_source(out, source)
        if name == "commands-intent":
            from streamer_training.text_intent import write_head

            write_head(out)


def record_source(bundle_dir: Path, source: Path) -> None:
    """Name the checkpoint in the manifest relative to the repository, not this machine's root.

    The exporter records the absolute folder, which is right for a user's own export but would
    put one machine's directory layout into the committed demo bundles.
    """
    from streamer.engine.bundles import load_manifest, write_manifest

    manifest = load_manifest(bundle_dir)
    where = dataclasses.replace(manifest.source, path=relative(source).as_posix())
    write_manifest(dataclasses.replace(manifest, source=where), bundle_dir)


def _fsdd_strings(clips: list[data.FsddClip], *, n: int, seed: int) -> list[tuple[np.ndarray, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        utt = data.concat_digits(clips, rng, n_digits=int(rng.integers(2, 6)))
        out.append((utt.audio, utt.text))
    return out


def _eval_inputs(heldout_speaker: str) -> dict[str, Any]:
    from streamer_training.grammar import DIGIT_WORDS

    clips = data.load_fsdd(FSDD_ROOT)
    _, test = data.fsdd_split(clips, heldout_speaker=heldout_speaker)
    seen_unheard = [
        c for c in clips if c.speaker != heldout_speaker and c.index in data.FSDD_TEST_INDICES
    ]
    shared_fsdd = sorted((SHARED_AUDIO / "fsdd").glob("*.wav"))
    return {
        "fsdd_heldout_digits": [(c.audio, DIGIT_WORDS[c.digit]) for c in test],
        "fsdd_heldout_strings": _fsdd_strings(test, n=100, seed=5),
        "fsdd_seen_speakers_unheard_recordings": [
            (c.audio, DIGIT_WORDS[c.digit]) for c in seen_unheard
        ],
        "shared_audio_fsdd": [
            (evaluate.load_audio(p), DIGIT_WORDS[int(p.name.split("_")[0])]) for p in shared_fsdd
        ],
    }


def stage_evaluate(paths: Paths) -> None:
    """Measure fp32 and int8 bundles, keep int8 unless it loses accuracy, copy to ``exported/``."""
    synth_test = data.Corpus.load(paths.synth_test).items
    digit_sets = _eval_inputs(paths.heldout_speaker)
    real = [(clip, evaluate.load_audio(SHARED_AUDIO / clip.file)) for clip in evaluate.REAL_CLIPS]
    ctc_sets = {"synth_heldout_voices": [(u.audio, u.text) for u in synth_test], **digit_sets}
    intent_sets = {
        "synth_heldout_voices": [(u.audio, u.intent, u.room) for u in synth_test],
        **{k: [(a, "digits", "none") for a, _ in v] for k, v in digit_sets.items()},
    }
    results: dict[str, Any] = {}
    daemon_intents: dict[str, dict[str, list[str | None]]] = {}
    for name in BUNDLE_NAMES:
        results[name] = {}
        for variant in ("fp32", "int8"):
            bundle = evaluate.Bundle(paths.work_dir / "bundles" / f"{name}-{variant}")
            if name == "commands-ctc":
                res = evaluate.evaluate_ctc(
                    bundle,
                    ctc_sets,
                    [(c.file, a, c.transcript) for c, a in real],
                    daemon_intents[results["commands-intent"]["chosen"]],
                )
            else:
                res = evaluate.evaluate_intent(
                    bundle,
                    intent_sets,
                    [(c.file, a, c.intent, c.room) for c, a in real],
                    abstain_below=DecoderConfig().abstain_below,  # the daemon's default
                )
                daemon_intents[variant] = res.pop("daemon_intents")
            res["s_per_3s_utterance_1_thread"] = bundle.seconds_per_utterance()
            res["model_bytes"] = (
                (paths.work_dir / "bundles" / f"{name}-{variant}" / "model.onnx").stat().st_size
            )
            results[name][variant] = res
            summary = {
                k: {m: v for m, v in r.items() if m != "examples"} for k, r in res["sets"].items()
            }
            log.info("%s %s: %s", name, variant, json.dumps(summary))
        results[name]["chosen"] = _choose(name, results[name])
        chosen_dir = paths.work_dir / "bundles" / f"{name}-{results[name]['chosen']}"
        dest = paths.exported_dir / name
        dest.mkdir(parents=True, exist_ok=True)
        for file in ("model.onnx", "manifest.json", "lm.arpa"):
            if (chosen_dir / file).exists():
                shutil.copyfile(chosen_dir / file, dest / file)
    (paths.work_dir / "eval.json").write_text(json.dumps(results, indent=1))


def _choose(name: str, res: dict[str, Any]) -> str:
    """int8 unless it is more than one point worse than fp32 on any held-out set."""
    key = "wer" if name == "commands-ctc" else "intent_acc"
    sign = 1.0 if key == "wer" else -1.0
    for set_name, fp32 in res["fp32"]["sets"].items():
        if sign * (res["int8"]["sets"][set_name][key] - fp32[key]) > 0.01:
            return "fp32"
    return "int8"


def stage_card(paths: Paths, *, rotations: dict[str, Path] | None = None) -> None:
    """Write ``exported/<name>/CARD.md`` for both bundles.

    ``rotations`` maps other held-out speakers to the work folders of runs that left them out;
    their SEW-D results join the commands-ctc card's targets.
    """
    results = json.loads((paths.work_dir / "eval.json").read_text())
    tuning_path = paths.work_dir / "lm_tuning.json"
    tuning = json.loads(tuning_path.read_text()) if tuning_path.exists() else None
    rotated = {
        speaker: json.loads((work / "eval.json").read_text())["commands-ctc"]
        for speaker, work in (rotations or {}).items()
    }
    for name in BUNDLE_NAMES:
        sub = "ctc" if name == "commands-ctc" else "intent"
        card.write_card(
            name,
            results[name],
            curve=loop_curve(paths.work_dir / sub / "curve.json"),
            meta_dir=paths.work_dir / sub,
            bundle_dir=paths.exported_dir / name,
            heldout_speaker=paths.heldout_speaker,
            lm_tuning=tuning,
            rotations=rotated,
        )


def loop_curve(path: Path) -> dict[str, Any]:
    """The learning curve JSON of a training run."""
    raw: dict[str, Any] = json.loads(path.read_text())
    return raw


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (every other draw uses an explicit seeded generator)."""
    import torch

    torch.manual_seed(seed)

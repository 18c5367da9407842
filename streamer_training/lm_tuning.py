"""The ``lm`` stage: the grammar's word n-gram LM, fusion weights tuned, attached to ctc bundles."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from streamer.manifest import IntentGrammar
from streamer_training import data, evaluate
from streamer_training.workspace import SYNTH_DEV_SEED, Paths

log = logging.getLogger(__name__)

LM_ORDER = 3
LM_DISCOUNT = 0.5
LM_SENTENCES = 100_000
LM_SEED = 11
LM_REAL_REPEAT = 20
"""Each transcript of the real train speakers counts this many times among the LM's sentences
(AN4's letters and numbers, the Speech Commands words, the wake phrases, digits)."""
LM_ALPHAS = (0.2, 0.3, 0.5, 0.8)
LM_BETAS = (1.0, 2.0, 3.0)


def stage_lm(paths: Paths) -> None:
    """Write the grammar's word n-gram LM, tune its fusion weights, attach it to the ctc bundles.

    The weights are chosen per graph (fp32, int8) on :func:`dev_sets` (new sentences, training
    voices, and validation speakers), never on test speakers; the grid goes to ``lm_tuning.json``.
    """
    from streamer.ctc import CtcBeamDecoder
    from streamer.engine.bundles import load_manifest, write_manifest
    from streamer.manifest import LanguageModel
    from streamer_export.exporter import LM_NAME, attach_lm
    from streamer_training import lm

    real = real_sentences()
    sentences = lm.grammar_sentences(LM_SENTENCES, seed=LM_SEED) + real * LM_REAL_REPEAT
    arpa = lm.write_arpa(sentences, paths.work_dir / LM_NAME, order=LM_ORDER, discount=LM_DISCOUNT)
    devsets = dev_sets(paths)
    tuning: dict[str, Any] = {
        "lm": {
            "order": LM_ORDER,
            "sentences": LM_SENTENCES,
            "real_transcripts": len(real),
            "real_repeat": LM_REAL_REPEAT,
            "seed": LM_SEED,
            "discount": LM_DISCOUNT,
        },
        "dev": {name: len(items) for name, items in devsets.items()},
        "dev_seed": SYNTH_DEV_SEED,
    }
    for variant in ("fp32", "int8"):
        bundle_dir = paths.work_dir / "bundles" / f"commands-ctc-{variant}"
        bundle = evaluate.Bundle(bundle_dir)
        logits = {
            name: [bundle.run(audio)[0][0] for audio, _ in items] for name, items in devsets.items()
        }
        attached = attach_lm(bundle_dir, load_manifest(bundle_dir), arpa, alpha=0.0, beta=0.0)
        grid: list[dict[str, Any]] = []
        for alpha in LM_ALPHAS:
            for beta in LM_BETAS:
                trial = dataclasses.replace(
                    attached, lm=LanguageModel(file=LM_NAME, alpha=alpha, beta=beta)
                )
                decoder = CtcBeamDecoder(trial, lm_path=bundle_dir / LM_NAME)
                wers = {
                    name: evaluate.word_error_rate(
                        [text for _, text in devsets[name]],
                        [decoder.decode(x).text for x in logits[name]],
                    )
                    for name in devsets
                }
                mean = sum(wers.values()) / len(wers)
                grid.append({"alpha": alpha, "beta": beta, "wer": mean, "sets": wers})
                log.info(
                    "lm %s alpha %g beta %g: dev WER %.3f", variant, alpha, beta, grid[-1]["wer"]
                )
        best = min(grid, key=lambda g: g["wer"])
        lm_weights = LanguageModel(file=LM_NAME, alpha=best["alpha"], beta=best["beta"])
        write_manifest(
            dataclasses.replace(attached, lm=lm_weights, grammars=grammars()), bundle_dir
        )
        tuning[variant] = {"grid": grid, "chosen": best}
    (paths.work_dir / "lm_tuning.json").write_text(json.dumps(tuning, indent=1))


def real_sentences() -> list[str]:
    """Transcripts of the real datasets' train speakers (never a validation or test speaker)."""
    from streamer_training import speakers

    records = speakers.load_records(datasets=("an4", "speech_commands", "fsdd", "wake_words"))
    return [r.transcript for r in records if r.part == "train" and r.transcript]


def dev_sets(paths: Paths) -> dict[str, list[tuple[Any, str]]]:
    """What the fusion weights are tuned on (mean WER over the sets).

    New synthetic sentences in training voices, and the validation speakers of AN4 and Speech
    Commands (a fixed subset): never a test speaker.
    """
    from streamer_training import speakers

    out: dict[str, list[tuple[Any, str]]] = {
        "synth_dev": [(u.audio, u.text) for u in data.Corpus.load(paths.synth_dev).items]
    }
    found = speakers.split_items(
        "validation", max_per_set=150, sets=("an4", "sc_commands", "sc_digits")
    )
    for name, records in found.items():
        out[name] = [(evaluate.load_audio(r.path), r.transcript or "") for r in records]
    return out


def grammars() -> tuple[IntentGrammar, ...]:
    """The ctc bundle's grammars: what the intent model calls ``digits`` is read as digit words.

    "oh" included; a "the number is" before the digits is not kept.
    """
    from streamer_training.grammar import DIGIT_WORDS

    return (IntentGrammar("digits", (*DIGIT_WORDS, "oh")),)

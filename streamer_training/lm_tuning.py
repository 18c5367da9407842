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
LM_ALPHAS = (0.2, 0.3, 0.5, 0.8)
LM_BETAS = (1.0, 2.0, 3.0)


def stage_lm(paths: Paths) -> None:
    """Write the grammar's word n-gram LM, tune its fusion weights, attach it to the ctc bundles.

    The weights are chosen per graph (fp32, int8) on the dev corpus (new sentences, training
    voices), never on the held-out voices; the whole grid goes to ``lm_tuning.json``.
    """
    from streamer.ctc import CtcBeamDecoder
    from streamer.engine.bundles import load_manifest, write_manifest
    from streamer.manifest import LanguageModel
    from streamer_export.exporter import LM_NAME, attach_lm
    from streamer_training import lm

    sentences = lm.grammar_sentences(LM_SENTENCES, seed=LM_SEED)
    arpa = lm.write_arpa(sentences, paths.work_dir / LM_NAME, order=LM_ORDER, discount=LM_DISCOUNT)
    dev = data.Corpus.load(paths.synth_dev).items
    refs = [u.text for u in dev]
    tuning: dict[str, Any] = {
        "lm": {
            "order": LM_ORDER,
            "sentences": LM_SENTENCES,
            "seed": LM_SEED,
            "discount": LM_DISCOUNT,
        },
        "dev": {"n": len(dev), "seed": SYNTH_DEV_SEED},
    }
    for variant in ("fp32", "int8"):
        bundle_dir = paths.work_dir / "bundles" / f"commands-ctc-{variant}"
        bundle = evaluate.Bundle(bundle_dir)
        logits = [bundle.run(u.audio)[0][0] for u in dev]
        attached = attach_lm(bundle_dir, load_manifest(bundle_dir), arpa, alpha=0.0, beta=0.0)
        grid = []
        for alpha in LM_ALPHAS:
            for beta in LM_BETAS:
                trial = dataclasses.replace(
                    attached, lm=LanguageModel(file=LM_NAME, alpha=alpha, beta=beta)
                )
                decoder = CtcBeamDecoder(trial, lm_path=bundle_dir / LM_NAME)
                hyps = [decoder.decode(x).text for x in logits]
                grid.append(
                    {"alpha": alpha, "beta": beta, "wer": evaluate.word_error_rate(refs, hyps)}
                )
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


def grammars() -> tuple[IntentGrammar, ...]:
    """The ctc bundle's grammars: what the intent model calls ``digits`` is read as digit words.

    "oh" included; a "the number is" before the digits is not kept.
    """
    from streamer_training.grammar import DIGIT_WORDS

    return (IntentGrammar("digits", (*DIGIT_WORDS, "oh")),)

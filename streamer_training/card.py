"""Model cards (``exported/<name>/CARD.md``) written from evaluation results and learning curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamer_training import grammar
from streamer_training.card_sections import (
    LICENCE,
    WHY_DISTIL,
    curve_lines,
    data_section,
    grammar_lines,
    lm_lines,
    pct,
    restart_text,
    rotation_lines,
    train_time_s,
)

_CPU = "a 2-core x86-64 CPU shared with other jobs, onnxruntime CPU provider, 1 intra-op thread"


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


_DAEMON_TEXT = (
    "Transcripts as the daemon makes them: beam search with the LM, except that an utterance"
    " commands-intent calls `digits` is read as digit words only"
)


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
        data_section(heldout_speaker),
        "## Recipe",
        f"- {meta['step']} steps of {recipe['batch_size']} utterances (batches of similar length),"
        f" AdamW (weight decay 0.01), peak LR {recipe['peak_lr']}, {recipe['warmup_steps']} warm-up"
        " steps then cosine decay to 5%"
        + restart_text(recipe, meta["step"])
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
        f"- Training time: {train_time_s(curve) / 60:.0f} min of wall time on a 2-core x86-64 CPU,"
        " 2 torch threads (one per core, the default), SpecAugment-style time masking p=0.05.",
        "- Precision and regularisation: "
        + (
            "forward passes under bfloat16 autocast where the CPU does bfloat16 natively (weights,"
            " AdamW state and losses in float32)"
            if recipe.get("bf16")
            else "float32 throughout"
        )
        + f"; dropout {recipe.get('dropout', 0.05)}.",
        f"- Why this order: {WHY_DISTIL}",
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
        lines.append(f"| {row_label} | {pct(fp)} | {pct(q)} | {'yes' if met else 'no'} |")
    if is_ctc:
        lines += rotation_lines(rotations or {}, chosen)
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
                f"| {set_name} | {r['n']} | {pct(r['wer'])} | {pct(r['exact'])} |"
                f" {pct(q['wer'])} | {pct(q['exact'])} |"
                f" {pct(g.get('wer_free', g['wer']))} | {pct(g.get('exact_free', g['exact']))} |"
                f" {pct(g['wer_greedy'])} | {pct(g['exact_greedy'])} |"
            )
        lines += ["", *grammar_lines(manifest, results[chosen])]
    else:
        lines += [
            "| set | n | intent fp32 | room fp32 | intent int8 | room int8 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for set_name, r in results["fp32"]["sets"].items():
            q = results["int8"]["sets"][set_name]
            lines.append(
                f"| {set_name} | {r['n']} | {pct(r['intent_acc'])} | {pct(r['room_acc'])} |"
                f" {pct(q['intent_acc'])} | {pct(q['room_acc'])} |"
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
                f" {pct(r['wer'])} | {r.get('free', r['hyp'])} |"
                f" {pct(r.get('wer_free', r['wer']))} | {r['greedy']} | {pct(r['wer_greedy'])} |"
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
        *(lm_lines(lm_tuning, chosen) if is_ctc and lm_tuning else []),
        "## Learning curve",
        "",
        *curve_lines(curve),
        "",
        LICENCE,
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

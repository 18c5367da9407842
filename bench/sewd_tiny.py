"""Build a random SEW-D checkpoint of sew-d-tiny size and export it (fp32 and int8) for benchmarks.

Usage: ``python bench/sewd_tiny.py OUT_DIR`` writes ``OUT_DIR/ckpt`` (SEWDForCTC, transformers
layout), ``OUT_DIR/fp32`` and ``OUT_DIR/int8`` (its bundles made by ``bin/export_onnx``), and
``OUT_DIR/intent`` (a SEWDForSequenceClassification of the same size); existing ones are kept.
Random weights: the decoded text is meaningless, but timings and the batching invariant are those
of the real architecture (hidden 384, 12 layers, ~24M parameters).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

#: asapp/sew-d-tiny-100k's shape; everything else is SEWDConfig's default (the base conv stack).
SEWD_TINY_SIZE = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
}


def build_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """Write the random sew-d-tiny-size SEWDForCTC checkpoint into ``folder``."""
    import torch
    from checkpoints import VOCAB, _write_preprocessor, _write_tokenizer
    from transformers import SEWDConfig, SEWDForCTC

    torch.manual_seed(seed)
    with torch.no_grad():
        model = SEWDForCTC(SEWDConfig(**SEWD_TINY_SIZE, vocab_size=len(VOCAB)))
    model.save_pretrained(folder)
    _write_tokenizer(folder)
    _write_preprocessor(folder, do_normalize=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{folder}: SEWDForCTC, {n_params / 1e6:.1f}M parameters")
    return folder


def build_classifier(folder: Path, *, seed: int = 1) -> Path:
    """Write a random sew-d-tiny-size SEWDForSequenceClassification with six intent labels."""
    import torch
    from checkpoints import _write_preprocessor
    from transformers import SEWDConfig, SEWDForSequenceClassification

    labels = ("lights_on", "lights_off", "volume_up", "volume_down", "play", "stop")
    torch.manual_seed(seed)
    config = SEWDConfig(
        **SEWD_TINY_SIZE,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    with torch.no_grad():
        model = SEWDForSequenceClassification(config)
    model.save_pretrained(folder)
    _write_preprocessor(folder, do_normalize=True)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    ckpt = args.out / "ckpt"
    if not (ckpt / "config.json").exists():
        build_checkpoint(ckpt)
    intent = args.out / "intent-ckpt"
    if not (intent / "config.json").exists():
        build_classifier(intent)
    jobs = (
        ("fp32", ckpt, []),
        ("int8", ckpt, ["--quantize", "int8"]),
        ("intent", intent, []),
    )
    for name, source, extra in jobs:
        if not (args.out / name / "manifest.json").exists():
            export = [sys.executable, str(ROOT / "bin" / "export_onnx"), str(source)]
            subprocess.run([*export, "--out", str(args.out / name), *extra], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

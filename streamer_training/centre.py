"""Centre a speech-embedding bundle: subtract the mean training embedding inside its graph.

A small student's pooled embeddings share one common direction (every utterance, whatever it
says, sits near the mean), so cosines against the example sentences differ by little and the
nearest intent is decided by what is left over. Subtracting the mean of the student's own
embeddings of *training* clips (Mu and Viswanath, "All-but-the-Top", ICLR 2018, first step) takes
that shared part out. The embedding is ``projection(pooled) + bias``, so the subtraction is done
once, in the graph's output bias: the daemon, the matcher and the protocol see no change, and
the run costs nothing more. Only the speech side is centred: the text embedder's vectors are
what the student was trained to match (centring them too changed nothing on validation).

Usage: ``python -m streamer_training.centre --bundle exported/commands-embed --out DIR [--clips
600] [--seed 0] [--data data/demo/embed_train.npz]`` (validation decides whether it ships:
``bench/intents_zero_shot.py --part validation --speech-model DIR``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streamer.engine.bundles import load_manifest, write_manifest
from streamer.manifest import MODEL_NAME

PARITY_NOTE = (
    "; measured before centring: the shipped graph's output is that graph's minus a mean "
    "training embedding (centre.json, streamer_training/centre.py)"
)
"""Added to the manifest's parity description, which was measured on the uncentred graph."""


def embedding_mean(
    bundle: Path, clips: Iterable[npt.NDArray[np.float32]]
) -> npt.NDArray[np.float64]:
    """The bundle's mean ``embedding`` output over ``clips`` (16 kHz float32, one at a time)."""
    from streamer_training.evaluate import Bundle

    model = Bundle(bundle)
    names = [o.name for o in model.session.get_outputs()]
    if "embedding" not in names:
        raise ValueError(f"{bundle} has no 'embedding' output (outputs: {', '.join(names)})")
    rows = [model.run(np.asarray(c, dtype=np.float32))[names.index("embedding")][0] for c in clips]
    if not rows:
        raise ValueError("no clips to average")
    mean: npt.NDArray[np.float64] = np.stack(rows).astype(np.float64).mean(axis=0)
    return mean


def training_choice(n_items: int, n_clips: int, seed: int) -> list[int]:
    """The clips a bundle is centred on: ``n_clips`` of ``n_items``, seeded, none twice, sorted.

    The trainer (``streamer_training.train_embed``) centres its evaluations on the same kind of
    choice, so the checkpoint it picks is judged as it will ship.
    """
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_items, size=min(n_clips, n_items), replace=False))


def centre_bundle(src: Path, dst: Path, mean: npt.ArrayLike) -> Path:
    """Copy bundle ``src`` to ``dst`` with ``mean`` subtracted from its ``embedding`` output.

    The manifest's parity description (measured on the uncentred graph) says so. The output
    must come from a ``Gemm`` (fp32, as ``bin/export_onnx --task embed`` writes
    it) or an ``Add`` (int8: quantization splits the Gemm) whose bias is a float initializer;
    that initializer is shifted.

    Raises:
        ValueError: the graph has no such bias, ``mean`` is not its shape, or ``dst`` is
            ``src`` (the copy replaces ``dst``).
    """
    import onnx
    from onnx import numpy_helper

    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: write the centred bundle to another folder than {src}")
    model = onnx.load(str(src / MODEL_NAME))
    graph = model.graph
    node = next((n for n in graph.node if "embedding" in n.output), None)
    inits = {i.name: i for i in graph.initializer}
    bias, scale = None, 1.0
    if node is not None and node.op_type == "Add":
        bias = next((inits[i] for i in node.input if i in inits), None)
    elif node is not None and node.op_type == "Gemm" and len(node.input) == 3:
        bias = inits.get(node.input[2])
        scale = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
    if bias is None or bias.data_type != onnx.TensorProto.FLOAT or scale == 0:
        raise ValueError(f"{src / MODEL_NAME}: 'embedding' is not an Add or Gemm of a float bias")
    values = numpy_helper.to_array(bias)
    shift = np.asarray(mean, dtype=np.float64) / scale
    if shift.shape != values.shape:
        raise ValueError(f"mean of shape {shift.shape} for a bias of shape {values.shape}")
    bias.CopyFrom(numpy_helper.from_array((values - shift).astype(np.float32), bias.name))
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    onnx.save(model, str(dst / MODEL_NAME))
    manifest = load_manifest(dst)
    if manifest.parity is not None:
        parity = replace(manifest.parity, compared=manifest.parity.compared + PARITY_NOTE)
        write_manifest(replace(manifest, parity=parity), dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("data/demo/embed_train.npz"))
    parser.add_argument("--clips", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from streamer_training.data import Corpus

    if not args.data.is_file():
        parser.error(f"{args.data} not found: run `bin/train_demo --stage embed-data` first")
    items = Corpus.load(args.data).items
    picked = training_choice(len(items), args.clips, args.seed)
    mean = embedding_mean(args.bundle, (items[i].audio for i in picked))
    centre_bundle(args.bundle, args.out, mean)
    note = {"centred_on": str(args.data), "clips": len(picked), "seed": args.seed}
    (args.out / "centre.json").write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    print(
        f"{args.out}: the mean of {len(picked)} training clips subtracted "
        f"(norm {np.linalg.norm(mean):.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

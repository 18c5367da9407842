"""Tiny ONNX graphs built with onnx.helper (no torch) for engine and server tests.

``write_bundle`` makes a real bundle folder (model.onnx + manifest.json) whose graph mimics a
CTC or classify model's I/O: frames are ``samples // stride``, and the outputs are a fixed linear
function of per-frame energy, so tests get deterministic, input-dependent results in microseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from streamer.engine.bundles import write_manifest
from streamer.manifest import MODEL_NAME, Manifest, Source, TensorSpec

STRIDE = 320
VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|", "A", "B", "C")


def _frame_features(stride: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """input_values [B, S] -> feats [B, F, 1]: mean |x| per frame of ``stride`` samples."""
    inits = [
        numpy_helper.from_array(np.array([0, -1, stride], dtype=np.int64), "frame_shape"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([stride], dtype=np.int64), "stride"),
    ]
    nodes = [
        helper.make_node("Shape", ["input_values"], ["shape"]),
        helper.make_node("Gather", ["shape", "axis1"], ["n_samples"], axis=0),
        helper.make_node("Div", ["n_samples", "stride"], ["n_frames"]),
        helper.make_node("Mul", ["n_frames", "stride"], ["n_used"]),
        helper.make_node("Slice", ["input_values", "zero", "n_used", "axis1"], ["used"]),
        helper.make_node("Reshape", ["used", "frame_shape"], ["framed"]),
        helper.make_node("Abs", ["framed"], ["mag"]),
        helper.make_node("ReduceMean", ["mag", "axis2"], ["feats"], keepdims=1),
    ]
    return nodes, inits


def ctc_graph(vocab_size: int = len(VOCAB), stride: int = STRIDE) -> onnx.ModelProto:
    """A graph with input_values [batch, samples] -> logits [batch, frames, vocab]."""
    nodes, inits = _frame_features(stride)
    rng = np.random.default_rng(0)
    inits += [
        numpy_helper.from_array(rng.normal(size=(1, vocab_size)).astype(np.float32) * 50, "w"),
        numpy_helper.from_array(rng.normal(size=(vocab_size,)).astype(np.float32), "b"),
    ]
    nodes += [
        helper.make_node("MatMul", ["feats", "w"], ["proj"]),
        helper.make_node("Add", ["proj", "b"], ["logits"]),
    ]
    return _model(nodes, inits, [("logits", ["batch", "frames", vocab_size])])


def classify_graph(sizes: tuple[int, ...], stride: int = STRIDE) -> onnx.ModelProto:
    """A graph with input_values -> logits_i [batch, n_i] per label set, plus embedding."""
    nodes, inits = _frame_features(stride)
    nodes.append(helper.make_node("ReduceMean", ["feats", "axis1"], ["pooled3"], keepdims=0))
    outputs: list[tuple[str, list[int | str]]] = []
    rng = np.random.default_rng(1)
    for i, n in enumerate(sizes):
        name = f"logits_{i}" if len(sizes) > 1 else "logits"
        inits.append(
            numpy_helper.from_array(rng.normal(size=(1, n)).astype(np.float32) * 30, f"w{i}")
        )
        nodes.append(helper.make_node("MatMul", ["pooled3", f"w{i}"], [name]))
        outputs.append((name, ["batch", n]))
    inits.append(numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), "we"))
    nodes.append(helper.make_node("MatMul", ["pooled3", "we"], ["embedding"]))
    outputs.append(("embedding", ["batch", 4]))
    return _model(nodes, inits, outputs)


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    outputs: list[tuple[str, list[int | str]]],
) -> onnx.ModelProto:
    inp = helper.make_tensor_value_info("input_values", TensorProto.FLOAT, ["batch", "samples"])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs]
    graph = helper.make_graph(nodes, "tiny", [inp], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def write_bundle(
    out: Path, *, task: str = "ctc", labels: tuple[tuple[str, ...], ...] = (("on", "off"),)
) -> Path:
    """Write a tiny bundle of ``task`` (ctc or classify) into ``out`` and return ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if task == "ctc":
        model = ctc_graph()
        extra: dict[str, object] = {"vocab": VOCAB, "blank_id": 0, "word_delimiter": "|"}
        outputs = (TensorSpec("logits", "float32", ("batch", "frames", len(VOCAB))),)
    else:
        model = classify_graph(tuple(len(s) for s in labels))
        names = [f"logits_{i}" for i in range(len(labels))] if len(labels) > 1 else ["logits"]
        heads = [
            TensorSpec(n, "float32", ("batch", len(s))) for n, s in zip(names, labels, strict=True)
        ]
        outputs = (*heads, TensorSpec("embedding", "float32", ("batch", 4)))
        extra = {"labels": labels if len(labels) > 1 else labels[0], "embedding_dim": 4}
    onnx.save(model, str(out / MODEL_NAME))
    manifest = Manifest(
        arch="sew-d" if task == "ctc" else "segue",
        task=task,
        sample_rate=16000,
        inputs=(TensorSpec("input_values", "float32", ("batch", "samples")),),
        outputs=outputs,
        min_samples=STRIDE,
        frame_stride_samples=STRIDE,
        opset=18,
        source=Source(path="tests/onnx_graphs.py"),
        parity=None,
        **extra,  # type: ignore[arg-type]
    )
    write_manifest(manifest, out)
    return out

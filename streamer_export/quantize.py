"""Post-export weight compression: dynamic int8 (MatMul only) or float16 with float32 I/O.

Also int8 weights alone, dequantized inside the graph (:func:`quantize_weights_int8`), for
graphs whose activations do not survive int8.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

QUANTIZATIONS = ("int8", "fp16")
# Only MatMul: with the default op types quantize_dynamic also turns the feature encoder's convs
# into ConvInteger, which made these models 2-3x slower on CPU instead of faster.
INT8_OP_TYPES = ["MatMul"]


def quantize_int8(src: Path, dst: Path) -> None:
    """Write ``src`` to ``dst`` with MatMul weights as int8, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(src, dst, op_types_to_quantize=INT8_OP_TYPES, weight_type=QuantType.QInt8)


def convert_fp16(src: Path, dst: Path) -> None:
    """Write ``src`` to ``dst`` with float16 weights and compute, keeping float32 inputs/outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence ORT's root-logger advice ("consider pre-processing") and its warnings."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


#: Which input of each op type holds the weight, and the axis that keeps one scale per slice:
#: a MatMul weight ``[in, out]`` gets one scale per output column, an embedding table
#: ``[rows, dim]`` one per row (each token's vector keeps its own range).
WEIGHT_INPUTS = {"MatMul": (1, 1), "Gather": (0, 0)}
INT8_MAX = 127
"""Symmetric range ``[-127, 127]``: -128 is left out so that ``-q`` never overflows."""
MIN_DEQUANTIZE_OPSET = 13
"""The first opset whose ``DequantizeLinear`` takes an ``axis`` (per-channel scales)."""


def quantize_weights_int8(src: Path, dst: Path) -> int:
    """Write ``src`` to ``dst`` with int8 weights dequantized in the graph; activations stay float.

    Every float32 MatMul weight that is an initializer becomes an int8 initializer with one scale
    per output column (``DequantizeLinear``, ``axis=1``), and every float32 table a Gather reads
    (BERT's word, position and token-type embeddings) one with one scale per row (``axis=0``).
    Scales are symmetric, zero points 0. Nothing else changes.

    Weight-only, not :func:`quantize_int8`, because a sentence embedder is only as good as the
    direction of its vectors: dynamic int8 also quantizes every activation per batch, and on
    all-MiniLM-L6-v2 that turned short sentences' embeddings to cosine 0.82 of the float ones,
    while int8 weights alone stay above 0.99, in a file 4x smaller than float32. The price is
    speed: the tables are dequantized on every run.

    Returns:
        The number of weights quantized.

    Raises:
        ValueError: the graph's opset has no per-axis ``DequantizeLinear``.
    """
    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_DEQUANTIZE_OPSET:
        raise ValueError(f"{src}: opset {opset} < {MIN_DEQUANTIZE_OPSET}, no per-axis int8")
    graph = model.graph
    floats = {
        t.name: t
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
    }
    dequantized: dict[str, tuple[str, int]] = {}  # weight -> (DequantizeLinear output, axis)
    added: list[onnx.NodeProto] = []
    for node in graph.node:
        slot, axis = WEIGHT_INPUTS.get(node.op_type, (-1, 0))
        name = node.input[slot] if 0 <= slot < len(node.input) else ""
        if name not in floats:
            continue
        if name not in dequantized:
            dequantized[name] = (_add_int8(graph, floats[name], axis, added), axis)
        output, quantized_axis = dequantized[name]
        if quantized_axis == axis:  # a table shared by a MatMul and a Gather stays float for one
            node.input[slot] = output
    nodes = [*added, *graph.node]  # before every consumer: they read initializers only
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name not in floats or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(dst))
    return len(added)


def _add_int8(
    graph: onnx.GraphProto, weight: onnx.TensorProto, axis: int, nodes: list[onnx.NodeProto]
) -> str:
    """Add ``weight`` as int8, scales and zero points; append its DequantizeLinear to ``nodes``.

    Returns:
        The name of the DequantizeLinear's float output, which replaces ``weight`` as an input.
    """
    values = numpy_helper.to_array(weight).astype(np.float32)
    peak = np.max(np.abs(values), axis=1 - axis)
    scale = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    quantized = np.rint(values / np.expand_dims(scale, 1 - axis))
    arrays: dict[str, npt.NDArray[Any]] = {
        f"{weight.name}_int8": np.clip(quantized, -INT8_MAX, INT8_MAX).astype(np.int8),
        f"{weight.name}_scale": scale,
        f"{weight.name}_zero_point": np.zeros(scale.shape, dtype=np.int8),
    }
    graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in arrays.items())
    output = f"{weight.name}_dequantized"
    nodes.append(
        helper.make_node(
            "DequantizeLinear", list(arrays), [output], name=f"{weight.name}_dequantize", axis=axis
        )
    )
    return output

"""Post-export weight compression: dynamic int8 (MatMul only) or float16 with float32 I/O."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx

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

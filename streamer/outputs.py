"""One utterance's model outputs as the decoders read them: checked arrays and softmaxes.

All arrays are *per utterance*: the graph's outputs with the batch axis removed (row ``i`` of a
batched run). Every one is checked against what the bundle manifest declares; a mismatch (wrong
rank or size, non-float dtype, NaN or inf) raises :class:`~streamer.errors.ModelError` naming the
output, so one bad run becomes an error event for that utterance.

Pure numpy; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from streamer.errors import ModelError
from streamer.manifest import Manifest


def checked(
    value: npt.ArrayLike, what: str, shape: tuple[int | None, ...]
) -> npt.NDArray[np.float64]:
    """Return ``value`` as float64 after checking rank, fixed dims (None: any), dtype and NaN.

    Raises:
        ModelError: the rank, a fixed dim or the dtype is wrong, or a value is NaN or inf.
    """
    arr = np.asarray(value)
    if arr.ndim != len(shape) or any(
        n is not None and n != d for n, d in zip(shape, arr.shape, strict=True)
    ):
        want = ", ".join("*" if n is None else str(n) for n in shape)
        raise ModelError(f"{what} has shape {list(arr.shape)}, expected [{want}]")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ModelError(f"{what} has dtype {arr.dtype}, expected floating point")
    out = arr.astype(np.float64)
    if not np.isfinite(out).all():
        raise ModelError(f"{what} contains NaN or inf")
    return out


def softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Probabilities over the last axis."""
    e: npt.NDArray[np.float64] = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs: npt.NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return probs


def log_softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Log-probabilities over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def declared_size(manifest: Manifest, name: str) -> int | str | None:
    """The last declared dim of output ``name`` (str: symbolic), None for a scalar output.

    Raises:
        ModelError: the bundle has no output called ``name``.
    """
    spec = manifest.output(name)
    if spec is None:
        raise ModelError(f"a {manifest.task} bundle needs an output named {name!r}")
    return spec.shape[-1] if spec.shape else None


def take(outputs: Mapping[str, npt.ArrayLike], name: str) -> npt.ArrayLike:
    """The run's output ``name``.

    Raises:
        ModelError: the run returned no such output.
    """
    if name not in outputs:
        raise ModelError(f"the run returned no {name!r} output")
    return outputs[name]

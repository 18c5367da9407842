"""Recover PyTorch weights from a shipped ONNX bundle, to fine-tune a released model further.

The exporter (``bin/export_onnx``) names every ONNX initializer after the parameter it came from
(``core.model.<parameter>``, MatMul weights transposed, int8 ones as ``<name>_quantized`` with a
scale and a zero point; the positional convolution's weight norm folded into one weight). Rather
than hard-code those rules, :func:`initializer_map` exports a copy of the architecture with
random, all-distinct weights and finds, for each parameter, the initializer holding exactly its
values (or their transpose). The released graph uses the same names, so each parameter is read
back from it, dequantized where it was quantized: the recovered model is the released one up to
the int8 rounding of its MatMul weights, which the release's card bounds (int8 is shipped only
when it is at most a point worse than fp32).

Used by :mod:`streamer_training.real_voices` to start from the released SEW-D instead of from
scratch (SEW-D from scratch needs a teacher's distillation to leave CTC's all-blank plateau: the
card of commands-ctc says why).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from streamer_training.workspace import REPO

log = logging.getLogger(__name__)

_NORM_G = ".parametrizations.weight.original0"
_NORM_V = ".parametrizations.weight.original1"
"""The weight norm of the positional convolution (SEW-D's and wav2vec 2.0's): the graph holds
the folded weight ``<conv>.weight``, split back into a norm and a direction on loading."""
_TRAINING_ONLY = ("masked_spec_embed",)
"""Parameters the inference graph does not hold (the SpecAugment mask vector): left as built."""


def _folded(name: str) -> str | None:
    """``<conv>.weight`` for a weight-norm direction ``<conv>.parametrizations...original1``."""
    return name[: -len(_NORM_V)] + ".weight" if name.endswith(_NORM_V) else None


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return name.endswith(_TRAINING_ONLY) or name.startswith(skip) or name.endswith(_NORM_G)


def initializer_map(
    model: Any, save: Any, *, skip: tuple[str, ...] = ()
) -> dict[str, tuple[str, bool]]:
    """Parameter name -> (ONNX initializer name, transposed) for ``model``'s architecture.

    ``save(model, folder)`` writes a Hugging Face folder ``bin/export_onnx`` can read;
    parameters whose names start with one of ``skip`` (training-only heads the saved folder
    leaves out) are left as built.

    Raises:
        RuntimeError: the export failed, or a parameter has no initializer.
    """
    import copy

    import onnx
    import torch
    from onnx import numpy_helper

    probe = copy.deepcopy(model)
    torch.manual_seed(12345)
    with torch.no_grad():
        for p in probe.parameters():
            p.normal_(0.0, 0.05)
    with tempfile.TemporaryDirectory() as tmp:
        save(probe, Path(tmp) / "hf")
        command = [sys.executable, str(REPO / "bin" / "export_onnx"), str(Path(tmp) / "hf")]
        done = subprocess.run(
            [*command, "--out", str(Path(tmp) / "onnx"), "--atol", "10"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"export of the probe failed: {done.stderr.strip()[-400:]}")
        graph = onnx.load(str(Path(tmp) / "onnx" / "model.onnx")).graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {k: v.detach().numpy() for k, v in probe.state_dict().items()}
    for name in list(state):
        folded = _folded(name)
        if folded is not None:
            conv = probe.get_submodule(name[: -len(_NORM_V)])
            state[folded] = conv.weight.detach().numpy()
            del state[name]
    found: dict[str, tuple[str, bool]] = {}
    for pname, value in state.items():
        if _skipped(pname, skip):
            continue
        for iname, init in inits.items():
            if init.shape == value.shape and np.allclose(init, value, atol=1e-6):
                found[pname] = (iname, False)
                break
            if init.ndim == 2 and init.T.shape == value.shape and np.allclose(init.T, value):
                found[pname] = (iname, True)
                break
        else:
            raise RuntimeError(f"no ONNX initializer holds parameter {pname}")
    return found


def load_released(model: Any, bundle: Path, save: Any, *, skip: tuple[str, ...] = ()) -> Any:
    """Load the weights of the released ``bundle`` (int8 or fp32) into ``model``; return it.

    ``skip``: as in :func:`initializer_map`.

    Raises:
        RuntimeError: a parameter is missing from the bundle's graph.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    where = initializer_map(model, save, skip=skip)
    graph = onnx.load(str(bundle / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = model.state_dict()
    n_quantized = 0
    with torch.no_grad():
        for pname, (iname, transposed) in where.items():
            if iname in inits:
                value = inits[iname].astype(np.float32)
            elif f"{iname}_quantized" in inits:
                q = inits[f"{iname}_quantized"].astype(np.float32)
                scale = inits[f"{iname}_scale"].astype(np.float32)
                zero = inits[f"{iname}_zero_point"].astype(np.float32)
                value = (q - zero) * scale
                n_quantized += 1
            else:
                raise RuntimeError(f"{bundle}: the graph lacks {iname} (parameter {pname})")
            if transposed:
                value = value.T
            target = state[pname].shape if pname in state else value.shape
            if value.shape != target and value.T.shape == target:
                # int8 quantization turns a Gemm (weight as stored) into a MatMul (transposed)
                value = value.T
            conv = pname[: -len(".weight")]
            if conv + _NORM_V in state:
                weight = torch.from_numpy(np.ascontiguousarray(value))
                g = state[conv + _NORM_G]
                dims = [d for d in range(weight.ndim) if g.shape[d] == 1]
                state[conv + _NORM_V].copy_(weight)
                state[conv + _NORM_G].copy_(weight.norm(dim=dims, keepdim=True))
            else:
                state[pname].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    log.info("recovered %d parameters from %s (%d dequantized)", len(where), bundle, n_quantized)
    return model

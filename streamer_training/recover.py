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

_FOLDED = "sew_d.encoder.pos_conv_embed.conv.weight"
_NORM_G = "sew_d.encoder.pos_conv_embed.conv.parametrizations.weight.original0"
_NORM_V = "sew_d.encoder.pos_conv_embed.conv.parametrizations.weight.original1"
_TRAINING_ONLY = ("sew_d.masked_spec_embed",)
"""Parameters the inference graph does not hold (the SpecAugment mask vector): left as built."""


def initializer_map(model: Any, save: Any) -> dict[str, tuple[str, bool]]:
    """Parameter name -> (ONNX initializer name, transposed) for ``model``'s architecture.

    ``save(model, folder)`` writes a Hugging Face folder ``bin/export_onnx`` can read.

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
    if _NORM_V in state:
        state[_FOLDED] = probe.sew_d.encoder.pos_conv_embed.conv.weight.detach().numpy()
    found: dict[str, tuple[str, bool]] = {}
    for pname, value in state.items():
        if pname in (_NORM_G, _NORM_V, *_TRAINING_ONLY):
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


def load_released(model: Any, bundle: Path, save: Any) -> Any:
    """Load the weights of the released ``bundle`` (int8 or fp32) into ``model``; return it.

    Raises:
        RuntimeError: a parameter is missing from the bundle's graph.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    where = initializer_map(model, save)
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
            if pname == _FOLDED:
                weight = torch.from_numpy(np.ascontiguousarray(value))
                g = state[_NORM_G]
                dims = [d for d in range(weight.ndim) if g.shape[d] == 1]
                state[_NORM_V].copy_(weight)
                state[_NORM_G].copy_(weight.norm(dim=dims, keepdim=True))
            else:
                state[pname].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    log.info("recovered %d parameters from %s (%d dequantized)", len(where), bundle, n_quantized)
    return model

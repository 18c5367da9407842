"""PyTorch -> ONNX with the feature extractor's normalization inside the graph.

The TorchScript exporter (``dynamo=False``) is used for every architecture. The dynamo exporter
was reported to freeze SEW-D's time axis to the traced length when an attention mask is built;
these graphs pass no mask, and with transformers 5.23 its SEW-D graph stayed dynamic, but it took
48 s on the tiny test SEW-D where TorchScript takes about 1 s. Parity at several lengths would
catch a frozen axis either way.

TorchScript records Python branches as taken during the trace, so the trace input must make
them go the general way. SEW-D pads its upsampled output by one frame only when the conv frame
count is odd; traced on an even count that pad vanished from the graph and odd inputs came out
one frame short. The trace input therefore always yields an odd frame count.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from streamer_export.models import TorchPipeline
from streamer_export.spec import Plan

# Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm's epsilon.
NORM_EPS = 1e-7
INPUT_NAME = "input_values"
# Frames in the trace input: odd (see the module docstring), long enough to exercise attention.
TRACE_FRAMES = 101


class GraphModule(nn.Module):
    """Raw audio ``[batch, samples]`` -> the bundle outputs, normalizing each row first if asked."""

    def __init__(self, core: nn.Module, *, normalize: bool) -> None:
        super().__init__()
        self.core = core
        self.normalize = normalize

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = input_values
        if self.normalize:
            # Population variance per utterance, as numpy's x.var() in the feature extractor.
            mean = x.mean(dim=-1, keepdim=True)
            var = (x - mean).pow(2).mean(dim=-1, keepdim=True)
            x = (x - mean) / torch.sqrt(var + NORM_EPS)
        outputs: tuple[torch.Tensor, ...] = self.core(x)
        return outputs


def trace_samples(plan: Plan) -> int:
    """Return the trace input length: an odd frame count, mid-way between frame boundaries."""
    return plan.conv.n_samples_for(TRACE_FRAMES) + plan.conv.stride_samples // 2


def export_onnx(pipeline: TorchPipeline, plan: Plan, path: Path, *, opset: int) -> None:
    """Trace ``pipeline`` and write a float32 ONNX graph with dynamic batch and samples axes."""
    graph = GraphModule(pipeline.core, normalize=pipeline.do_normalize).eval()
    example = torch.zeros(1, trace_samples(plan))
    example += 0.1 * torch.randn(example.shape, generator=torch.Generator().manual_seed(0))
    axes = {INPUT_NAME: {0: "batch", 1: "samples"}}
    axes.update({o.name: o.axes for o in pipeline.outputs})
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[o.name for o in pipeline.outputs],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's deprecation and tracer warnings; the parity check is the judge."""
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx_log.setLevel(level)

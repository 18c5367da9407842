"""Load a checkpoint into PyTorch: the module to trace, and the reference pipeline for parity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import transformers
from torch import nn
from transformers import Wav2Vec2FeatureExtractor

from streamer_export.checkpoint import Checkpoint
from streamer_export.errors import ExportInputError
from streamer_export.segue import (
    SegueForClassification,
    SegueForRegression,
    SegueModel,
    load_segue,
)
from streamer_export.spec import SEGUE, WAV2VEC2_BASE_960H_PREPROCESSOR, Plan

FeatureArray = npt.NDArray[np.float32]
_FEATURE_KEYS = ("feature_size", "sampling_rate", "padding_value", "do_normalize")
# Tensors a checkpoint may lack without changing inference (SpecAugment's mask embedding).
_OPTIONAL_SUFFIXES = ("masked_spec_embed",)


@dataclass(frozen=True)
class GraphOutput:
    """One graph output: its name and its dynamic axes (index -> symbolic name)."""

    name: str
    axes: dict[int, str]


@dataclass(frozen=True)
class TorchPipeline:
    """A checkpoint loaded for export.

    Attributes:
        core: maps normalized ``input_values`` to the graph outputs, in order; this is traced.
        outputs: the graph outputs ``core`` returns.
        reference: the PyTorch pipeline parity compares against: feature extractor + model, as
            the checkpoint's own code runs it; takes raw audio ``[batch, samples]``.
        description: what ``reference`` is, for the manifest.
        do_normalize: whether the feature extractor normalizes (so the graph must).
        sample_rate: the feature extractor's rate in Hz.
        embedding_dim: size of the ``embedding`` output, if there is one.
    """

    core: nn.Module
    outputs: tuple[GraphOutput, ...]
    reference: Callable[[FeatureArray], list[FeatureArray]]
    description: str
    do_normalize: bool
    sample_rate: int
    embedding_dim: int | None


def load_pipeline(checkpoint: Checkpoint, plan: Plan) -> TorchPipeline:
    """Load ``checkpoint`` as ``plan`` says, in eval mode.

    Raises:
        ExportInputError: the weights do not fit the architecture, or the preprocessor is foreign.
    """
    features = _feature_extractor(checkpoint, plan)
    rate = int(features.sampling_rate)
    if plan.spec is SEGUE:
        segue = load_segue(
            plan.class_name, plan.encoder_config, checkpoint.config, checkpoint.weight_files
        )
        core, call, outputs = _segue_parts(segue, plan.task)
        dim: int | None = segue.embedding_dim
    else:
        model = _load_hf(checkpoint, plan)
        core, call, outputs = _hf_parts(model, plan.task)
        dim = int(model.config.hidden_size) if plan.task == "embed" else None

    def reference(audio: FeatureArray) -> list[FeatureArray]:
        feats = features(list(audio), sampling_rate=rate, return_tensors="np")["input_values"]
        with torch.inference_mode():
            result = call(torch.from_numpy(np.asarray(feats, dtype=np.float32)), audio.shape[1])
        return [t.numpy().astype(np.float32) for t in result]

    return TorchPipeline(
        core=core.eval(),
        outputs=outputs,
        reference=reference,
        description=f"Wav2Vec2FeatureExtractor + {plan.class_name}",
        do_normalize=bool(features.do_normalize),
        sample_rate=rate,
        embedding_dim=dim,
    )


_Call = Callable[[torch.Tensor, int], tuple[torch.Tensor, ...]]


class _HFCore(nn.Module):
    """A transformers model reduced to the tensors the bundle outputs."""

    def __init__(self, model: Any, task: str) -> None:
        super().__init__()
        self.model: Any = model
        self.task = task

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.task == "embed":
            base = self.model.base_model
            return (base(input_values).last_hidden_state.mean(dim=1),)
        return (self.model(input_values).logits,)


class _SegueEmbedding(nn.Module):
    """A SEGUE model reduced to its embedding (``--task embed`` on a task checkpoint)."""

    def __init__(self, model: SegueModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.model.embed(input_values),)


def _hf_parts(model: Any, task: str) -> tuple[nn.Module, _Call, tuple[GraphOutput, ...]]:
    core = _HFCore(model, task)
    batch = {0: "batch"}
    names = {"ctc": "logits", "classify": "logits", "embed": "embedding"}
    axes = {0: "batch", 1: "frames"} if task == "ctc" else batch
    return core, lambda x, _n: core(x), (GraphOutput(names[task], axes),)


def _segue_parts(model: SegueModel, task: str) -> tuple[nn.Module, _Call, tuple[GraphOutput, ...]]:
    batch = {0: "batch"}
    embedding = GraphOutput("embedding", batch)

    def pooled(x: torch.Tensor, n_samples: int) -> torch.Tensor:
        # The original pipeline: SegueProcessor counts tokens from the input length.
        return model.embed(x, [model.n_speech_tokens(n_samples)] * x.shape[0])

    if task == "embed":
        return _SegueEmbedding(model), lambda x, n: (pooled(x, n),), (embedding,)
    if isinstance(model, SegueForClassification):
        n_heads = len(model.classification_heads)
        names = [f"logits_{i}" for i in range(n_heads)] if model.is_multilabel else ["logits"]

        def classify(x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
            emb = pooled(x, n)
            return (*model.heads(emb), emb)

        return model, classify, (*(GraphOutput(m, batch) for m in names), embedding)
    if not isinstance(model, SegueForRegression):
        raise ExportInputError(f"task {task!r} is not available for {type(model).__name__}")
    regressor = model

    def regress(x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        emb = pooled(x, n)
        return regressor.head(emb), emb

    return model, regress, (GraphOutput("value", batch), embedding)


def _load_hf(checkpoint: Checkpoint, plan: Plan) -> Any:
    cls = getattr(transformers, plan.class_name)
    try:
        model, info = cls.from_pretrained(checkpoint.path, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportInputError(f"cannot load {plan.class_name}: {reason}") from None
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith(_OPTIONAL_SUFFIXES)]
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        bad = [str(k) for k in (*missing, *mismatched)]
        shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise ExportInputError(f"weights do not fit {plan.class_name}: {shown}")
    return model.eval()


def _feature_extractor(checkpoint: Checkpoint, plan: Plan) -> Any:
    config = checkpoint.read_json("preprocessor_config.json")
    if config is None:
        # SEGUE folders carry no preprocessor; it comes from the speech encoder checkpoint.
        config = WAV2VEC2_BASE_960H_PREPROCESSOR if plan.spec is SEGUE else {}
    kind = config.get("feature_extractor_type", "Wav2Vec2FeatureExtractor")
    if kind != "Wav2Vec2FeatureExtractor":
        raise ExportInputError(
            f"preprocessor_config.json uses {kind}; only Wav2Vec2FeatureExtractor is supported"
        )
    extractor: Any = Wav2Vec2FeatureExtractor  # untyped constructor
    return extractor(**{k: config[k] for k in _FEATURE_KEYS if k in config})

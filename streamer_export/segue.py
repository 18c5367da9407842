"""SEGUE (declare-lab/segue-w2v2-base) rebuilt offline on transformers' Wav2Vec2Model.

The published checkpoints need the original repository's classes and download both the text
teacher and the speech encoder at construction. Export needs only the speech side: a wav2vec 2.0
encoder built from a config dict, mean-pooled over the first n frames (n from the input length by
the conv-stack formula, as ``SegueProcessor.compute_n_tokens`` does), plus the task heads.
Weights come from the checkpoint's ``speech_encoder.*`` and head keys; ``text_encoder.*`` is
ignored.

A student narrower than its text teacher (SEGUE's own encoder is as wide as all-mpnet-base-v2, a
small one is not) maps its pooled state into the teacher's space with one linear layer:
``config.json`` then names its size (``embedding_projection_dim``) and the weights hold
``embedding_projection.{weight,bias}``; the embedding is the projected vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from streamer_export.errors import ExportInputError
from streamer_export.spec import ConvStack

SPEECH_PREFIX = "speech_encoder."
TEXT_PREFIX = "text_encoder."
# Tensors a checkpoint may lack without changing inference (SpecAugment's mask embedding).
_OPTIONAL_KEYS = ("speech_encoder.masked_spec_embed",)
# torch < 2.1 weight_norm names, as in the published pytorch_model.bin.
_RENAMES = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}


class SegueModel(nn.Module):
    """SEGUE's speech encoder; ``forward`` returns the utterance embedding ``[batch, hidden]``."""

    def __init__(
        self, encoder_config: dict[str, Any], *, projection_dim: int | None = None
    ) -> None:
        super().__init__()
        config = Wav2Vec2Config(**encoder_config)
        self.speech_encoder = Wav2Vec2Model(config)
        self.conv = ConvStack(kernels=tuple(config.conv_kernel), strides=tuple(config.conv_stride))
        self.hidden_size = int(config.hidden_size)
        self.embedding_projection = (
            nn.Linear(self.hidden_size, projection_dim) if projection_dim else None
        )
        self.embedding_dim = projection_dim or self.hidden_size

    def n_speech_tokens(self, n_samples: int) -> int:
        """Return the frames SEGUE pools for an unpadded input of ``n_samples`` samples."""
        return self.conv.n_frames(n_samples)

    def embed(
        self, input_values: torch.Tensor, n_speech_tokens: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Mean of the last hidden state over the first ``n_speech_tokens[i]`` frames of row i.

        Without ``n_speech_tokens`` every frame is pooled, which is the same for unpadded input
        (the conv formula gives exactly the frame count) and keeps the ONNX graph free of loops.
        """
        hidden: torch.Tensor = self.speech_encoder(input_values).last_hidden_state
        if n_speech_tokens is None:
            pooled = hidden.mean(dim=1)
        else:
            pooled = torch.stack(
                [h[:n].mean(dim=0) for h, n in zip(hidden, n_speech_tokens, strict=True)]
            )
        if self.embedding_projection is None:
            return pooled
        projected: torch.Tensor = self.embedding_projection(pooled)
        return projected

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return ``(embedding,)`` for normalized ``input_values``."""
        return (self.embed(input_values),)


class SegueForClassification(SegueModel):
    """One linear head per label set on the SEGUE embedding."""

    def __init__(self, encoder_config: dict[str, Any], *, n_classes: int | list[int]) -> None:
        super().__init__(encoder_config)
        self.is_multilabel = isinstance(n_classes, list)
        sizes = n_classes if isinstance(n_classes, list) else [n_classes]
        self.classification_heads = nn.ModuleList(nn.Linear(self.hidden_size, n) for n in sizes)

    def heads(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """Return each head's logits for ``embedding``."""
        return [head(embedding) for head in self.classification_heads]

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return every head's logits ``[batch, n_i]``, then the embedding."""
        embedding = self.embed(input_values)
        return (*self.heads(embedding), embedding)


class SegueForRegression(SegueModel):
    """A linear head to one scalar on the SEGUE embedding."""

    def __init__(self, encoder_config: dict[str, Any]) -> None:
        super().__init__(encoder_config)
        self.regression_head = nn.Sequential(nn.Linear(self.hidden_size, 1))

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        """Return the regression value ``[batch]`` for ``embedding``."""
        value: torch.Tensor = self.regression_head(embedding).squeeze(-1)
        return value

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the value ``[batch]``, then the embedding."""
        embedding = self.embed(input_values)
        return self.head(embedding), embedding


def build_segue(
    class_name: str, encoder_config: dict[str, Any], config: dict[str, Any]
) -> SegueModel:
    """Construct the SEGUE class ``class_name`` (random weights)."""
    projection = config.get("embedding_projection_dim")
    if projection is not None:
        if class_name != "SegueModel" or not isinstance(projection, int) or projection <= 0:
            raise ExportInputError(
                "embedding_projection_dim must be a positive integer, on a SegueModel"
            )
        return SegueModel(encoder_config, projection_dim=projection)
    if class_name == "SegueForClassification":
        n_classes = config["n_classes"]
        return SegueForClassification(encoder_config, n_classes=n_classes)
    if class_name == "SegueForRegression":
        return SegueForRegression(encoder_config)
    return SegueModel(encoder_config)


def load_segue(
    class_name: str,
    encoder_config: dict[str, Any],
    config: dict[str, Any],
    weight_files: Sequence[Path],
) -> SegueModel:
    """Build the SEGUE class ``class_name`` and load its weights from ``weight_files``.

    Raises:
        ExportInputError: a weight file is unreadable, or they lack tensors the model needs.
    """
    model = build_segue(class_name, encoder_config, config)
    kept = {
        _rename(k): v
        for path in weight_files
        for k, v in _read_state_dict(path).items()
        if not k.startswith(TEXT_PREFIX)
    }
    missing, unexpected = model.load_state_dict(kept, strict=False)
    missing = [k for k in missing if k not in _OPTIONAL_KEYS]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise ExportInputError(f"weights lack {len(missing)} {class_name} tensors: {shown}")
    if unexpected:
        shown = ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else "")
        raise ExportInputError(f"weights hold tensors {class_name} does not use: {shown}")
    return model.eval()


def _rename(key: str) -> str:
    for old, new in _RENAMES.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: dict[str, torch.Tensor] = load_file(str(path))
            return state
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExportInputError(f"{path.name}: cannot read weights: {exc}") from None
    if not isinstance(loaded, dict):
        raise ExportInputError(f"{path.name}: expected a state dict")
    return loaded

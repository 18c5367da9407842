"""Per-architecture export declarations and the conv-stack arithmetic behind the manifest timing.

Nothing here imports torch: the CLI plans an export (architecture, task, timing) and rejects bad
input before paying for the heavy imports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streamer_export.errors import ExportInputError

#: The inference-relevant fields of facebook/wav2vec2-base-960h's config.json, SEGUE's speech
#: encoder. Built in so that SEGUE checkpoints load offline; dropout fields are irrelevant in eval.
WAV2VEC2_BASE_960H: dict[str, Any] = {
    "model_type": "wav2vec2",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "conv_dim": [512, 512, 512, 512, 512, 512, 512],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "do_stable_layer_norm": False,
    "mask_time_prob": 0.05,
    "vocab_size": 32,
}
#: Its preprocessor_config.json: per-utterance zero-mean unit-variance normalization at 16 kHz.
WAV2VEC2_BASE_960H_PREPROCESSOR: dict[str, Any] = {
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "do_normalize": True,
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
    "sampling_rate": 16000,
}
SEGUE_SPEECH_ENCODERS: Mapping[str, dict[str, Any]] = {
    "facebook/wav2vec2-base-960h": WAV2VEC2_BASE_960H,
}


@dataclass(frozen=True)
class ConvStack:
    """The feature encoder's 1-D convolutions, which fix frame timing and the shortest input."""

    kernels: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def stride_samples(self) -> int:
        """Input samples per output frame."""
        return math.prod(self.strides)

    def n_frames(self, n_samples: int) -> int:
        """Frames the stack yields for ``n_samples`` inputs (0 when the input is too short)."""
        n = n_samples
        for kernel, stride in zip(self.kernels, self.strides, strict=True):
            if n < kernel:
                return 0
            n = (n - kernel) // stride + 1
        return n

    def n_samples_for(self, n_frames: int) -> int:
        """Return the shortest input that yields ``n_frames`` frames."""
        n = n_frames
        for kernel, stride in zip(reversed(self.kernels), reversed(self.strides), strict=True):
            n = (n - 1) * stride + kernel
        return n


@dataclass(frozen=True)
class ArchSpec:
    """What the exporter supports for one architecture.

    Attributes:
        arch: the manifest's ``arch`` value.
        model_type: the ``model_type`` in a Hugging Face config.json.
        classes: checkpoint class name -> tasks it can export; the first is the default.
        squeezes: the encoder pools frames by ``squeeze_factor`` (SEW-D), so the shortest input
            must yield that many conv frames. SEW-D upsamples back, so outputs stay at conv rate.
    """

    arch: str
    model_type: str
    classes: Mapping[str, tuple[str, ...]]
    squeezes: bool = False


SEWD = ArchSpec(
    arch="sew-d",
    model_type="sew-d",
    classes={
        "SEWDForCTC": ("ctc", "embed"),
        "SEWDForSequenceClassification": ("classify", "embed"),
        "SEWDModel": ("embed",),
    },
    squeezes=True,
)
WAV2VEC2 = ArchSpec(
    arch="wav2vec2",
    model_type="wav2vec2",
    classes={
        "Wav2Vec2ForCTC": ("ctc", "embed"),
        "Wav2Vec2ForSequenceClassification": ("classify", "embed"),
        "Wav2Vec2Model": ("embed",),
    },
)
SEGUE = ArchSpec(
    arch="segue",
    model_type="segue",
    classes={
        "SegueModel": ("embed",),
        "SegueForClassification": ("classify", "embed"),
        "SegueForRegression": ("regress", "embed"),
    },
)
SPECS: tuple[ArchSpec, ...] = (SEWD, WAV2VEC2, SEGUE)
SUPPORTED_CLASSES: tuple[str, ...] = tuple(c for s in SPECS for c in s.classes)


@dataclass(frozen=True)
class Plan:
    """An export decided from config.json alone: architecture, class, task and timing."""

    spec: ArchSpec
    class_name: str
    task: str
    encoder_config: dict[str, Any]
    conv: ConvStack
    min_samples: int

    @property
    def frame_stride_samples(self) -> int:
        """Input samples per output frame."""
        return self.conv.stride_samples


def plan_export(config: Mapping[str, Any], *, task: str = "auto") -> Plan:
    """Decide what to export for a checkpoint's config.json.

    Args:
        config: the parsed config.json.
        task: ``"auto"`` (the checkpoint's own task) or one of the manifest tasks.

    Raises:
        ExportInputError: unsupported architecture, unavailable task, or a malformed config.
    """
    spec, class_name = _detect(config)
    tasks = spec.classes[class_name]
    chosen = tasks[0] if task == "auto" else task
    if chosen not in tasks:
        raise ExportInputError(
            f"task {task!r} is not available for {class_name} (available: {', '.join(tasks)})"
        )
    encoder_config = _encoder_config(spec, config)
    try:
        conv = ConvStack(
            kernels=tuple(int(k) for k in encoder_config["conv_kernel"]),
            strides=tuple(int(s) for s in encoder_config["conv_stride"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportInputError(
            f"config.json has no usable conv_kernel/conv_stride: {exc}"
        ) from None
    if len(conv.kernels) != len(conv.strides) or not conv.kernels:
        raise ExportInputError("config.json conv_kernel and conv_stride differ in length")
    if encoder_config.get("add_adapter"):
        raise ExportInputError("wav2vec 2.0 checkpoints with add_adapter=true are not supported")
    min_frames = int(encoder_config.get("squeeze_factor", 2)) if spec.squeezes else 1
    return Plan(
        spec=spec,
        class_name=class_name,
        task=chosen,
        encoder_config=encoder_config,
        conv=conv,
        min_samples=conv.n_samples_for(min_frames),
    )


def _detect(config: Mapping[str, Any]) -> tuple[ArchSpec, str]:
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        raise ExportInputError("config.json 'architectures' must be a list")
    for name in architectures:
        for spec in SPECS:
            if name in spec.classes:
                return spec, str(name)
    if architectures:
        raise ExportInputError(
            f"unsupported architecture {architectures[0]!r} "
            f"(supported: {', '.join(SUPPORTED_CLASSES)})"
        )
    model_type = config.get("model_type")
    if "speech_encoder_checkpoint" in config:
        model_type = SEGUE.model_type
    for spec in SPECS:
        if model_type == spec.model_type:
            return spec, next(c for c, t in spec.classes.items() if t == ("embed",))
    raise ExportInputError(
        f"unsupported model_type {model_type!r} (supported: {', '.join(SUPPORTED_CLASSES)})"
    )


def _encoder_config(spec: ArchSpec, config: Mapping[str, Any]) -> dict[str, Any]:
    if spec is not SEGUE:
        return dict(config)
    explicit = config.get("speech_encoder_config")
    if isinstance(explicit, dict):
        return explicit
    checkpoint = config.get("speech_encoder_checkpoint", "facebook/wav2vec2-base-960h")
    builtin = SEGUE_SPEECH_ENCODERS.get(str(checkpoint))
    if builtin is None:
        raise ExportInputError(
            f"SEGUE speech encoder {checkpoint!r} is not built in "
            f"(known: {', '.join(SEGUE_SPEECH_ENCODERS)}); add its config as speech_encoder_config"
        )
    return dict(builtin)

"""Tiny random checkpoints in the real Hugging Face on-disk layouts, for export tests.

Configs are small (hidden 32, 2 layers, 32 conv channels) but keep the standard conv
kernel/stride stacks, so min_samples and frame timing are those of the real models.
SEGUE is written as the published declare-lab checkpoints are: a config.json with only the SEGUE
fields (plus ``speech_encoder_config``, so nothing is downloaded) and one pytorch_model.bin with
``speech_encoder.*`` (old ``weight_g``/``weight_v`` weight-norm names), ``text_encoder.*`` and
head tensors.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

#: Character CTC vocabulary: blank "<pad>" is id 0, "|" delimits words.
VOCAB: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>", "|", *string.ascii_uppercase, "'")
TINY: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_conv_pos_embedding_groups": 4,
}
#: wav2vec 2.0's default conv stack (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2), 32 channels.
WAV2VEC2_TINY: dict[str, Any] = {**TINY, "conv_dim": [32] * 7}
#: SEW-D's default 13-layer stack (same total stride 320), 32 channels, squeeze_factor 2.
SEWD_TINY: dict[str, Any] = {**TINY, "conv_dim": [32] * 13, "position_buckets": 64}
SEGUE_ENCODER: dict[str, Any] = {
    "model_type": "wav2vec2",
    **WAV2VEC2_TINY,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
}


def make_sewd_ctc(folder: Path, *, seed: int = 0, config: dict[str, Any] | None = None) -> Path:
    """Write a random SEWDForCTC checkpoint with a character tokenizer (tiny unless ``config``)."""
    from transformers import SEWDConfig, SEWDForCTC

    torch = _seeded(seed)
    with torch.no_grad():
        model = SEWDForCTC(
            SEWDConfig(**(SEWD_TINY if config is None else config), vocab_size=len(VOCAB))
        )
    model.save_pretrained(folder)
    _write_tokenizer(folder)
    _write_preprocessor(folder, do_normalize=True)
    return folder


def make_sewd_classify(
    folder: Path, *, labels: tuple[str, ...] | None = ("yes", "no", "stop"), seed: int = 1
) -> Path:
    """Write a tiny random SEWDForSequenceClassification checkpoint with id2label ``labels``.

    ``labels=None`` leaves the classes unnamed as transformers does: two classes, and a
    config.json without ``id2label``.
    """
    from transformers import SEWDConfig, SEWDForSequenceClassification

    torch = _seeded(seed)
    names: dict[str, Any] = {}
    if labels is not None:
        names = {
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
    config = SEWDConfig(**SEWD_TINY, **names, classifier_proj_size=16)
    with torch.no_grad():
        model = SEWDForSequenceClassification(config)
    model.save_pretrained(folder)
    _write_preprocessor(folder, do_normalize=True)
    return folder


def make_wav2vec2_ctc(folder: Path, *, do_normalize: bool = True, seed: int = 2) -> Path:
    """Write a tiny random Wav2Vec2ForCTC checkpoint with a character tokenizer."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch = _seeded(seed)
    with torch.no_grad():
        model = Wav2Vec2ForCTC(Wav2Vec2Config(**WAV2VEC2_TINY, vocab_size=len(VOCAB)))
    model.save_pretrained(folder)
    _write_tokenizer(folder)
    _write_preprocessor(folder, do_normalize=do_normalize)
    return folder


def make_segue(
    folder: Path,
    n_classes: int | list[int] | None = None,
    *,
    regression: bool = False,
    seed: int = 3,
    base_size: bool = False,
    projection_dim: int | None = None,
) -> Path:
    """Write a tiny random SEGUE checkpoint in the published layout.

    Args:
        folder: where to write config.json and pytorch_model.bin.
        n_classes: classes per head for SegueForClassification (a list: multi-label);
            None with ``regression=False`` gives a plain SegueModel.
        regression: write a SegueForRegression.
        seed: torch seed.
        base_size: use the real wav2vec2-base-960h encoder shape (94M parameters) and, as the
            published config.json does, leave it to the exporter's built-in copy.
        projection_dim: a plain SegueModel whose embedding is projected to this size (a student
            narrower than its text teacher).
    """
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from streamer_export.spec import WAV2VEC2_BASE_960H

    encoder_config = WAV2VEC2_BASE_960H if base_size else SEGUE_ENCODER
    torch = _seeded(seed)
    with torch.no_grad():
        encoder = Wav2Vec2Model(Wav2Vec2Config(**encoder_config))
    state = {f"speech_encoder.{_old_name(k)}": v for k, v in encoder.state_dict().items()}
    # A sliver of the MPNet text teacher: present in real checkpoints, ignored by export.
    state["text_encoder.embeddings.word_embeddings.weight"] = torch.randn(30, 8)
    state["text_encoder.encoder.layer.0.attention.attn.q.weight"] = torch.randn(8, 8)
    hidden = encoder_config["hidden_size"]
    architecture = "SegueModel"
    if regression:
        architecture = "SegueForRegression"
        state["regression_head.0.weight"] = torch.randn(1, hidden) / hidden**0.5
        state["regression_head.0.bias"] = torch.randn(1)
    elif n_classes is not None:
        architecture = "SegueForClassification"
        sizes = n_classes if isinstance(n_classes, list) else [n_classes]
        for i, n in enumerate(sizes):
            state[f"classification_heads.{i}.weight"] = torch.randn(n, hidden) / hidden**0.5
            state[f"classification_heads.{i}.bias"] = torch.randn(n)
    config: dict[str, Any] = {
        "architectures": [architecture],
        "text_encoder_checkpoint": "sentence-transformers/all-mpnet-base-v2",
        "speech_encoder_checkpoint": "facebook/wav2vec2-base-960h",
        "train_backbone": False,
        "n_classes": n_classes if n_classes is not None else 2,
        "torch_dtype": "float32",
        "transformers_version": "4.26.1",
    }
    if not base_size:
        config["speech_encoder_config"] = SEGUE_ENCODER
    if projection_dim is not None:
        config["embedding_projection_dim"] = projection_dim
        state["embedding_projection.weight"] = torch.randn(projection_dim, hidden) / hidden**0.5
        state["embedding_projection.bias"] = torch.randn(projection_dim)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def _seeded(seed: int) -> Any:
    import torch
    from transformers.utils import logging

    logging.disable_progress_bar()  # save_pretrained's shard bar

    torch.manual_seed(seed)
    return torch


def _old_name(key: str) -> str:
    return key.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v"
    )


def _write_tokenizer(folder: Path) -> None:
    vocab = {token: i for i, token in enumerate(VOCAB)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = {
        "tokenizer_class": "Wav2Vec2CTCTokenizer",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "word_delimiter_token": "|",
        "do_lower_case": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer), encoding="utf-8")


def _write_preprocessor(folder: Path, *, do_normalize: bool) -> None:
    preprocessor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_side": "right",
        "padding_value": 0.0,
        "do_normalize": do_normalize,
        "return_attention_mask": False,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor), encoding="utf-8")


#: Words of the tiny BERT's vocabulary: enough for home-assistant commands.
BERT_WORDS: tuple[str, ...] = (
    "turn",
    "on",
    "off",
    "the",
    "lights",
    "music",
    "kitchen",
    "play",
    "some",
    "quiet",
    "jazz",
    "set",
    "a",
    "timer",
    "for",
    "ten",
    "minutes",
    "stop",
    "please",
    "make",
    "it",
    "warmer",
    "in",
    "here",
    "what",
    "is",
    "weather",
    "like",
    "tomorrow",
    "morning",
    "bedroom",
    "living",
    "room",
)
#: WordPiece vocabulary: specials first ([PAD] is 0), letters and their continuations, words.
BERT_VOCAB: tuple[str, ...] = (
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *string.ascii_lowercase,
    *(f"##{c}" for c in string.ascii_lowercase),
    *dict.fromkeys(BERT_WORDS),
)
#: Small enough that an input the runtime forgot to truncate would fail in the graph.
BERT_MAX_POSITIONS = 64


def make_tiny_bert(folder: Path, *, pooling: str = "mean_tokens") -> Path:
    """Write a random BertModel (hidden 32, 2 layers) in the sentence-transformers layout."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel
    from transformers.utils import logging

    quiet: Any = logging  # untyped module functions
    quiet.disable_progress_bar()  # save_pretrained's shard bar
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(BERT_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=BERT_MAX_POSITIONS,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    vocab = {t: i for i, t in enumerate(BERT_VOCAB)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    # As sentence-transformers ships it: fixed padding to 128, past the model's 64 positions.
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=128)
    tokenizer.enable_truncation(max_length=128)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "1_Pooling").mkdir()
    modes = {f"pooling_mode_{m}": m == pooling for m in ("cls_token", "mean_tokens", "max_tokens")}
    pooling_config = {"word_embedding_dimension": 32, **modes}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    return folder

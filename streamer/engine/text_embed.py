"""The text sentence embedder: intent example sentences -> unit vectors, without torch.

Sentence-embedding intents compare what the speech model puts out with embeddings of the users'
example sentences, which the daemon computes once at start. This module runs the text side: a
bundle folder written by ``bin/export_text_embedder`` holding

- ``model.onnx``: inputs ``input_ids`` and ``attention_mask`` (int64 ``[batch, tokens]``),
  output ``embedding`` (float32 ``[batch, dim]``), already mean-pooled over the unmasked tokens
  and L2-normalised inside the graph;
- ``tokenizer.json``: the Hugging Face ``tokenizers`` file of the source checkpoint;
- ``text_embedder.json``: the schema below. It is deliberately not ``manifest.json``: the daemon
  discovers speech bundles by that name, and this folder is not one.

Schema (``format_version`` 1), defined here once; the exporter builds a :class:`TextEmbedderSpec`
and calls :func:`write_spec`:

- ``kind``: ``"text-embedder"``; ``arch``: ``"bert"``; ``pooling``: ``"mean"``;
  ``normalized``: ``true``.
- ``embedding_dim``: size of ``embedding``; ``max_tokens``: longest input, special tokens
  included (longer texts are truncated); ``vocab_size``: rows of the token embedding table.
- ``quantization``: ``"none"``, ``"int8"`` (dynamic: int8 MatMul weights and activations) or
  ``"int8-weights"`` (int8 weights dequantized in the graph, float activations); ``opset``: the
  graph's ONNX opset.
- ``source``: ``{"path": str, "weights": file name, "sha256": hex digest of that file}``.
- ``parity``: ``{"compared": str, "sentences": int, "max_abs_diff": float, "cosine_min": float,
  "atol": float}``: the shipped graph against PyTorch at export time.

The tokenizer's own padding settings are switched off at load: sentence-transformers files pad
every input to a fixed 128 tokens, which would make a three-word intent example cost as much as
a paragraph. Texts are padded per batch instead, after sorting them by length.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from streamer.config import EngineConfig
from streamer.engine.encoder import ProviderChoice, open_session
from streamer.errors import ConfigError, ModelError, StreamerError
from streamer.manifest import MODEL_NAME

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
KIND: Final = "text-embedder"
SPEC_NAME: Final = "text_embedder.json"
TOKENIZER_NAME: Final = "tokenizer.json"
INPUT_NAMES: Final = ("input_ids", "attention_mask")
OUTPUT_NAME: Final = "embedding"
ARCHS: Final = ("bert",)
POOLINGS: Final = ("mean",)
QUANTIZATIONS: Final = ("none", "int8", "int8-weights")
DEFAULT_BATCH: Final = 32
"""Texts per ONNX run; intent examples are short, so 32 padded rows stay small."""
MIN_TOKENS: Final = 3
"""``[CLS]``, one word piece and ``[SEP]``: the shortest useful ``max_tokens``."""


class TextEmbedderError(StreamerError):
    """A text embedder bundle cannot be loaded, or a text cannot be embedded."""


@dataclass(frozen=True)
class TextSource:
    """Where the weights came from: the checkpoint folder and its weight file's sha256."""

    path: str
    weights: str
    sha256: str


@dataclass(frozen=True)
class TextParity:
    """How close the shipped graph came to PyTorch at export time."""

    compared: str
    sentences: int
    max_abs_diff: float
    cosine_min: float
    atol: float


@dataclass(frozen=True)
class TextEmbedderSpec:
    """The contents of ``text_embedder.json`` (see the module docstring for each field)."""

    arch: str
    embedding_dim: int
    max_tokens: int
    vocab_size: int
    quantization: str
    opset: int
    source: TextSource
    parity: TextParity | None = None
    pooling: str = "mean"
    normalized: bool = True
    kind: str = KIND
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """Return the spec as indented JSON text."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextEmbedderSpec:
        """Validate parsed JSON and build the spec.

        Raises:
            ValueError: the first field that is missing, of the wrong type or out of range.
        """
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version must be {FORMAT_VERSION}")
        if data.get("kind") != KIND:
            raise ValueError(f"kind is {data.get('kind')!r}, expected {KIND!r}")
        _choice(data, "arch", ARCHS)
        _choice(data, "pooling", POOLINGS)
        _choice(data, "quantization", QUANTIZATIONS)
        if data.get("normalized") is not True:
            raise ValueError("normalized must be true")
        parity = data.get("parity")
        return cls(
            arch=data["arch"],
            embedding_dim=_positive(data, "embedding_dim"),
            max_tokens=_positive(data, "max_tokens", minimum=MIN_TOKENS),
            vocab_size=_positive(data, "vocab_size"),
            quantization=data["quantization"],
            opset=_positive(data, "opset"),
            source=_source(data.get("source")),
            parity=None if parity is None else _parity(parity),
        )


def read_spec(folder: Path) -> TextEmbedderSpec:
    """Read and validate ``folder/text_embedder.json``.

    Raises:
        TextEmbedderError: the file is missing, not JSON, or does not fit the schema.
    """
    path = folder / SPEC_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TextEmbedderError(f"{path}: missing (not a text embedder bundle?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TextEmbedderError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TextEmbedderError(f"{path}: expected a JSON object")
    try:
        return TextEmbedderSpec.from_dict(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise TextEmbedderError(f"{path}: {exc}") from None


def write_spec(spec: TextEmbedderSpec, folder: Path) -> Path:
    """Write ``text_embedder.json`` into ``folder`` and return its path."""
    path = folder / SPEC_NAME
    path.write_text(spec.to_json(), encoding="utf-8")
    return path


class TextEmbedder:
    """A loaded text embedder bundle: tokenizer plus one onnxruntime session.

    ``embed`` may be called from several threads at once: the tokenizer is only read after
    load, and ORT sessions are safe for concurrent ``Run`` calls.
    """

    def __init__(
        self,
        folder: Path,
        spec: TextEmbedderSpec,
        tokenizer: Tokenizer,
        session: Any,
        choice: ProviderChoice,
    ) -> None:
        self.folder = folder
        self.spec = spec
        self.provider = choice
        self._tokenizer = tokenizer
        self._session = session
        self._pad_id = _pad_id(tokenizer)

    @property
    def dim(self) -> int:
        """Size of one embedding."""
        return self.spec.embedding_dim

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenize ``texts`` as :meth:`embed` does: special tokens added, truncated, unpadded.

        Raises:
            TextEmbedderError: ``texts`` is one string, or a text is empty or blank.
        """
        if isinstance(texts, str):
            raise TextEmbedderError("texts must be a sequence of strings, not one string")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise TextEmbedderError(f"text {i} is empty; every text needs at least one word")
        return [list(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str], *, batch: int = DEFAULT_BATCH) -> npt.NDArray[np.float32]:
        """Embed ``texts``; row ``i`` is the unit-length embedding of ``texts[i]``.

        Args:
            texts: the sentences; none may be empty or blank.
            batch: texts per ONNX run at most (similar lengths are run together).

        Returns:
            float32 ``[len(texts), dim]``; ``[0, dim]`` for no texts.

        Raises:
            TextEmbedderError: a bad text or batch size, or onnxruntime failed.
        """
        if batch < 1:
            raise TextEmbedderError(f"batch must be >= 1, got {batch}")
        rows = self.token_ids(texts)
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for start in range(0, len(order), batch):
            chosen = order[start : start + batch]
            ids, mask = pad_batch([rows[i] for i in chosen], pad_id=self._pad_id)
            out[chosen] = self._run(ids, mask)
        return out

    def _run(
        self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        feed = dict(zip(INPUT_NAMES, (ids, mask), strict=True))
        try:
            (values,) = self._session.run([OUTPUT_NAME], feed)
        except Exception as exc:  # ORT errors carry no stable type; one line is enough
            reason = _first_line(exc)
            raise TextEmbedderError(f"{self.folder}: inference failed: {reason}") from None
        out = np.asarray(values, dtype=np.float32)
        if out.shape != (ids.shape[0], self.dim):
            raise TextEmbedderError(
                f"{self.folder / MODEL_NAME}: output is {list(out.shape)} for {ids.shape[0]} "
                f"texts, but {SPEC_NAME} says embedding_dim {self.dim}"
            )
        return out


def pad_batch(
    rows: Sequence[Sequence[int]], *, pad_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-pad token id rows to the longest; return ``(input_ids, attention_mask)``."""
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def load_text_embedder(folder: Path, *, threads: int = 1, provider: str = "auto") -> TextEmbedder:
    """Load the text embedder bundle in ``folder`` and check its graph against the spec.

    Args:
        folder: a bundle written by ``bin/export_text_embedder``.
        threads: onnxruntime threads inside one run; 0 means one per CPU core.
        provider: ``"auto"`` (CUDA when it really loads, else CPU), ``"cuda"`` or ``"cpu"``.

    Raises:
        TextEmbedderError: a missing or corrupt file, a bad option, or a graph that does not
            match ``text_embedder.json``.
    """
    if not folder.is_dir():
        raise TextEmbedderError(f"text embedder folder {folder} does not exist")
    try:
        config = EngineConfig(provider=provider, intra_op_threads=threads)
    except ConfigError as exc:
        raise TextEmbedderError(f"text embedder {folder}: {exc}") from None
    spec = read_spec(folder)
    tokenizer = _load_tokenizer(folder / TOKENIZER_NAME, max_tokens=spec.max_tokens)
    if tokenizer.get_vocab_size(with_added_tokens=True) > spec.vocab_size:
        raise TextEmbedderError(
            f"{folder / TOKENIZER_NAME}: {tokenizer.get_vocab_size()} tokens but the model "
            f"embeds only {spec.vocab_size}"
        )
    model_path = folder / MODEL_NAME
    if not model_path.is_file():
        raise TextEmbedderError(f"{model_path}: missing")
    session, choice = _open_session(model_path, config)
    embedder = TextEmbedder(folder, spec, tokenizer, session, choice)
    _check_graph(embedder, session, model_path)
    log.info(
        "text embedder %s (%s, %d-d, %s) runs on %s: %s",
        folder,
        spec.arch,
        spec.embedding_dim,
        spec.quantization,
        choice.provider,
        choice.reason,
    )
    return embedder


def _open_session(model_path: Path, config: EngineConfig) -> tuple[Any, ProviderChoice]:
    """Open the graph on the provider the speech engine would choose; return it and the choice."""
    try:
        return open_session(model_path, config)
    except ModelError as exc:
        raise TextEmbedderError(str(exc)) from None


def _load_tokenizer(path: Path, *, max_tokens: int) -> Tokenizer:
    if not path.is_file():
        raise TextEmbedderError(f"{path}: missing")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for unreadable files
        raise TextEmbedderError(f"{path}: cannot load: {_first_line(exc)}") from None
    tokenizer.no_padding()  # padded per batch instead; see the module docstring
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


def _check_graph(embedder: TextEmbedder, session: Any, model_path: Path) -> None:
    """Check the graph's input and output names, and its output size on one probe text."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if sorted(inputs) != sorted(INPUT_NAMES) or OUTPUT_NAME not in outputs:
        raise TextEmbedderError(
            f"{model_path}: graph takes {inputs} and gives {outputs}; expected inputs "
            f"{list(INPUT_NAMES)} and output {OUTPUT_NAME!r}"
        )
    embedder.embed(["probe"])  # raises if the output size is not embedding_dim


def _pad_id(tokenizer: Tokenizer) -> int:
    """The pad id: the file's own padding setting, else ``[PAD]``, else 0.

    Which id pads does not change the result (the mask hides those positions), but it must be
    a row of the embedding table.
    """
    padding = tokenizer.padding
    if padding is not None and isinstance(padding.get("pad_id"), int):
        return int(padding["pad_id"])
    pad = tokenizer.token_to_id("[PAD]")
    return 0 if pad is None else pad


def _choice(data: dict[str, Any], name: str, allowed: Sequence[str]) -> None:
    if data.get(name) not in allowed:
        raise ValueError(f"{name} is {data.get(name)!r}, expected one of {list(allowed)}")


def _positive(data: dict[str, Any], name: str, *, minimum: int = 1) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _source(value: object) -> TextSource:
    if not isinstance(value, dict) or not all(
        isinstance(value.get(k), str) for k in ("path", "weights", "sha256")
    ):
        raise ValueError('source must be {"path": str, "weights": str, "sha256": str}')
    return TextSource(path=value["path"], weights=value["weights"], sha256=value["sha256"])


def _parity(value: object) -> TextParity:
    if not isinstance(value, dict):
        raise TypeError("parity must be an object or null")
    numbers: list[Any] = [value.get(k) for k in ("max_abs_diff", "cosine_min", "atol")]
    if not all(isinstance(x, int | float) and math.isfinite(x) for x in numbers):
        raise ValueError("parity max_abs_diff, cosine_min and atol must be finite numbers")
    if not isinstance(value.get("compared"), str) or not isinstance(value.get("sentences"), int):
        raise TypeError("parity needs compared (str) and sentences (int)")
    return TextParity(value["compared"], value["sentences"], *(float(x) for x in numbers))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

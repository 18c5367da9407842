"""The bundle manifest: the contract between the exporter (writes it) and the runtime (reads it).

A bundle is a folder holding ``model.onnx`` and ``manifest.json``. The exporter builds a
:class:`Manifest` and calls :meth:`Manifest.write`; the daemon reads the file with
:func:`streamer.engine.bundles.load_manifest`, which hands the parsed JSON to
:meth:`Manifest.from_dict`: every field is validated here, and a bad one raises
:class:`~streamer.errors.ManifestError` with a one-line reason.

Schema (``format_version`` 1), see also README "Bundle manifest":

- ``arch``: ``"sew-d"``, ``"wav2vec2"`` or ``"segue"``.
- ``task``: ``"ctc"``, ``"classify"``, ``"regress"`` or ``"embed"``.
- ``sample_rate``: Hz of ``input_values`` (16000).
- ``inputs`` / ``outputs``: tensors in graph order, each ``{name, dtype, shape}``; symbolic dims are
  strings (``"batch"``, ``"samples"``, ``"frames"``), fixed dims integers. ``inputs[0]`` is always
  ``input_values`` float32 ``[batch, samples]``, raw mono audio in [-1, 1].
- ``min_samples``: the shortest input the graph accepts.
- ``frame_stride_samples``: input samples per output frame (CTC timing).
- ``vocab``, ``blank_id``, ``word_delimiter``: ctc only.
- ``lm``: ctc only, optional: a word n-gram language model shipped in the bundle for the CTC
  beam search, ``{"file": name in the bundle folder (ARPA), "alpha": LM weight, "beta": word
  insertion bonus, "unk_score_offset": score of a word the LM does not know}``; ``null`` or
  absent when there is none (greedy decoding).
- ``grammars``: ctc only, optional: word lists the transcript is held to when a classify bundle
  served beside this one gives the utterance an intent, ``[{"intent": label, "words": [word,
  ...], "word_penalty": log score subtracted per word}]``. An utterance whose intent (not
  abstained) has a grammar is decoded as any sequence of its words (:mod:`streamer.wordloop`)
  instead of by the free search. Absent or empty: no grammars.
- ``labels``: classify only; a list of label names, or a list of such lists (multi-label: one
  per output, in output order).
- ``embedding_dim``: size of the ``embedding`` output when the graph has one (embed task, SEGUE).
- ``opset``, ``quantization`` (``null``, ``"int8"`` or ``"fp16"``).
- ``source``: ``{"path": str, "sha256": {file name: hex digest}}``.
- ``parity``: ``{"compared": str, "lengths": [int], "batch_sizes": [int], "max_abs_diff": float,
  "atol": float}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamer.errors import ManifestError
from streamer.wordloop import unspellable

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"

ARCHS: tuple[str, ...] = ("sew-d", "wav2vec2", "segue")
TASKS: tuple[str, ...] = ("ctc", "classify", "regress", "embed")
QUANTIZATIONS: tuple[str | None, ...] = (None, "int8", "fp16")
DTYPES: tuple[str, ...] = ("float32", "float16", "int64", "int32")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and shape (str = symbolic dim)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Parity:
    """What the exporter compared between ONNX Runtime and PyTorch, and how close they were."""

    compared: str
    lengths: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    atol: float


@dataclass(frozen=True)
class Source:
    """Where the weights came from: a local path or hub id, and sha256 per weight file."""

    path: str
    sha256: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LanguageModel:
    """A bundle's word n-gram LM for CTC beam search and the fusion weights tuned with it."""

    file: str
    alpha: float
    beta: float
    unk_score_offset: float = -10.0


@dataclass(frozen=True)
class IntentGrammar:
    """The words an utterance with ``intent`` may contain (a word loop over them)."""

    intent: str
    words: tuple[str, ...]
    word_penalty: float = 0.0


@dataclass(frozen=True)
class Manifest:
    """A validated bundle manifest; see the module docstring for each field's meaning."""

    arch: str
    task: str
    sample_rate: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    min_samples: int
    frame_stride_samples: int
    opset: int
    source: Source
    parity: Parity | None
    quantization: str | None = None
    vocab: tuple[str, ...] | None = None
    blank_id: int | None = None
    word_delimiter: str | None = None
    lm: LanguageModel | None = None
    grammars: tuple[IntentGrammar, ...] = ()
    labels: tuple[str, ...] | tuple[tuple[str, ...], ...] | None = None
    embedding_dim: int | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def label_sets(self) -> tuple[tuple[str, ...], ...]:
        """Labels as a list of label sets (one per classification output), even if single."""
        if not self.labels:
            return ()
        sets: list[tuple[str, ...]] = []
        flat: list[str] = []
        for item in self.labels:
            if isinstance(item, str):
                flat.append(item)
            else:
                sets.append(item)
        return (tuple(flat),) if flat else tuple(sets)

    def output(self, name: str) -> TensorSpec | None:
        """Return the output spec called ``name``, or None."""
        return next((o for o in self.outputs if o.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict, keys in schema order."""
        d = asdict(self)
        d = {"format_version": d.pop("format_version"), **d}
        for key in ("inputs", "outputs"):
            d[key] = [{**t, "shape": list(t["shape"])} for t in d[key]]
        d["grammars"] = [{**g, "words": list(g["words"])} for g in d["grammars"]]
        return d

    def to_json(self) -> str:
        """The text of ``manifest.json`` (:func:`streamer.engine.bundles.write_manifest`)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: object) -> Manifest:
        """Build a Manifest from parsed JSON.

        Raises:
            ManifestError: a field is missing, of the wrong type, or inconsistent.
        """
        if not isinstance(d, dict):
            raise ManifestError("manifest must be a JSON object")
        try:
            version = d.get("format_version")
            if version != FORMAT_VERSION:
                raise ManifestError(
                    f"unsupported format_version {version!r} (this streamer reads {FORMAT_VERSION})"
                )
            labels = d.get("labels")
            if labels is not None:
                labels = tuple(
                    tuple(str(x) for x in s) if isinstance(s, list) else str(s) for s in labels
                )
            parity = d.get("parity")
            vocab = d.get("vocab")
            lm = d.get("lm")
            grammars = d.get("grammars") or []
            if not isinstance(grammars, list):
                raise ManifestError("grammars must be a list")
            return cls(
                format_version=version,
                arch=str(d["arch"]),
                task=str(d["task"]),
                sample_rate=_int(d["sample_rate"], "sample_rate"),
                inputs=tuple(_tensor(t) for t in d["inputs"]),
                outputs=tuple(_tensor(t) for t in d["outputs"]),
                min_samples=_int(d["min_samples"], "min_samples"),
                frame_stride_samples=_int(d["frame_stride_samples"], "frame_stride_samples"),
                opset=_int(d["opset"], "opset"),
                quantization=d.get("quantization"),
                vocab=tuple(str(v) for v in vocab) if vocab is not None else None,
                blank_id=d.get("blank_id"),
                word_delimiter=d.get("word_delimiter"),
                lm=None
                if lm is None
                else LanguageModel(
                    file=str(lm["file"]),
                    alpha=float(lm["alpha"]),
                    beta=float(lm["beta"]),
                    unk_score_offset=float(lm.get("unk_score_offset", -10.0)),
                ),
                grammars=tuple(
                    IntentGrammar(
                        intent=str(g["intent"]),
                        words=tuple(str(w) for w in g["words"]),
                        word_penalty=float(g.get("word_penalty", 0.0)),
                    )
                    for g in grammars
                ),
                labels=labels,
                embedding_dim=d.get("embedding_dim"),
                source=Source(path=str(d["source"]["path"]), sha256=dict(d["source"]["sha256"])),
                parity=None
                if parity is None
                else Parity(
                    compared=str(parity["compared"]),
                    lengths=tuple(int(x) for x in parity["lengths"]),
                    batch_sizes=tuple(int(x) for x in parity["batch_sizes"]),
                    max_abs_diff=float(parity["max_abs_diff"]),
                    atol=float(parity["atol"]),
                ),
            )
        except KeyError as exc:
            raise ManifestError(f"manifest lacks required field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"manifest field has the wrong type: {exc}") from None


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"{name} must be an integer, got {value!r}")
    return value


def _tensor(t: object) -> TensorSpec:
    if not isinstance(t, dict):
        raise ManifestError(f"tensor spec must be an object, got {t!r}")
    shape = tuple(s if isinstance(s, str) else _int(s, "shape dim") for s in t["shape"])
    return TensorSpec(name=str(t["name"]), dtype=str(t["dtype"]), shape=shape)


def _validate(m: Manifest) -> None:
    if m.arch not in ARCHS:
        raise ManifestError(f"unknown arch {m.arch!r} (known: {', '.join(ARCHS)})")
    if m.task not in TASKS:
        raise ManifestError(f"unknown task {m.task!r} (known: {', '.join(TASKS)})")
    if m.sample_rate <= 0:
        raise ManifestError("sample_rate must be positive")
    if m.min_samples <= 0 or m.frame_stride_samples <= 0:
        raise ManifestError("min_samples and frame_stride_samples must be positive")
    if m.quantization not in QUANTIZATIONS:
        raise ManifestError(f"unknown quantization {m.quantization!r}")
    if not m.inputs or m.inputs[0].name != "input_values":
        raise ManifestError("the first input must be 'input_values'")
    first = m.inputs[0]
    if first.dtype != "float32" or len(first.shape) != 2:
        raise ManifestError("'input_values' must be float32 [batch, samples]")
    if not m.outputs:
        raise ManifestError("a bundle needs at least one output")
    for t in (*m.inputs, *m.outputs):
        if t.dtype not in DTYPES:
            raise ManifestError(f"tensor {t.name!r} has unknown dtype {t.dtype!r}")
    if m.task == "ctc":
        if not m.vocab or m.blank_id is None:
            raise ManifestError("a ctc bundle needs vocab and blank_id")
        if not 0 <= m.blank_id < len(m.vocab):
            raise ManifestError(f"blank_id {m.blank_id} is outside the vocab")
    if m.lm is not None:
        if m.task != "ctc":
            raise ManifestError(f"only a ctc bundle can carry an lm, not a {m.task} bundle")
        name = m.lm.file
        if not name or name != Path(name).name or name in (".", ".."):
            raise ManifestError(f"lm.file must be a file name inside the bundle, got {name!r}")
        if not all(math.isfinite(x) for x in (m.lm.alpha, m.lm.beta, m.lm.unk_score_offset)):
            raise ManifestError("lm.alpha, lm.beta and lm.unk_score_offset must be finite")
        if m.lm.alpha < 0:
            raise ManifestError(f"lm.alpha must be >= 0, got {m.lm.alpha}")
    if m.grammars:
        _validate_grammars(m)
    if m.task == "classify":
        if not m.labels:
            raise ManifestError("a classify bundle needs labels")
        if not isinstance(m.labels[0], str) and len(m.labels) > len(m.outputs):
            raise ManifestError("a multi-label bundle needs one output per label set")
    if m.embedding_dim is not None and m.embedding_dim <= 0:
        raise ManifestError("embedding_dim must be positive")


def _validate_grammars(m: Manifest) -> None:
    if m.task != "ctc":
        raise ManifestError(f"only a ctc bundle can carry grammars, not a {m.task} bundle")
    if not m.word_delimiter or m.vocab is None or m.word_delimiter not in m.vocab:
        raise ManifestError("grammars need a word_delimiter that is in the vocab")
    seen: set[str] = set()
    for g in m.grammars:
        if not g.intent or g.intent in seen:
            raise ManifestError(f"grammar intent {g.intent!r} is empty or repeated")
        seen.add(g.intent)
        if not g.words:
            raise ManifestError(f"the grammar of {g.intent!r} has no words")
        for word in g.words:
            missing = unspellable(word, m.vocab)
            if not word or missing:
                raise ManifestError(
                    f"grammar word {word!r} of {g.intent!r} cannot be spelled with the vocab"
                    + (f" (no {', '.join(map(repr, missing))})" if missing else "")
                )
        if not math.isfinite(g.word_penalty):
            raise ManifestError(f"the word_penalty of grammar {g.intent!r} must be finite")

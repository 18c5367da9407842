"""``bin/export_text_embedder``: a BERT sentence embedder folder -> a text embedder bundle.

The daemon embeds intent example sentences at start without torch, so the whole sentence
embedding (BERT, mean pooling over the unmasked tokens, L2 normalisation) goes into one ONNX
graph; the runtime only tokenizes (:mod:`streamer.engine.text_embed`, which also defines the
``text_embedder.json`` schema written here).

Parity runs through the runtime class itself: the bundle is loaded with
:func:`~streamer.engine.text_embed.load_text_embedder`, which pads texts of different lengths
into one batch, and compared with PyTorch run on each sentence alone, unpadded. The float32
graph must agree within ``--atol``; a quantized graph's distance is reported, not gated.

Exit codes: 0 exported; 1 parity or another export failure; 2 bad input. Failures print one line
on stderr, ``export_text_embedder: error: <reason>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from streamer.engine.text_embed import (
    INPUT_NAMES,
    MIN_TOKENS,
    OUTPUT_NAME,
    QUANTIZATIONS,
    SPEC_NAME,
    TOKENIZER_NAME,
    TextEmbedder,
    TextEmbedderSpec,
    TextParity,
    TextSource,
    load_text_embedder,
    write_spec,
)
from streamer.errors import StreamerError
from streamer.manifest import MODEL_NAME
from streamer_export.checkpoint import Checkpoint, open_checkpoint
from streamer_export.errors import ExportInputError, ParityError
from streamer_export.exporter import (
    DEFAULT_OPSET,
    OPSETS,
    _compress,
    _quiet_libraries,
    _staging,
)
from streamer_export.progress import Progress
from streamer_export.quantize import quantize_weights_int8

PROG = "export_text_embedder"
DEFAULT_MAX_TOKENS = 256
"""sentence-transformers' ``max_seq_length`` for the MiniLM family; longer inputs were never
trained on."""
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
POOLING_CONFIG = "1_Pooling/config.json"
MODE_PREFIX = "pooling_mode_"
#: sentence-transformers modules the graph reproduces; anything else (Dense, ...) is refused.
ST_MODULES = frozenset(
    f"sentence_transformers.models.{name}" for name in ("Transformer", "Pooling", "Normalize")
)
#: Different lengths in one padded batch; the last is truncated at ``max_tokens``.
PARITY_SENTENCES = (
    "lights on",
    "turn off the music in the kitchen",
    "What's the weather like in Paris tomorrow morning?",
    "set a timer for ten minutes",
    "Could you please make the living room a little warmer, it is cold in here.",
    "stop",
    " ".join(["play some quiet jazz in the bedroom"] * 40),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Report a usage error in the one-line format and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


@dataclass(frozen=True)
class TextExportOptions:
    """What to export and how; mirrors the command line."""

    source: Path
    out: Path
    quantization: str = "none"
    max_tokens: int | None = None
    opset: int = DEFAULT_OPSET
    atol: float = 1e-4
    force: bool = False


@dataclass(frozen=True)
class _Prepared:
    checkpoint: Checkpoint
    weights: Path
    max_tokens: int
    vocab_size: int


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = _Parser(
        prog=PROG,
        description="Export a BERT sentence embedder (a sentence-transformers or Hugging Face "
        "folder) to an ONNX bundle (model.onnx + tokenizer.json + text_embedder.json) that "
        "mean-pools and L2-normalises inside the graph, and check it against PyTorch.",
        epilog="Exit codes: 0 ok, 1 parity or export failure, 2 bad input.",
    )
    parser.add_argument("source", type=Path, metavar="SOURCE", help="checkpoint folder")
    parser.add_argument("out", type=Path, metavar="OUT", help="bundle folder to write")
    parser.add_argument(
        "--quantize",
        choices=("int8", "int8-weights"),
        help="int8: dynamic, int8 MatMul weights and activations; int8-weights: int8 MatMul "
        "weights and embedding tables, float32 activations (accurate; see quantize.py)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        help=f"longest input incl. special tokens (default: {DEFAULT_MAX_TOKENS}, or the "
        "model's max_position_embeddings if smaller)",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (14..20)")
    parser.add_argument(
        "--atol", type=float, default=1e-4, help="max abs diff vs PyTorch (fp32 graph)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing bundle at OUT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the exporter; return the exit code."""
    args = build_parser().parse_args(argv)
    start = time.monotonic()
    options = TextExportOptions(
        source=args.source,
        out=args.out,
        quantization=args.quantize or "none",
        max_tokens=args.max_tokens,
        opset=args.opset,
        atol=args.atol,
        force=args.force,
    )
    try:
        spec = export_text_embedder(options, progress=Progress(prog=PROG))
    except ExportInputError as exc:
        return _fail(exc, 2)
    except StreamerError as exc:
        return _fail(exc, 1)
    size_mb = (args.out / MODEL_NAME).stat().st_size / 1e6
    parity = spec.parity
    assert parity is not None  # set by export_text_embedder
    print(
        f"{args.out}: {spec.arch} text embedder, {spec.embedding_dim}-d, max {spec.max_tokens} "
        f"tokens, {MODEL_NAME} {size_mb:.1f} MB ({spec.quantization}), parity max abs diff "
        f"{parity.max_abs_diff:.2g}, cosine min {parity.cosine_min:.6f}, "
        f"{time.monotonic() - start:.1f} s"
    )
    return 0


def export_text_embedder(options: TextExportOptions, *, progress: Progress) -> TextEmbedderSpec:
    """Export ``options.source`` into the bundle folder ``options.out``; return its spec.

    Raises:
        ExportInputError: bad source, flag or output folder (nothing was written).
        ParityError: the float32 graph disagrees with PyTorch beyond ``options.atol``.
    """
    prepared = prepare(options)
    with _staging(options.out, force=options.force) as staging:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch/transformers chatter; parity is the judge
            spec = _build(prepared, options, staging, progress=progress)
        write_spec(spec, staging)
    return spec


def prepare(options: TextExportOptions) -> _Prepared:
    """Validate everything that needs no torch: flags, source folder, pooling, output folder.

    Raises:
        ExportInputError: the first problem found.
    """
    if options.opset not in OPSETS:
        raise ExportInputError(
            f"--opset {options.opset} unsupported (use {OPSETS[0]}..{OPSETS[-1]})"
        )
    if options.quantization not in QUANTIZATIONS:
        raise ExportInputError(f"quantization {options.quantization!r} unknown: {QUANTIZATIONS}")
    if not options.atol >= 0:
        raise ExportInputError(f"--atol must be >= 0, got {options.atol}")
    if not options.source.is_dir():
        raise ExportInputError(f"{options.source}: no such folder")
    checkpoint = open_checkpoint(str(options.source))
    config = checkpoint.config
    if config.get("model_type") != "bert":
        raise ExportInputError(
            f"{checkpoint.path}/config.json: model_type is {config.get('model_type')!r}; "
            "only BERT sentence embedders are supported"
        )
    weights = next(
        (checkpoint.path / n for n in WEIGHT_NAMES if (checkpoint.path / n).is_file()), None
    )
    if weights is None:  # sharded weights (model-00001-of-...) are not needed for a small encoder
        raise ExportInputError(f"{checkpoint.path}: needs one {' or '.join(WEIGHT_NAMES)}")
    _check_modules(checkpoint)
    vocab_size = _check_tokenizer(checkpoint)
    prepared = _Prepared(checkpoint, weights, _max_tokens(config, options.max_tokens), vocab_size)
    _check_out(options.out, force=options.force)
    return prepared


def _check_modules(checkpoint: Checkpoint) -> None:
    """Refuse pooling other than mean, and sentence-transformers modules the graph lacks."""
    pooling = checkpoint.read_json(POOLING_CONFIG)
    if pooling is not None:
        modes = [
            k.removeprefix(MODE_PREFIX)
            for k, v in pooling.items()
            if k.startswith(MODE_PREFIX) and v
        ]
        others = [m for m in modes if m != "mean_tokens"]
        if others or "mean_tokens" not in modes:
            asked = f"{' + '.join(others)} pooling" if others else "no mean pooling"
            raise ExportInputError(
                f"{checkpoint.path}/{POOLING_CONFIG} asks for {asked}; "
                "only mean pooling is supported"
            )
    listed = _read_modules(checkpoint.path / "modules.json")
    unknown = sorted({m for m in listed if m not in ST_MODULES})
    if unknown:
        raise ExportInputError(
            f"{checkpoint.path}/modules.json lists {', '.join(unknown)}; only Transformer, "
            "Pooling and Normalize are supported"
        )


def _read_modules(path: Path) -> list[str]:
    """The module types listed in a sentence-transformers ``modules.json`` ([] when absent)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportInputError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
        raise ExportInputError(f"{path}: expected a list of module objects")
    return [str(m.get("type")) for m in data]


def _check_tokenizer(checkpoint: Checkpoint) -> int:
    """Check that tokenizer.json loads and fits the embedding table; return the table's rows."""
    from tokenizers import Tokenizer

    path = checkpoint.path / TOKENIZER_NAME
    if not path.is_file():
        raise ExportInputError(f"{checkpoint.path}: no {TOKENIZER_NAME} (a fast tokenizer file)")
    try:
        n_tokens = Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as exc:  # tokenizers raises plain Exception for unreadable files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportInputError(f"{path}: cannot load ({reason})") from None
    vocab_size = checkpoint.config.get("vocab_size")
    if not isinstance(vocab_size, int) or n_tokens > vocab_size:
        raise ExportInputError(
            f"{path}: {n_tokens} tokens, but config.json vocab_size is {vocab_size!r}"
        )
    return vocab_size


def _max_tokens(config: dict[str, Any], asked: int | None) -> int:
    positions = config.get("max_position_embeddings", 512)
    if not isinstance(positions, int) or positions < MIN_TOKENS:
        raise ExportInputError(f"config.json max_position_embeddings is {positions!r}")
    if asked is None:
        return min(positions, DEFAULT_MAX_TOKENS)
    if not MIN_TOKENS <= asked <= positions:
        raise ExportInputError(
            f"--max-tokens must be {MIN_TOKENS}..{positions} (the model's positions), got {asked}"
        )
    return asked


def _check_out(out: Path, *, force: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise ExportInputError(f"{out} exists and is not a folder")
    names = {p.name for p in out.iterdir()}
    if not names:
        return
    if not force:
        raise ExportInputError(f"{out} exists and is not empty; pass --force to replace it")
    if SPEC_NAME not in names and MODEL_NAME not in names:
        raise ExportInputError(f"{out} is not a text embedder bundle; refusing to replace it")


def _build(
    prepared: _Prepared, options: TextExportOptions, staging: Path, *, progress: Progress
) -> TextEmbedderSpec:
    _quiet_libraries()
    checkpoint = prepared.checkpoint
    with progress.step(f"load BertModel from {checkpoint.path}"):
        model = _load_bert(checkpoint.path)
    hidden = int(model.config.hidden_size)
    with progress.step(f"export mean-pooled graph (opset {options.opset})"):
        graph = _export_graph(model, staging / MODEL_NAME, opset=options.opset)
    shutil.copyfile(checkpoint.path / TOKENIZER_NAME, staging / TOKENIZER_NAME)
    spec = TextEmbedderSpec(
        arch="bert",
        embedding_dim=hidden,
        max_tokens=prepared.max_tokens,
        vocab_size=prepared.vocab_size,
        quantization=options.quantization,
        opset=options.opset,
        source=TextSource(
            path=_recorded(checkpoint.path),
            weights=prepared.weights.name,
            sha256=checkpoint.sha256()[prepared.weights.name],
        ),
    )
    write_spec(spec, staging)  # the runtime loader reads it for the parity runs
    return replace(spec, parity=_check_parity(staging, graph, options, progress=progress))


def _check_parity(
    staging: Path, graph: Any, options: TextExportOptions, *, progress: Progress
) -> TextParity:
    """Gate the fp32 graph at ``options.atol``; quantize if asked and measure what ships."""
    with progress.step(f"parity vs PyTorch at {len(PARITY_SENTENCES)} sentences"):
        fp32 = _parity(load_text_embedder(staging, provider="cpu"), graph)
    if fp32[0] > options.atol:
        raise ParityError(
            f"parity failed: max abs diff {fp32[0]:.3g} > atol {options.atol:g} "
            f"(cosine min {fp32[1]:.6f})"
        )
    compared = "onnxruntime fp32 graph (one padded batch) vs torch (each sentence alone)"
    shipped = fp32
    if options.quantization != "none":
        with progress.step(f"quantize to {options.quantization}"):
            _quantize(staging / MODEL_NAME, options.quantization)
            shipped = _parity(load_text_embedder(staging, provider="cpu"), graph)
        compared = (
            f"onnxruntime {options.quantization} graph (one padded batch) vs torch fp32 "
            "(each sentence alone), "
            "reported, not gated; the fp32 graph before quantization: max abs diff "
            f"{fp32[0]:.3g}, cosine min {fp32[1]:.6f}"
        )
    return TextParity(compared, len(PARITY_SENTENCES), *shipped, atol=options.atol)


def _quantize(model: Path, quantization: str) -> None:
    """Replace the fp32 graph at ``model`` by its ``quantization`` form."""
    if quantization != "int8-weights":
        _compress(model, quantization)  # the speech exporter's: dynamic int8
        return
    compressed = model.with_name(f"{quantization}.onnx")
    quantize_weights_int8(model, compressed)
    os.replace(compressed, model)


def _load_bert(folder: Path) -> Any:
    """Load the BERT encoder with eager attention (its mask path traces to a dynamic graph)."""
    from transformers import BertModel

    loader: Any = BertModel  # untyped classmethod
    try:
        model, info = loader.from_pretrained(
            folder, add_pooling_layer=False, attn_implementation="eager", output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportInputError(f"cannot load BertModel: {reason}") from None
    bad = [str(k) for k in (*info.get("missing_keys", ()), *info.get("mismatched_keys", ()))]
    if bad:
        shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise ExportInputError(f"weights do not fit BertModel: {shown}")
    return model.eval()


def _export_graph(model: Any, path: Path, *, opset: int) -> Any:
    """Trace BERT + mean pooling + L2 normalisation to ``path``; return the torch module."""
    import torch

    from streamer_export.convert import _quiet

    class SentenceGraph(torch.nn.Module):
        def __init__(self, core: Any) -> None:
            super().__init__()
            self.core = core

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.core(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            # sentence-transformers' mean pooling, then its Normalize module (eps 1e-12).
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    graph = SentenceGraph(model).eval()
    # Two rows of different lengths, so the traced graph takes the padded-mask path.
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]]) % int(model.config.vocab_size)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUT_NAMES}
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            graph,
            (ids, mask),
            str(path),
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    return graph


def _parity(embedder: TextEmbedder, graph: Any) -> tuple[float, float]:
    """Return (max abs diff, min cosine) of the bundle vs torch over :data:`PARITY_SENTENCES`."""
    import torch

    got = embedder.embed(PARITY_SENTENCES, batch=len(PARITY_SENTENCES))
    rows = []
    with torch.no_grad():
        for ids in embedder.token_ids(PARITY_SENTENCES):
            x = torch.tensor([ids])
            rows.append(graph(x, torch.ones_like(x))[0].numpy())
    want = np.stack(rows).astype(np.float32)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    cosine = np.sum(got * want, axis=1) / norms
    return float(np.max(np.abs(got - want))), float(np.min(cosine))


def _fail(exc: BaseException, code: int) -> int:
    reason = " ".join(str(exc).split())  # one line, whatever the library said
    print(f"{PROG}: error: {reason}", file=sys.stderr)
    return code


def _recorded(path: Path) -> str:
    """The source path as the spec records it: relative to the working directory when inside it.

    A bundle exported in a checkout then does not record where this machine keeps it.
    """
    full, here = path.resolve(), Path.cwd().resolve()
    return str(full.relative_to(here)) if full.is_relative_to(here) else str(full)

"""The export pipeline: checkpoint -> ONNX graph -> parity -> (quantized) bundle, atomically.

Bad input is rejected from config.json and the file system before torch is imported, so a typo
costs milliseconds. The bundle is assembled in a temporary folder beside ``out`` and renamed into
place only after parity passed: a failed or interrupted export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.engine.bundles import write_manifest
from streamer.manifest import (
    MANIFEST_NAME,
    MODEL_NAME,
    IntentGrammar,
    LanguageModel,
    Manifest,
    Parity,
    Source,
    TensorSpec,
)
from streamer.wordloop import unspellable
from streamer_export.checkpoint import Checkpoint, CtcVocab, open_checkpoint
from streamer_export.errors import ExportInputError, ParityError
from streamer_export.labels import Labels, resolve_labels
from streamer_export.progress import Progress
from streamer_export.spec import SEGUE, Plan, plan_export

DEFAULT_OPSET = 17
# The TorchScript exporter's range; 14 is the first with scaled-dot-product attention ops.
OPSETS = range(14, 21)
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how; mirrors the command line."""

    source: str
    out: Path
    task: str = "auto"
    quantization: str | None = None
    opset: int = DEFAULT_OPSET
    atol: float = 1e-4
    labels: Labels | None = None
    force: bool = False
    lm: Path | None = None
    lm_alpha: float = 0.5
    lm_beta: float = 1.5
    grammars: tuple[IntentGrammar, ...] = ()


LM_NAME = "lm.arpa"
"""File name of a ctc bundle's word n-gram LM (ARPA text) inside the bundle folder."""


@dataclass(frozen=True)
class _Prepared:
    checkpoint: Checkpoint
    plan: Plan
    vocab: CtcVocab | None
    labels: Labels | None


def export_bundle(options: ExportOptions, *, progress: Progress) -> Manifest:
    """Export ``options.source`` into the bundle folder ``options.out`` and return its manifest.

    Raises:
        ExportInputError: bad source, flag or output folder (nothing was written).
        ParityError: the graph disagrees with PyTorch beyond ``options.atol`` (nothing was written).
    """
    prepared = prepare(options, progress=progress)
    with _staging(options.out, force=options.force) as staging:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch/transformers chatter; parity is the judge
            manifest = _build(prepared, options, staging, progress=progress)
        if options.lm is not None:
            manifest = attach_lm(
                staging, manifest, options.lm, alpha=options.lm_alpha, beta=options.lm_beta
            )
        if options.grammars:
            manifest = dataclasses.replace(manifest, grammars=options.grammars)
        write_manifest(manifest, staging)
    return manifest


def prepare(options: ExportOptions, *, progress: Progress) -> _Prepared:
    """Validate everything that needs no torch: flags, source folder, task, vocab, labels.

    Raises:
        ExportInputError: the first problem found.
    """
    if options.opset not in OPSETS:
        raise ExportInputError(
            f"--opset {options.opset} unsupported (use {OPSETS[0]}..{OPSETS[-1]})"
        )
    if not options.atol >= 0:
        raise ExportInputError(f"--atol must be >= 0, got {options.atol}")
    checkpoint = open_checkpoint(options.source)
    plan = plan_export(checkpoint.config, task=options.task)
    vocab = labels = None
    if plan.task == "ctc":
        vocab = checkpoint.ctc_vocab()
        n_logits = checkpoint.config.get("vocab_size")
        if n_logits != len(vocab.tokens):
            raise ExportInputError(
                f"vocab.json has {len(vocab.tokens)} tokens but the model has {n_logits} outputs"
            )
    if options.labels is not None and plan.task != "classify":
        raise ExportInputError(f"--labels applies to classify exports, not {plan.task}")
    if plan.task == "classify":
        is_segue = plan.spec is SEGUE
        labels, warning = resolve_labels(checkpoint.config, segue=is_segue, override=options.labels)
        if warning is not None:
            progress.note(f"warning: {warning}")
    if options.lm is not None:
        _check_lm(options.lm, options, task=plan.task)
    if options.grammars:
        _check_word_lists(options.grammars, vocab, task=plan.task)
    _check_out(options.out, force=options.force)
    return _Prepared(checkpoint, plan, vocab, labels)


def attach_lm(
    bundle_dir: Path, manifest: Manifest, lm: Path, *, alpha: float, beta: float
) -> Manifest:
    """Copy the ARPA file ``lm`` into a ctc bundle; return its manifest naming it (not written)."""
    if lm.resolve() != (bundle_dir / LM_NAME).resolve():
        shutil.copyfile(lm, bundle_dir / LM_NAME)
    return dataclasses.replace(manifest, lm=LanguageModel(file=LM_NAME, alpha=alpha, beta=beta))


def _check_lm(lm: Path, options: ExportOptions, *, task: str) -> None:
    """Reject an LM for a non-ctc export, a missing or non-ARPA file, or bad fusion weights."""
    if task != "ctc":
        raise ExportInputError(f"--lm applies to ctc exports, not {task}")
    try:
        with lm.open(encoding="utf-8") as f:
            head = [line.strip() for line in itertools.islice(f, 64) if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportInputError(f"--lm {lm}: cannot read it ({exc})") from None
    if not head or head[0] != "\\data\\":
        raise ExportInputError(f"--lm {lm}: not an ARPA file (no \\data\\ header)")
    if not (math.isfinite(options.lm_alpha) and options.lm_alpha >= 0):
        raise ExportInputError(f"--lm-alpha must be finite and >= 0, got {options.lm_alpha}")
    if not math.isfinite(options.lm_beta):
        raise ExportInputError(f"--lm-beta must be finite, got {options.lm_beta}")


def _check_word_lists(
    grammars: tuple[IntentGrammar, ...], vocab: CtcVocab | None, *, task: str
) -> None:
    """Reject word lists for a non-ctc export, a repeated intent, or an unspellable word."""
    if task != "ctc" or vocab is None:
        raise ExportInputError(f"--word-list applies to ctc exports, not {task}")
    if vocab.word_delimiter is None or vocab.word_delimiter not in vocab.tokens:
        raise ExportInputError("--word-list needs a vocab with a word delimiter")
    intents = [g.intent for g in grammars]
    if len(set(intents)) != len(intents):
        raise ExportInputError(f"--word-list names an intent twice: {', '.join(intents)}")
    for g in grammars:
        for word in g.words:
            missing = unspellable(word, vocab.tokens)
            if missing:
                raise ExportInputError(
                    f"--word-list {g.intent}: {word!r} cannot be spelled with the checkpoint's"
                    f" vocab (no {', '.join(map(repr, missing))})"
                )


def _build(
    prepared: _Prepared, options: ExportOptions, staging: Path, *, progress: Progress
) -> Manifest:
    _quiet_libraries()
    from streamer_export import convert, parity
    from streamer_export.models import load_pipeline

    checkpoint, plan = prepared.checkpoint, prepared.plan
    with progress.step(f"load {plan.class_name} from {checkpoint.path}"):
        pipeline = load_pipeline(checkpoint, plan)
    model = staging / MODEL_NAME
    with progress.step(f"export {plan.spec.arch} {plan.task} graph (opset {options.opset})"):
        convert.export_onnx(pipeline, plan, model, opset=options.opset)
    names = [o.name for o in pipeline.outputs]
    rate = pipeline.sample_rate
    runs = parity.parity_runs(plan.conv, min_samples=plan.min_samples, sample_rate_hz=rate)
    check = functools.partial(
        parity.compare,
        reference=pipeline.reference,
        output_names=names,
        conv=plan.conv if plan.task == "ctc" else None,  # ctc timing is part of the contract
    )
    with progress.step(f"parity vs PyTorch at {len(runs)} inputs"):
        session = parity.open_session(model)
        parity.check_dynamic_input(session)
        result = check(session, runs=progress.track(runs, "parity"))
    if result.max_abs_diff > options.atol:
        raise ParityError(
            f"parity failed: max abs diff {result.max_abs_diff:.3g} > atol {options.atol:g} "
            f"({result.worst})"
        )
    compared = f"onnxruntime fp32 graph vs torch ({pipeline.description}): {', '.join(names)}"
    if options.quantization is not None:
        with progress.step(f"quantize to {options.quantization}"):
            _compress(model, options.quantization)
            session = parity.open_session(model)
            parity.check_dynamic_input(session)
            shipped = check(session, runs=runs)
        compared += (
            f"; the shipped {options.quantization} graph differs by up to "
            f"{shipped.max_abs_diff:.3g} ({shipped.worst}), reported, not gated"
        )
    return Manifest(
        arch=plan.spec.arch,
        task=plan.task,
        sample_rate=rate,
        inputs=tuple(_tensor(t) for t in session.get_inputs()),
        outputs=tuple(_tensor(t) for t in session.get_outputs()),
        min_samples=plan.min_samples,
        frame_stride_samples=plan.frame_stride_samples,
        opset=options.opset,
        source=Source(path=checkpoint.source, sha256=checkpoint.sha256()),
        parity=Parity(
            compared=compared,
            lengths=tuple(sorted({r.n_samples for r in runs})),
            batch_sizes=tuple(sorted({r.batch for r in runs})),
            max_abs_diff=result.max_abs_diff,
            atol=options.atol,
        ),
        quantization=options.quantization,
        vocab=prepared.vocab.tokens if prepared.vocab else None,
        blank_id=prepared.vocab.blank_id if prepared.vocab else None,
        word_delimiter=prepared.vocab.word_delimiter if prepared.vocab else None,
        labels=prepared.labels,
        embedding_dim=pipeline.embedding_dim if "embedding" in names else None,
    )


def _compress(model: Path, quantization: str) -> None:
    """Replace the fp32 graph at ``model`` by its ``quantization`` form."""
    from streamer_export import quantize

    compressed = model.with_name(f"{quantization}.onnx")
    if quantization == "int8":
        quantize.quantize_int8(model, compressed)
    else:
        quantize.convert_fp16(model, compressed)
    os.replace(compressed, model)


def _tensor(node: Any) -> TensorSpec:
    dtype = _DTYPES.get(node.type)
    if dtype is None or not all(isinstance(d, str | int) for d in node.shape):
        raise ParityError(f"graph tensor {node.name} has type {node.type} and shape {node.shape}")
    return TensorSpec(name=node.name, dtype=dtype, shape=tuple(node.shape))


def _check_out(out: Path, *, force: bool) -> None:
    if out.exists() or out.is_symlink():
        if not force:
            raise ExportInputError(f"--out {out} exists; pass --force to replace it")
        if not out.is_dir() or not _is_bundle_or_empty(out):
            raise ExportInputError(f"--out {out} is not a bundle folder; refusing to replace it")


def _is_bundle_or_empty(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    return not names or MANIFEST_NAME in names or MODEL_NAME in names


@contextlib.contextmanager
def _staging(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` by renames."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise ExportInputError(f"--out {out}: cannot write there ({exc.strerror})") from None
    try:
        yield staging
        staging.chmod(0o755)
        if out.exists() and force:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _quiet_libraries() -> None:
    """Keep transformers' logging to errors and drop its progress bars: one line per step."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    quiet: Any = hf_logging  # untyped module functions
    quiet.set_verbosity_error()
    quiet.disable_progress_bar()

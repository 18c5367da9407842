"""``bin/export_onnx``: turn a Hugging Face checkpoint into a self-describing ONNX bundle.

Exit codes: 0 exported; 1 parity or another export failure; 2 bad input. Failures print one line
on stderr, ``export_onnx: error: <reason>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from streamer.errors import StreamerError
from streamer.manifest import MODEL_NAME, TASKS, IntentGrammar
from streamer_export.errors import ExportInputError
from streamer_export.exporter import DEFAULT_OPSET, ExportOptions, export_bundle
from streamer_export.labels import LABELS_HELP, parse_labels
from streamer_export.progress import Progress
from streamer_export.spec import SUPPORTED_CLASSES

PROG = "export_onnx"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Report a usage error in the one-line format and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = _Parser(
        prog=PROG,
        description="Export a SEW-D, wav2vec 2.0 or SEGUE checkpoint to an ONNX bundle "
        "(model.onnx + manifest.json) and check it against PyTorch.",
        epilog=f"Supported checkpoint classes: {', '.join(SUPPORTED_CLASSES)}. "
        "Exit codes: 0 ok, 1 parity or export failure, 2 bad input.",
    )
    parser.add_argument("source", metavar="SOURCE", help="checkpoint folder (or hub id)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="bundle folder")
    parser.add_argument(
        "--task", choices=("auto", *TASKS), default="auto", help="default: the checkpoint's own"
    )
    parser.add_argument("--quantize", choices=("int8",), help="int8: MatMul weights only")
    parser.add_argument("--fp16", action="store_true", help="float16 weights, float32 I/O")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (14..20)")
    parser.add_argument(
        "--atol", type=float, default=1e-4, help="max abs diff vs PyTorch (fp32 graph)"
    )
    parser.add_argument("--labels", help=LABELS_HELP)
    parser.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument(
        "--lm",
        type=Path,
        metavar="ARPA",
        help="ctc only: a word n-gram LM (ARPA text) shipped in the bundle for beam search",
    )
    parser.add_argument(
        "--lm-alpha", type=float, default=0.5, help="LM weight in the beam search (default 0.5)"
    )
    parser.add_argument(
        "--lm-beta", type=float, default=1.5, help="bonus per word in the beam search (1.5)"
    )
    parser.add_argument(
        "--word-list",
        action="append",
        default=[],
        metavar="INTENT=WORD,WORD,...",
        help="ctc only, repeatable: when the intent model served beside it says INTENT, the"
        " transcript is any sequence of these words (e.g. digits=zero,one,two)",
    )
    return parser


def parse_word_list(spec: str) -> IntentGrammar:
    """``INTENT=WORD,WORD,...`` as a manifest grammar.

    Raises:
        ExportInputError: no ``=``, no intent name, or no words.
    """
    intent, sep, words = spec.partition("=")
    listed = tuple(w.strip() for w in words.split(",") if w.strip())
    if not sep or not intent.strip() or not listed:
        raise ExportInputError(f"--word-list {spec!r}: expected INTENT=WORD,WORD,...")
    return IntentGrammar(intent=intent.strip(), words=listed)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the exporter; return the exit code."""
    args = build_parser().parse_args(argv)
    progress = Progress(prog=PROG)
    start = time.monotonic()
    if args.quantize and args.fp16:
        return _fail(ExportInputError("--quantize int8 and --fp16 exclude each other"), 2)
    try:
        options = ExportOptions(
            source=args.source,
            out=args.out,
            task=args.task,
            quantization="fp16" if args.fp16 else args.quantize,
            opset=args.opset,
            atol=args.atol,
            labels=parse_labels(args.labels) if args.labels is not None else None,
            force=args.force,
            lm=args.lm,
            lm_alpha=args.lm_alpha,
            lm_beta=args.lm_beta,
            grammars=tuple(parse_word_list(spec) for spec in args.word_list),
        )
        manifest = export_bundle(options, progress=progress)
    except ExportInputError as exc:
        return _fail(exc, 2)
    except StreamerError as exc:
        return _fail(exc, 1)
    size_mb = (args.out / MODEL_NAME).stat().st_size / 1e6
    diff = manifest.parity.max_abs_diff if manifest.parity else float("nan")
    print(
        f"{args.out}: {manifest.arch} {manifest.task}, {MODEL_NAME} {size_mb:.1f} MB, "
        f"parity max abs diff {diff:.2g} (atol {args.atol:g}), {time.monotonic() - start:.1f} s"
    )
    return 0


def _fail(exc: BaseException, code: int) -> int:
    reason = " ".join(str(exc).split())  # one line, whatever the library said
    print(f"{PROG}: error: {reason}", file=sys.stderr)
    return code

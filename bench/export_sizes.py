"""Export time, model.onnx size, parity and ORT latency per architecture, as a Markdown table.

Usage: ``.venv/bin/python bench/export_sizes.py [--tiny-only] [--segue-base] [--work DIR]``

Rows: the tiny test checkpoints (SEW-D CTC, wav2vec 2.0 CTC, SEGUE [4, 3] classifier) and a
random SEW-D CTC of asapp/sew-d-tiny-100k's size (hidden 384, 12 layers, ~24M parameters) in fp32
and int8. Each export runs ``bin/export_onnx`` as a subprocess (wall time includes imports). A
second table checks why int8 quantizes MatMul only: the same full-size graph quantized with
quantize_dynamic's default op types (adds ConvInteger) against MatMul-only and fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SEWD_TINY_100K = {  # asapp/sew-d-tiny-100k's shape; the rest is SEWDConfig's default
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "squeeze_factor": 2,
}
LATENCY_S = 10.0
RUNS = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-only", action="store_true", help="skip the full-size SEW-D")
    parser.add_argument("--work", type=Path, help="keep checkpoints and bundles here")
    parser.add_argument(
        "--segue-base", action="store_true", help="add a random SEGUE at wav2vec2-base size (94M)"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="export-sizes-"))
    import checkpoints as ck

    builders: list[tuple[str, Callable[[Path], Path], tuple[str, ...]]] = [
        ("sew-d ctc, tiny (test config)", ck.make_sewd_ctc, ()),
        ("wav2vec2 ctc, tiny (test config)", ck.make_wav2vec2_ctc, ()),
        (
            "segue classify [4,3], tiny",
            lambda d: ck.make_segue(d, [4, 3]),
            ("--labels", "a,b,c,d;x,y,z"),
        ),
    ]
    if not args.tiny_only:
        full = lambda d: ck.make_sewd_ctc(d, config=SEWD_TINY_100K)  # noqa: E731
        builders += [
            ("sew-d ctc, sew-d-tiny size, fp32", full, ()),
            ("sew-d ctc, sew-d-tiny size, int8", full, ("--quantize", "int8")),
        ]
    if args.segue_base:
        base = lambda d: ck.make_segue(d, [3, 7], base_size=True)  # noqa: E731
        labels = ("--labels", "a,b,c;1,2,3,4,5,6,7")
        builders.append(("segue classify [3,7], w2v2-base size", base, labels))
    print(
        "| model | params | export s | model.onnx MB | parity max abs diff | ORT ms / 10 s audio |"
    )
    print("|---|---|---|---|---|---|")
    made: dict[int, Path] = {}
    for i, (name, build, flags) in enumerate(builders):
        key = id(build)
        if key not in made:
            made[key] = build(work / f"ckpt{i}")
        bundle = work / f"bundle{i}"
        start = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bin" / "export_onnx"),
                str(made[key]),
                "--out",
                str(bundle),
                "--force",
                *flags,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - start
        manifest = json.loads((bundle / "manifest.json").read_text())
        size_mb = (bundle / "model.onnx").stat().st_size / 1e6
        print(
            f"| {name} | {_params(made[key]) / 1e6:.2f}M | {seconds:.1f} | {size_mb:.2f} "
            f"| {manifest['parity']['max_abs_diff']:.1e}{_shipped(manifest)} "
            f"| {_latency_ms(bundle / 'model.onnx'):.0f} |",
            flush=True,
        )
    if not args.tiny_only:
        _op_type_table(work / "bundle3" / "model.onnx")  # the full-size SEW-D fp32 bundle
    return 0


def _params(folder: Path) -> int:
    import torch
    from safetensors.torch import load_file

    weights = folder / "model.safetensors"
    state = (
        load_file(str(weights))
        if weights.exists()
        else torch.load(folder / "pytorch_model.bin", weights_only=True)
    )
    return sum(t.numel() for k, t in state.items() if not k.startswith("text_encoder."))


def _shipped(manifest: dict[str, object]) -> str:
    compared = str(manifest["parity"]["compared"])  # type: ignore[index]
    if "shipped" not in compared:
        return ""
    return f" (int8 graph: {compared.split('differs by up to ')[1].split(' ')[0]})"


def _session(model: Path, *, threads: int = 0) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _audio() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal((1, int(LATENCY_S * 16000)))).astype(np.float32)


def _latency_ms(model: Path) -> float:
    session = _session(model)
    audio = _audio()
    session.run(None, {"input_values": audio})  # type: ignore[attr-defined]
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        session.run(None, {"input_values": audio})  # type: ignore[attr-defined]
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _op_type_table(fp32: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    print("\n| full-size SEW-D graph | model.onnx MB | ORT ms / 10 s audio, 1 thread |")
    print("|---|---|---|")
    variants = {"fp32": fp32}
    logging.disable(logging.WARNING)  # quantize_dynamic's "consider pre-processing" advice
    for label, op_types, name in (
        ("int8, MatMul only (as exported)", ["MatMul"], "int8-matmul.onnx"),
        ("int8, default op types (+ConvInteger)", None, "int8-default.onnx"),
    ):
        variants[label] = fp32.with_name(name)
        quantize_dynamic(
            fp32, variants[label], op_types_to_quantize=op_types, weight_type=QuantType.QInt8
        )
    # One thread, variants interleaved round by round: fair on a shared, noisy CPU.
    sessions = {label: _session(path, threads=1) for label, path in variants.items()}
    audio = _audio()
    times: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(RUNS + 1):
        for label, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"input_values": audio})  # type: ignore[attr-defined]
            times[label].append(time.perf_counter() - start)
    for label, path in variants.items():
        ms = 1000 * statistics.median(times[label][1:])
        print(f"| {label} | {path.stat().st_size / 1e6:.1f} | {ms:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())

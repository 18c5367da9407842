"""Parity between the exported graph (ONNX Runtime) and the PyTorch pipeline it came from.

Every run is compared and all mismatches are collected before anything is raised, so the one-line
reason names the worst one and how many runs failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from streamer_export.errors import ParityError
from streamer_export.spec import ConvStack

FloatArray = npt.NDArray[np.float32]
Reference = Callable[[FloatArray], list[FloatArray]]
# Longest parity input: over 10 s, as the daemon serves utterances that long.
LONG_S = 10.5


@dataclass(frozen=True)
class ParityRun:
    """One comparison: ``batch`` different signals of ``n_samples`` samples each."""

    n_samples: int
    batch: int


@dataclass(frozen=True)
class ParityResult:
    """The worst difference over all runs, and where it happened."""

    max_abs_diff: float
    worst: str


def parity_runs(conv: ConvStack, *, min_samples: int, sample_rate_hz: int) -> tuple[ParityRun, ...]:
    """Choose the parity inputs: batch 1 at four lengths, plus one batch of 2.

    The lengths are the shortest accepted input, 25 frames (odd, under 1 s), 150 frames (even)
    and 10.5 s, each mid-way between frame boundaries.
    """
    half = conv.stride_samples // 2
    short_odd = conv.n_samples_for(25) + half  # 25 frames, ~0.5 s at 16 kHz
    even = conv.n_samples_for(150) + half  # 150 frames, ~3 s
    long = max(int(LONG_S * sample_rate_hz), conv.n_samples_for(3))
    lengths = sorted({min_samples, short_odd, even, long})
    runs = [ParityRun(n, 1) for n in lengths]
    runs.append(ParityRun(short_odd, 2))
    return tuple(runs)


def probe_signal(n_samples: int, batch: int) -> FloatArray:
    """Return ``batch`` different deterministic speech-level signals in [-1, 1]."""
    rng = np.random.default_rng(n_samples)
    t = np.arange(n_samples) / 16000.0
    rows = [
        0.3 * np.sin(2 * math.pi * (120 + 80 * i) * t) + 0.05 * rng.standard_normal(n_samples)
        for i in range(batch)
    ]
    return np.clip(np.stack(rows), -1.0, 1.0).astype(np.float32)


def open_session(path: Path) -> ort.InferenceSession:
    """Open ``path`` on the CPU provider with ONNX Runtime's own error log silenced."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures surface as exceptions; the C++ log only duplicates
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_dynamic_input(session: ort.InferenceSession) -> None:
    """Require ``input_values`` to be declared with symbolic batch and samples dims.

    Raises:
        ParityError: the graph fixed a dimension to the traced size.
    """
    first = session.get_inputs()[0]
    if first.name != "input_values" or not all(isinstance(d, str) for d in first.shape):
        raise ParityError(f"graph input {first.name} has shape {first.shape}, not [batch, samples]")


def compare(
    session: ort.InferenceSession,
    *,
    reference: Reference,
    runs: Iterable[ParityRun],
    output_names: list[str],
    conv: ConvStack | None = None,
) -> ParityResult:
    """Run every parity input through ORT and the reference and return the worst difference.

    Args:
        session: the exported graph.
        reference: the PyTorch pipeline on raw audio.
        runs: what to compare.
        output_names: the graph's outputs, in the order ``reference`` returns them.
        conv: when given, also require dim 1 of the first output to equal the conv frame count
            (the ctc timing the manifest's ``frame_stride_samples`` promises).

    Raises:
        ParityError: ORT fails to run an input, or an output's shape differs from PyTorch's.
    """
    worst = ParityResult(0.0, "")
    for run in runs:
        audio = probe_signal(run.n_samples, run.batch)
        where = f"{run.n_samples} samples, batch {run.batch}"
        try:
            got = session.run(output_names, {"input_values": audio})
        except Exception as exc:  # ORT raises its own exception types
            raise ParityError(f"onnxruntime failed at {where}: {_first_line(exc)}") from None
        want = reference(audio)
        for name, g, w in zip(output_names, got, want, strict=True):
            g = np.asarray(g, dtype=np.float32)
            if g.shape != w.shape:
                raise ParityError(f"{name} has shape {g.shape} vs torch {w.shape} at {where}")
            diff = float(np.max(np.abs(g - w))) if g.size else 0.0
            if not math.isfinite(diff):
                raise ParityError(f"{name} is not finite at {where}")
            if diff > worst.max_abs_diff:
                worst = ParityResult(diff, f"{name} at {where}")
        if conv is not None and got[0].shape[1] != conv.n_frames(run.n_samples):
            frames = conv.n_frames(run.n_samples)
            raise ParityError(
                f"{output_names[0]} has {got[0].shape[1]} frames at {where}, not {frames}"
            )
    return worst


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__

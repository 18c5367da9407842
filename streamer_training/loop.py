"""Shared training-loop pieces: batching with per-utterance normalisation, LR schedule, checkpoints.

Each step draws its batch from ``numpy.random.default_rng([seed, step])``, so a run resumed from a
checkpoint sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")


def normalize(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the clip (the feature extractor's ``do_normalize``)."""
    x = audio.astype(np.float32)
    out: np.ndarray = ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)
    return out


def pad_batch(clips: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise each clip and right-pad with zeros; return (values, attention mask, lengths)."""
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    values = np.zeros((len(clips), int(lengths.max())), dtype=np.float32)
    mask = np.zeros(values.shape, dtype=np.int64)
    for row, clip in enumerate(clips):
        values[row, : len(clip)] = normalize(clip)
        mask[row, : len(clip)] = 1
    return values, mask, lengths


def draw_batch(
    draw: Callable[[np.random.Generator], T],
    size: int,
    rng: np.random.Generator,
    *,
    length: Callable[[T], int],
) -> list[T]:
    """Draw ``3 * size`` items, sort them by length and return a random run of ``size`` neighbours.

    Batches of similar lengths waste little compute on padding.
    """
    pool = sorted((draw(rng) for _ in range(3 * size)), key=length)
    start = int(rng.integers(0, len(pool) - size + 1))
    return pool[start : start + size]


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU does bfloat16 in hardware (AVX-512 BF16 or AMX); asked once.

    Without it, bfloat16 autocast is emulated and a training step is several times slower than
    in float32 (measured on an AVX2-only CPU: the embed student's step 5-9 s against 1-2 s).
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(bf16: bool) -> Any:
    """The forward pass's autocast: bfloat16 when the recipe asks and the CPU does it natively."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and native_bf16())


def frame_kl(student: Any, teacher: Any, frames: Any, temperature: float) -> Any:
    """Mean over valid frames of KL(teacher || student) on temperature-softened posteriors.

    Both models see 20 ms frames of the same conv stack, so frame ``t`` of one is frame ``t`` of
    the other; frames past each clip's length (``frames``) are ignored. Scaled by T² as usual.
    """
    import torch

    n = min(student.shape[1], teacher.shape[1])
    log_p_student = (student[:, :n] / temperature).log_softmax(-1)
    log_p_teacher = (teacher[:, :n] / temperature).log_softmax(-1)
    per_frame = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    valid = (torch.arange(n)[None, :] < frames[:, None]).float()
    return (per_frame * valid).sum() / valid.sum().clamp(min=1.0) * temperature**2


def conv_frames(n_samples: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Frames the conv feature extractor yields for ``n_samples`` inputs (no padding)."""
    n = n_samples
    for k, s in zip(kernels, strides, strict=True):
        n = (n - k) // s + 1
    return max(n, 0)


def lr_at(step: int, *, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to ``peak`` then cosine decay to 5% of it at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * cosine_floor((step - warmup) / max(1, total - warmup))


def cosine_floor(progress: float) -> float:
    """Cosine from 1 at ``progress`` 0 down to 0.05 at 1 (and after)."""
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class CyclicSchedule(Protocol):
    """The learning-rate fields of a recipe (``IntentRecipe``, ``CtcRecipe``)."""

    @property
    def steps(self) -> int: ...
    @property
    def peak_lr(self) -> float: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def restarts(self) -> tuple[int, ...]: ...
    @property
    def restart_peak_lr(self) -> float: ...
    @property
    def restart_warmup_steps(self) -> int: ...


def lr_cycles(schedule: CyclicSchedule, step: int) -> float:
    """Cosine cycles with warm restarts, the learning rate of ``step``.

    ``lr_at`` up to the first restart; then at each step of ``restarts`` a new cycle
    (``restart_warmup_steps`` to ``restart_peak_lr``, cosine to 5%) that ends at the next
    restart or at ``steps``.

    Restarts at or past ``steps`` are ignored; with none left this is ``lr_at(step,
    total=steps)``, and cutting ``steps`` at a restart leaves the cycles before it unchanged.
    """
    s = schedule
    bounds = [0, *sorted(r for r in s.restarts if 0 < r < s.steps), s.steps]
    k = max(0, bisect.bisect_right(bounds, step, hi=len(bounds) - 1) - 1)
    start, end = bounds[k], bounds[k + 1]
    if k == 0:
        return lr_at(step, peak=s.peak_lr, warmup=s.warmup_steps, total=end)
    return lr_at(
        step - start, peak=s.restart_peak_lr, warmup=s.restart_warmup_steps, total=end - start
    )


@dataclass
class Curve:
    """The learning curve: training loss per logging window and periodic evaluation results."""

    train: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """Write the curve as JSON."""
        path.write_text(json.dumps({"train": self.train, "evals": self.evals}, indent=1))

    @classmethod
    def load(cls, path: Path) -> Curve:
        """Read a curve written by :meth:`save` (empty when the file is missing)."""
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        return cls(train=list(raw["train"]), evals=list(raw["evals"]))


class LossWindow:
    """Mean training loss and seconds per step over each ``every`` steps, appended to a curve."""

    def __init__(self, curve: Curve, *, every: int = 50) -> None:
        """Record into ``curve.train`` every ``every`` steps."""
        self.curve = curve
        self.every = every
        self._losses: list[float] = []
        self._since = time.monotonic()

    def add(self, step: int, loss: float, lr: float) -> None:
        """Count the loss of ``step`` (1-based, after the optimizer step) trained at ``lr``."""
        self._losses.append(loss)
        if step % self.every == 0:
            self.curve.train.append(
                {
                    "step": step,
                    "loss": float(np.mean(self._losses)),
                    "lr": lr,
                    "s_per_step": (time.monotonic() - self._since) / len(self._losses),
                }
            )
            self._losses, self._since = [], time.monotonic()


def save_checkpoint(path: Path, *, model: Any, optimizer: Any, step: int) -> None:
    """Atomically save model and optimizer state plus the step count."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp
    )
    tmp.replace(path)


def load_checkpoint(path: Path, *, model: Any, optimizer: Any) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint`; return its step (0 if none)."""
    import torch

    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


class Progress:
    """A one-line progress bar on a TTY, a log line every ``every`` steps otherwise."""

    def __init__(self, total: int, *, label: str, every: int = 50) -> None:
        self._total = total
        self._label = label
        self._every = every
        self._t0 = time.monotonic()
        self._tty = sys.stderr.isatty()

    def update(self, step: int, info: str) -> None:
        """Report that ``step`` of the total is done."""
        elapsed_s = time.monotonic() - self._t0
        if self._tty:
            width = 30
            done = int(width * step / max(1, self._total))
            bar = "#" * done + "." * (width - done)
            sys.stderr.write(
                f"\r{self._label} [{bar}] {step}/{self._total} {elapsed_s:5.0f}s {info}"
            )
            sys.stderr.flush()
            if step >= self._total:
                sys.stderr.write("\n")
        elif step % self._every == 0 or step >= self._total:
            log.info("%s %d/%d %.0fs %s", self._label, step, self._total, elapsed_s, info)

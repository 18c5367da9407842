"""Step reporting for the exporter: one line per step, a live bar on a terminal only."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """Reports steps on ``stream`` (stderr): ``prog: message: 1.2 s``, one line each."""

    def __init__(self, *, prog: str = "export_onnx", stream: TextIO | None = None) -> None:
        self.prog = prog
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()

    def note(self, message: str) -> None:
        """Print one line."""
        print(f"{self.prog}: {message}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[None]:
        """Time a step and report it; on a terminal its name shows while it runs."""
        if self.tty:
            print(f"{self.prog}: {message} ...", end="", file=self.stream, flush=True)
        start = time.monotonic()
        try:
            yield
        finally:
            if self.tty:
                # Back to column 0 and clear the line: a progress bar may have drawn over it.
                print("\r\033[K", end="", file=self.stream, flush=True)
        self.note(f"{message}: {time.monotonic() - start:.1f} s")

    def track(self, items: Sequence[T], description: str) -> Iterator[T]:
        """Yield ``items``, with a transient progress bar on a terminal."""
        if not self.tty:
            yield from items
            return
        from tqdm import tqdm

        yield from tqdm(items, desc=description, leave=False, file=self.stream, unit="run")

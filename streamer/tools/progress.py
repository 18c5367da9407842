"""Progress bars for long operations: a tqdm bar on an interactive terminal, silence otherwise.

A bar is drawn on stderr only when stderr is a terminal, stdout is not (results go to a file or
a pipe, so the bar and the result lines never interleave), the work is long enough to be worth
one, and tqdm is installed. Everything else gets the items unchanged and no output.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Final, TextIO

import numpy as np
import numpy.typing as npt

#: Audio shorter than this is quick enough to need no bar (seconds).
LONG_AUDIO_S: Final = 30.0


def wants_bar(*, stderr: TextIO | None = None, stdout: TextIO | None = None) -> bool:
    """Whether a bar would be seen: stderr is a terminal and stdout is not."""
    err = stderr or sys.stderr
    out = stdout or sys.stdout
    return _isatty(err) and not _isatty(out)


def audio_progress(
    chunks: Iterable[npt.NDArray[np.float32]],
    *,
    rate_hz: int,
    total_s: float,
    desc: str,
    stderr: TextIO | None = None,
    stdout: TextIO | None = None,
) -> Iterator[npt.NDArray[np.float32]]:
    """Yield ``chunks`` (audio at ``rate_hz``), advancing a bar in seconds of audio when wanted."""
    if total_s < LONG_AUDIO_S or not wants_bar(stderr=stderr, stdout=stdout):
        yield from chunks
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield from chunks
        return
    with tqdm(
        total=round(total_s, 1),
        desc=desc,
        unit="s",
        unit_scale=False,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio "
        "[{elapsed}<{remaining}, {rate_fmt}]",
        file=stderr or sys.stderr,
        leave=False,
        dynamic_ncols=True,
    ) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(len(chunk) / rate_hz)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False

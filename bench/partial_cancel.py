"""What cancelling a running partial run would save: onnxruntime ``RunOptions.terminate`` timed.

When an utterance is cut, its partial run may be running. The daemon does not start a partial run
that has not started, and lets a running one finish with its result discarded
(streamer/streams/live.py). This script measures the alternative on the shipped ctc bundle: the
cost of a partial window of 1, 2 and 4 s, and how soon a run returns after ``terminate`` is set
a few ms into it (onnxruntime checks the flag between graph nodes).

Usage: ``python bench/partial_cancel.py [--bundle exported/commands-ctc] [--repeats 20]``
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]


def run_ms(session: ort.InferenceSession, feeds: dict[str, np.ndarray], repeats: int) -> float:
    """Median wall time of one run, in ms."""
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def terminate_ms(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], after_s: float, repeats: int
) -> float:
    """Median time from setting ``terminate`` (``after_s`` into a run) to the run's return, ms."""
    waits = []
    for _ in range(repeats):
        options = ort.RunOptions()
        returned: list[float] = []

        def work(options: ort.RunOptions = options, returned: list[float] = returned) -> None:
            # onnxruntime reports a terminated run as a failure
            with contextlib.suppress(Exception):
                session.run(None, feeds, options)
            returned.append(time.perf_counter())

        thread = threading.Thread(target=work)
        thread.start()
        time.sleep(after_s)
        asked = time.perf_counter()
        options.terminate = True
        thread.join()
        waits.append(max(0.0, returned[0] - asked) * 1000.0)
    return statistics.median(waits)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "exported" / "commands-ctc")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    session = ort.InferenceSession(
        str(args.bundle / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    print("| partial window | run, median | returns after terminate at 2 ms | at 5 ms |")
    print("| --- | ---: | ---: | ---: |")
    for seconds in (1, 2, 4):
        feeds = {name: (0.1 * rng.standard_normal((1, 16000 * seconds))).astype(np.float32)}
        full = run_ms(session, feeds, args.repeats)
        early = terminate_ms(session, feeds, 0.002, args.repeats)
        later = terminate_ms(session, feeds, 0.005, args.repeats)
        print(f"| {seconds} s | {full:.1f} ms | {early:.1f} ms | {later:.1f} ms |")


if __name__ == "__main__":
    main()

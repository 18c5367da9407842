"""`streamer inspect FILE --png OUT`: the traced pipeline data and the picture drawn from it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from onnx_graphs import write_bundle

from streamer.config import Config
from streamer.errors import StreamerError
from streamer.streams.sources import read_audio_file
from streamer.tools.inspect import Trace, inspect_file, trace_file
from streamer.tools.progress import audio_progress, wants_bar

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
UNIT_S = 10.0 * float(os.environ.get("STREAMER_TEST_TIMEOUT_FACTOR", "1"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Speech in the first 14 s of stream_clean.wav (seconds, from its manifest).
TRUTH_S = ((1.0, 4.0), (7.0, 10.12), (11.42, 13.37))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect")
    return {
        "ctc": write_bundle(root / "ctc"),
        "intent": write_bundle(root / "intent", task="classify", labels=(("on", "off"),)),
    }


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 14 s of stream_clean.wav (three utterances of real speech) at 16 kHz."""
    audio = read_audio_file(AUDIO / "stream_clean.wav")
    path = tmp_path_factory.mktemp("clip") / "three.wav"
    soundfile.write(path, audio.samples[: 14 * audio.rate_hz], audio.rate_hz, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def trace(models: dict[str, Path], clip: Path) -> Trace:
    return asyncio.run(trace_file(Config(), models, clip))


def test_trace_has_a_vad_score_per_frame_and_the_utterances(trace: Trace) -> None:
    """Every frame is scored; scores are high in the true speech and low in the silences."""
    assert trace.duration_s == pytest.approx(14.0)
    assert len(trace.scores) == int(14.0 / trace.frame_s)
    starts = np.asarray(trace.frame_starts_s)
    scores = np.asarray(trace.scores)
    inside = np.zeros(starts.shape, dtype=bool)
    for start, end in TRUTH_S:
        inside |= (starts >= start + 0.2) & (starts < end - 0.2)
    silent = ~inside & ~np.any([(starts > s - 0.5) & (starts < e + 0.5) for s, e in TRUTH_S], 0)
    assert np.mean(scores[inside] >= trace.thresholds.start) > 0.6
    assert np.mean(scores[silent] >= trace.thresholds.start) < 0.05
    spans = [(u.start_ms / 1000, u.end_ms / 1000) for u in trace.utterances]
    assert len(spans) == len(TRUTH_S), spans
    for (start, end), (true_start, true_end) in zip(spans, TRUTH_S, strict=True):
        assert abs(start - true_start) < 0.3
        assert abs(end - true_end) < 0.4
    assert all(u.transcript is not None and u.intent is not None for u in trace.utterances)
    assert trace.errors == []


async def test_inspect_writes_a_readable_png(
    models: dict[str, Path], clip: Path, tmp_path: Path
) -> None:
    """The picture is a 1400x800 PNG with ink in it (not a blank canvas)."""
    import matplotlib.image

    out = tmp_path / "three.png"
    assert await inspect_file(Config(), models, clip, png=out) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (800, 1400)
    assert np.mean(pixels[..., :3] < 0.5) > 0.01  # waveform, score trace and text drawn


def test_inspect_command(models: dict[str, Path], clip: Path, tmp_path: Path) -> None:
    """`streamer inspect FILE --png OUT` exits 0 and writes the PNG; a bad file exits 2."""
    flags = [arg for name, path in models.items() for arg in ("--model", f"{name}={path}")]
    out = tmp_path / "cli.png"
    cmd = [sys.executable, "-m", "streamer", *flags, "inspect"]
    ok = subprocess.run(
        [*cmd, str(clip), "--png", str(out)], capture_output=True, text=True, timeout=6 * UNIT_S
    )
    assert ok.returncode == 0, ok.stderr
    assert "3 utterance(s)" in ok.stdout
    assert out.read_bytes()[:8] == PNG_MAGIC
    bad = subprocess.run(
        [*cmd, str(tmp_path / "missing.wav"), "--png", str(out)],
        capture_output=True,
        text=True,
        timeout=6 * UNIT_S,
    )
    assert bad.returncode == 2
    assert "missing.wav" in bad.stderr.splitlines()[-1]


async def test_missing_matplotlib_is_a_clear_error(
    models: dict[str, Path], clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib, inspect says which extra to install instead of a traceback."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(StreamerError, match=r"streamer\[plot\]"):
        await inspect_file(Config(), models, clip, png=tmp_path / "x.png")


class _Tty:
    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.text = ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_progress_bar_only_on_a_terminal_for_long_audio() -> None:
    """A bar is drawn for long audio when stderr is a terminal and stdout is not; else nothing."""
    chunk = np.zeros(1600, dtype=np.float32)
    pieces = [chunk] * 400  # 40 s at 16 kHz

    def run(total_s: float, err_tty: bool, out_tty: bool) -> tuple[int, str]:
        err, out = _Tty(err_tty), _Tty(out_tty)
        got = audio_progress(
            pieces, rate_hz=16000, total_s=total_s, desc="x", stderr=err, stdout=out
        )  # type: ignore[arg-type]
        return len(list(got)), err.text

    assert run(40.0, err_tty=True, out_tty=False)[0] == 400
    assert "/40 s audio" in run(40.0, err_tty=True, out_tty=False)[1]
    assert run(40.0, err_tty=False, out_tty=False) == (400, "")
    assert run(40.0, err_tty=True, out_tty=True) == (400, "")
    assert run(10.0, err_tty=True, out_tty=False) == (400, "")
    assert not wants_bar(stderr=_Tty(False), stdout=_Tty(False))  # type: ignore[arg-type]

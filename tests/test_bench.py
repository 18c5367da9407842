"""``streamer bench``: the replay client against a real daemon, and its measurements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from onnx_graphs import write_bundle

from streamer.tools.bench import ProcessProbe, daemon_batches, format_table, percentiles, summarize
from streamer.tools.replay import StreamReport, _score

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
FILES = [AUDIO / "cmd_goforward.wav", AUDIO / "sent_harvard_spk1_snt1.wav"]
TIMEOUT_S = 120 * float(os.environ.get("STREAMER_TEST_TIMEOUT_FACTOR", "1"))


def bench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env={**os.environ, "STREAMER_ENGINE_INTRA_OP_THREADS": "1"},
    )


def test_bench_fast_smoke_run(tmp_path: Path) -> None:
    """Two fast streams against a daemon it starts: every utterance answered, figures filled in."""
    model = write_bundle(tmp_path / "ctc")
    out = tmp_path / "bench.json"
    done = bench(
        "--model", f"ctc={model}", "bench", *FILES, "--streams", "2", "--fast", "--json", out
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| streams | mode |" in done.stdout
    result = json.loads(out.read_text())
    assert result["streams"] == 2
    assert result["mode"] == "fast"
    assert result["utterances_sent"] >= 2
    assert result["results_received"] == result["utterances_sent"]
    assert result["latency_ms"]["p50"] > 0
    assert result["cpu_s_per_audio_s"] > 0
    assert result["peak_rss_mb"] > 10
    assert result["daemon_batches"]["utterance_runs"] == result["utterances_sent"]
    assert 0 <= result["rtf"] < 1  # engine busy seconds per audio second
    assert {s["file"] for s in result["per_stream"]} == {str(f) for f in FILES}


@pytest.mark.export
def test_bench_compare_times_onnxruntime_and_torch(tiny_ctc_bundle: Path, tmp_path: Path) -> None:
    """--compare on an exported SEW-D times raw onnxruntime and PyTorch eager on the utterances."""
    out = tmp_path / "bench.json"
    done = bench(
        "--model",
        f"sewd={tiny_ctc_bundle}",
        "bench",
        FILES[0],
        "--fast",
        "--compare",
        "--json",
        out,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    compare = json.loads(out.read_text())["compare"]
    rows = compare["models"]
    assert set(rows) == {"sewd", "torch eager"}
    assert rows["sewd"]["speedup_vs_torch"] > 0
    assert (
        rows["sewd"]["same_result_as_torch"] == f"{compare['utterances']}/{compare['utterances']}"
    )
    assert compare["daemon_cpu_vs_raw_ort"] > 0
    assert "| torch eager |" in done.stdout


def test_bench_reports_a_daemon_that_cannot_start(tmp_path: Path) -> None:
    """A daemon that fails to start is one error line and exit code 2, not a hang."""
    done = bench("--model", f"x={tmp_path / 'missing'}", "bench", FILES[0], "--fast")
    assert done.returncode == 2
    assert "daemon exited" in done.stderr


def test_latency_counts_from_the_frame_holding_the_speech_end() -> None:
    """Latency runs from sending the frame that holds end_ms to receiving the utterance."""
    report = StreamReport(stream="s", file="f")
    sent_ends = [1600, 3200, 4800]
    sent_at = [10.0, 10.1, 10.2]
    events: list[tuple[float, dict[str, Any]]] = [
        (10.05, {"type": "speech_started", "seq": 0}),
        (10.6, {"type": "utterance", "seq": 0, "end_ms": 150.0, "latency_ms": {"encode": 7.0}}),
        (10.7, {"type": "error", "code": "overloaded", "utterance_id": "u1"}),
        (10.8, {"type": "ended", "n_utterances": 2}),
    ]
    _score(report, events, sent_ends, sent_at, 16000)
    assert report.latencies_ms == pytest.approx([500.0])
    assert report.encode_ms == [7.0]
    assert (report.utterances, report.results, report.errors) == (2, 1, 1)
    assert report.error_codes == {"overloaded": 1}


def test_summary_and_table() -> None:
    """The summary folds streams together and the table shows its figures."""
    reports = [
        StreamReport("a", "f", audio_s=10.0, utterances=2, results=2, latencies_ms=[100.0, 300.0]),
        StreamReport("b", "f", audio_s=10.0, utterances=1, results=1, latencies_ms=[200.0]),
    ]
    result = summarize(reports, wall_s=5.0, cpu_s=2.0, peak_rss_mb=123.4, realtime=True)
    assert result["latency_ms"]["p50"] == 200.0
    assert result["rtf"] is None  # real time: only the daemon's busy time gives one
    assert result["cpu_s_per_audio_s"] == 0.1
    table = format_table([result])
    assert "| 2 | realtime | 20.0 | 200 / " in table
    assert "| 3 / 3 |" in table
    assert percentiles([])["p95"] is None


def test_process_probe_reads_cpu_and_memory() -> None:
    """The /proc probe sees this process's CPU time grow and a plausible RSS."""
    probe = ProcessProbe(os.getpid())
    before = probe.cpu_s()
    deadline = time.process_time() + 0.1
    while time.process_time() < deadline:
        pass
    assert probe.cpu_s() > before
    assert 10 < probe.rss_mb() <= probe.rss_mb("VmHWM")


def test_daemon_batch_line_is_parsed() -> None:
    """The engine's shutdown line gives the runs and batch counts."""
    line = (
        "INFO streamer.engine.runner: engine: 12 utterance runs in 5 batches "
        "(mean 2.40, sizes {1: 2, 5: 2}), busy 1.25 s"
    )
    assert daemon_batches(line) == {
        "utterance_runs": 12,
        "batches": 5,
        "mean_batch": 2.4,
        "busy_s": 1.25,
    }
    assert daemon_batches("nothing") is None

"""``streamer bench``: the replay client against a real daemon, and its measurements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_graphs import write_bundle

from streamer.tools.bench import ProcessProbe, daemon_batches, format_table, percentiles, summarize
from streamer.tools.bench_partials import (
    PAUSE_S,
    LiveStream,
    eager_advances,
    eager_leads_over_today,
    first_appearances,
    measure,
    same_word,
    stable_before_final,
    stable_contradictions,
    stream_audio,
)
from streamer.tools.partials_report import format_table as format_partials_table
from streamer.tools.replay import Played, StreamReport, score_report

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
    score_report(report, Played(events, sent_ends, sent_at), 16000)
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


def test_daemon_partials_time_is_parsed() -> None:
    """The engine's shutdown line also gives the seconds partial runs took, when it has them."""
    line = (
        "INFO streamer.engine.runner: engine: 12 utterance runs in 5 batches "
        "(mean 2.40, sizes {1: 2, 5: 2}), busy 1.250 s (partials 0.310 s)"
    )
    assert daemon_batches(line) == {
        "utterance_runs": 12,
        "batches": 5,
        "mean_batch": 2.4,
        "busy_s": 1.25,
        "partials_busy_s": 0.31,
    }


def _word(word: str, start_ms: float, end_ms: float, stable: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"word": word, "start_ms": start_ms, "end_ms": end_ms, "confidence": 0.9}
    return out if stable is None else {**out, "stable": stable}


def _partial(utterance_id: str, *words: dict[str, Any]) -> dict[str, Any]:
    return {"type": "partial", "utterance_id": utterance_id, "words": list(words)}


def _final(
    utterance_id: str, seq: int, *words: dict[str, Any], kind: str = "utterance", emit_ms: float = 1
) -> dict[str, Any]:
    return {
        "type": kind,
        "stream": "s",
        "utterance_id": utterance_id,
        "seq": seq,
        "start_ms": 0.0,
        "end_ms": 900.0,
        "latency_ms": {"end_of_speech_to_emit": emit_ms, "encode": 5.0},
        "transcript": {"text": " ".join(w["word"] for w in words), "words": list(words)},
    }


def test_stable_words_are_counted_once_and_matched_by_text_and_time() -> None:
    """A stable word counts once; the final must hold it within 200 ms, or it is contradicted."""
    turn, on = _word("turn", 0, 200, True), _word("on", 250, 400, True)
    events = [
        (1.0, _partial("u1", _word("turn", 0, 200, False), _word("on", 250, 400, False))),
        (1.5, _partial("u1", turn, on, _word("the", 450, 520, False))),
        (
            2.0,
            _partial("u1", turn, on, _word("of", 450, 500, True), _word("light", 1500, 1700, True)),
        ),
        (2.5, _partial("u1", turn, on, _word("lamp", 2300, 2400, True))),
        (2.6, _partial("u2", _word("stop", 3000, 3200, True))),  # refused: no final
        (3.0, {"type": "error", "code": "overloaded", "utterance_id": "u2"}),
        (
            3.1,
            _final(
                "u1",
                0,
                _word("turn", 10, 210),
                _word("on", 260, 390),
                _word("the", 450, 520),
                _word("light", 1950, 2100),  # 250 ms away: a different word
                _word("lamp", 2550, 2700),  # 150 ms away: the same word
            ),
        ),
    ]
    n, bad = stable_contradictions(events)
    assert n == 5
    assert [b.split("@")[0] for b in bad] == ["of", "light"]
    assert bad[1] == "light@1500-1700 in: turn@10 on@260 the@450 light@1950 lamp@2550"
    assert same_word(_word("a", 0, 100), _word("a", 300, 400))
    assert not same_word(_word("a", 0, 100), _word("a", 301, 400))
    assert not same_word(_word("a", 0, 100), _word("b", 0, 100))


def test_first_appearance_runs_from_speaking_the_word_end_to_the_first_partial_with_it() -> None:
    """Each final word's delay is the first partial holding it minus when its end was spoken
    (its frame's departure less the frame's samples after it)."""
    events = [
        (10.25, _partial("u1", _word("turn", 0, 150, False))),
        (10.35, _partial("u1", _word("turn", 0, 150, True), _word("on", 160, 290, False))),
        (10.45, _partial("u9", _word("off", 300, 390, False))),  # another utterance's word
        (
            10.6,
            _final("u1", 0, _word("turn", 0, 140), _word("on", 170, 280), _word("off", 300, 390)),
        ),
    ]
    report = StreamReport(stream="s", file="f")
    stream = LiveStream(report, events, [1600, 3200, 4800, 6400], [10.0, 10.1, 10.2, 10.3], 16000)
    delays, n_words = first_appearances(stream.events, stream.spoken_time)
    # turn ends at 140 ms (frame 1600-3200 samples left at 10.1): spoken 10.04, seen 10.25;
    # on ends at 280 ms (frame ending at 4800 left at 10.2): spoken 10.18, seen 10.35
    assert delays == pytest.approx([210.0, 170.0])
    assert stream.sent_time(140) == 10.1
    assert stream.spoken_time(200) == pytest.approx(10.1)  # a frame's last sample: its departure
    assert n_words == 3
    assert stable_before_final(events) == 1  # "turn" only: "on" was never stable, "off" is u9's


def test_eager_advance_counts_only_confirmed_results() -> None:
    """An eager result counts when no resumed withdrew it and the final has its results."""
    word = _word("stop", 100, 400)
    events = [
        (5.0, _final("u1", 0, word, kind="eager", emit_ms=200)),
        (5.3, _final("u1", 0, word, emit_ms=500)),
        (6.0, _final("u2", 1, word, kind="eager")),
        (6.1, {"type": "resumed", "utterance_id": "u2"}),
        (7.0, _final("u2", 1, word, kind="eager")),
        (7.2, _final("u2", 1, word)),
        (8.0, _final("u3", 2, word, kind="eager")),
        (8.3, _final("u3", 2, _word("go", 100, 400))),  # differs: not confirmed
    ]
    advances = eager_advances(events)
    assert [round(a) for a, _ in advances] == [300, 200]
    assert [ms for _, ms in advances] == [900.0, 900.0]


def test_eager_lead_over_today_compares_arrivals_relative_to_the_sent_speech_end() -> None:
    """Each run's arrival counts from when its own stream sent the end of speech."""
    word = _word("stop", 100, 400)
    off = LiveStream(
        StreamReport("s", "f"),
        [(20.60, _final("a", 0, word, emit_ms=500)), (21.0, _final("b", 1, _word("go", 0, 1)))],
        [14400, 16000],
        [20.0, 20.1],
        16000,
    )
    on = LiveStream(
        StreamReport("s", "f"),
        [
            (5.35, _final("x", 0, word, kind="eager")),
            (5.62, _final("x", 0, word)),
            (6.0, _final("y", 1, _word("go", 0, 1), kind="eager")),
            (6.1, {"type": "resumed", "utterance_id": "y"}),
            (6.5, _final("y", 1, _word("go", 0, 1))),
        ],
        [14400, 16000],
        [5.0, 5.1],
        16000,
    )
    # end_ms 900 -> sample 14400, sent at 20.0 (off) and 5.0 (on): 600 ms vs 350 ms after it
    leads = eager_leads_over_today(off, on)
    assert [round(a) for a, _ in leads] == [250]
    assert [ms for _, ms in leads] == [900.0]


def test_finals_compared_without_timings_and_ids_and_the_table() -> None:
    """Finals match by stream and seq, timings and ids aside; the table shows every target."""
    go, stop = _word("go", 0, 300), _word("stop", 0, 300)

    def stream(*events: tuple[float, dict[str, Any]]) -> LiveStream:
        return LiveStream(StreamReport("s", "f"), list(events), [1600], [1.0], 16000)

    off = [stream((1.0, _final("a", 0, go)), (2.0, _final("b", 1, go)), (3.0, _final("c", 2, go)))]
    on = [
        stream(
            (0.8, _partial("x", _word("go", 0, 300, True))),
            (0.9, _final("x", 0, go, kind="eager")),
            (1.1, {**_final("x", 0, go, emit_ms=9.0), "lag_ms": 3.0}),
            (2.0, _final("y", 1, stop)),
        )
    ]
    figures = measure(off, on)
    assert figures["finals"] == {
        "matched": 2,
        "identical": 1,
        "only_off": 1,
        "only_on": 0,
        "differing": ["s#1"],
    }
    assert (figures["stable_words"], figures["stable_contradicted"]) == (1, 0)
    assert figures["eager_confirmed_commands"] == 1
    assert figures["eager_lead_over_today_one_second"] == 1  # 900 ms of speech: a 1 s command
    assert figures["counts"]["on"] == {"partial": 1, "eager": 1, "resumed": 0, "utterance": 2}
    run = summarize(
        [StreamReport("s", "f", audio_s=3.0)], wall_s=3, cpu_s=1, peak_rss_mb=1, realtime=True
    )
    figures |= {"engine_share": 0.05, "engine_share_max": 0.3}
    figures["runs"] = {
        "off": {**run, "daemon_batches": None},
        "on": {**run, "daemon_batches": {"busy_s": 1.0, "partials_busy_s": 0.1}},
    }
    table = format_partials_table(figures)
    assert (
        "| finals, partials+eager on vs off | identical "
        "| 1 / 2 identical (1 only off, 0 only on) | no |" in table
    )
    stable_row = "| stable words later contradicted by the final | ≤ 2% | 0.0% (0 / 1; "
    assert f"{stable_row}1 / 2 final words were stable first) | yes |" in table
    one_second = "| eager before today's final, 1 s commands (0.75-1.25 s), p50 | (informative) "
    assert one_second in table
    assert "ms (1 utterances) | yes |" in table
    assert "| engine time on partials | ≤ 30% | 5.0% | yes |" in table
    assert "| on | 3 | 1 | 1 | 0 | 2 (0) |" in table
    assert "| 1.0 | 0.1 |" in table


def test_stream_audio_is_seeded_and_ends_with_a_pause() -> None:
    """A stream's audio is the same on every call: lead-in noise, files, pauses, past its length."""
    clip = np.full(8000, 0.5, dtype=np.float32)
    audio = stream_audio([clip], 3, rate_hz=16000, duration_s=4.0)
    assert np.array_equal(audio, stream_audio([clip], 3, rate_hz=16000, duration_s=4.0))
    assert audio.size >= 4 * 16000
    assert np.abs(audio[:16000]).max() < 0.01
    assert np.array_equal(audio[16000:24000], clip)
    assert np.abs(audio[-int(PAUSE_S[0] * 16000) :]).max() < 0.01

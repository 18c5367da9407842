"""`streamer transcribe` reads a file ahead: its own quiet lead-in, and times from its start."""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
AUDIO = REPO.parent / "shared" / "audio"
CTC = f"commands-ctc={REPO / 'exported' / 'commands-ctc'}"


def _transcribe(files: list[Path], *env: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["env", *env, sys.executable, "-m", "streamer", "--model", CTC, "transcribe", "--jsonl"]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_trimmed_clips_of_unseen_speakers_each_give_one_utterance() -> None:
    """FSDD clips start at the digit: no silence before it to learn a noise floor from. Read as
    a file (the file's quietest 150 ms heard first), all 80 jackson and lucas clips give exactly
    one utterance (74 without the lead-in; the webrtc detector: 77 and 70); times count from
    the file's first sample."""
    clips = sorted(AUDIO.glob("fsdd/*_jackson_*.wav")) + sorted(AUDIO.glob("fsdd/*_lucas_*.wav"))
    assert len(clips) == 80, f"shared FSDD clips missing under {AUDIO / 'fsdd'}"
    events = _transcribe(clips)
    assert all(e["type"] == "utterance" for e in events), events
    per_file = collections.Counter(str(e["stream"]) for e in events)
    assert max(per_file.values()) == 1
    assert len(per_file) >= 78, f"{80 - len(per_file)} clips gave no utterance"
    seconds = {c.stem: sf.info(str(c)).duration for c in clips}
    for e in events:
        start, end = e["start_ms"], e["end_ms"]
        assert 0.0 <= start < end <= seconds[str(e["stream"])] * 1000.0 + 1.0, e


def test_the_lead_in_is_a_setting() -> None:
    """`segmenter.file_lead_in_ms = 0` reads a file as a live stream hears it: fewer clips of the
    same 80 give their utterance (74 measured)."""
    clips = sorted(AUDIO.glob("fsdd/*_jackson_*.wav")) + sorted(AUDIO.glob("fsdd/*_lucas_*.wav"))
    off = _transcribe(clips, "STREAMER_SEGMENTER_FILE_LEAD_IN_MS=0")
    assert len({e["stream"] for e in off}) < 78


def test_a_file_at_another_rate_gets_the_same_utterance(tmp_path: Path) -> None:
    """The lead-in is resampled with the file: an 8 kHz copy of a trimmed clip gives the same
    one utterance, at the same times within two segmenter frames."""
    clip = AUDIO / "fsdd" / "6_lucas_2.wav"  # no utterance at all without the lead-in
    samples, rate = sf.read(str(clip), dtype="float32")
    low = tmp_path / "6_lucas_2_8k.wav"
    sf.write(str(low), soxr.resample(samples, rate, 8000), 8000)
    (a,), (b,) = _transcribe([clip]), _transcribe([low])
    assert a["type"] == b["type"] == "utterance"
    assert abs(a["start_ms"] - b["start_ms"]) <= 60.0
    assert abs(a["end_ms"] - b["end_ms"]) <= 60.0


async def _file_cuts(tmp_path: Path, samples: Any, rate: int, **segmenter: Any) -> list[Any]:
    """The utterances `streamer transcribe`'s file path cuts from ``samples`` (a tiny model),
    their sample numbers counted from the file's first sample (the lead-in taken off)."""
    from onnx_graphs import write_bundle

    from streamer import app
    from streamer.config import Config
    from streamer.segmenter import UtteranceReady
    from streamer.segmenter_config import SegmenterConfig
    from streamer.streams.feed import run_file
    from streamer.streams.pipeline import StreamPipeline

    config = Config(segmenter=SegmenterConfig(**segmenter))
    folder = tmp_path / "-".join(f"{k}{v}" for k, v in segmenter.items())
    services = app.build_services(config, {"ctc": write_bundle(folder)})
    seen: list[UtteranceReady] = []
    pipelines: list[StreamPipeline] = []

    def spy(pipeline: StreamPipeline) -> None:
        pipelines.append(pipeline)
        for name in ("feed", "flush"):
            method = getattr(pipeline.segmenter, name)

            def wrapped(*args: Any, method: Any = method) -> Any:
                events = method(*args)
                seen.extend(e for e in events if isinstance(e, UtteranceReady))
                return events

            setattr(pipeline.segmenter, name, wrapped)

    claim = services.streams.admit("f")
    await run_file(services, samples, rate_hz=rate, claim=claim, on_pipeline=spy)
    services.runner.close()
    lead = pipelines[0].origin_samples
    return [
        dataclasses.replace(
            u,
            speech_start_sample=u.speech_start_sample - lead,
            speech_end_sample=u.speech_end_sample - lead,
            audio_start_sample=u.audio_start_sample - lead,
        )
        for u in seen
    ]


def _sentence_then_noise(seconds: float) -> tuple[Any, int]:
    samples, rate = sf.read(str(AUDIO / "sent_harvard_spk1_snt1.wav"), dtype="float32")
    assert rate == 16_000
    pause = np.random.default_rng(0).normal(0.0, 3e-4, round(rate * seconds))
    return np.concatenate((samples, pause.astype(np.float32))), rate


async def test_a_files_utterances_keep_the_longer_file_post_roll(tmp_path: Path) -> None:
    """Nothing waits on a file's cut, so its utterances keep ``segmenter.file_post_roll_ms``
    (400) after their speech where a live stream keeps ``post_roll_ms`` (200, what an eager
    result waits for); the speech bounds are the same either way."""
    samples, rate = _sentence_then_noise(1.0)  # 1 s of faint noise after the sentence
    longer = await _file_cuts(tmp_path, samples, rate, file_post_roll_ms=400, file_tail_ms=0)
    live = await _file_cuts(tmp_path, samples, rate, file_post_roll_ms=200, file_tail_ms=0)
    assert longer
    assert len(longer) == len(live)
    for a, b in zip(longer, live, strict=True):
        assert (a.speech_start_sample, a.speech_end_sample) == (
            b.speech_start_sample,
            b.speech_end_sample,
        )
        assert b.audio_end_sample - b.speech_end_sample == 7 * 480  # 200 ms in 30 ms frames
        assert a.audio_end_sample - a.speech_end_sample > 10 * 480


async def test_a_files_last_utterance_keeps_a_short_tail_to_the_files_end(tmp_path: Path) -> None:
    """A word that fades out into the file's last samples is not cut short: an utterance cut
    within ``segmenter.file_tail_ms`` of the file's end is held and keeps every sample to the
    end; a longer tail is cut as before. The speech bounds never move."""
    short, rate = _sentence_then_noise(1.0)
    (kept,) = await _file_cuts(tmp_path, short, rate, file_tail_ms=1000)
    (cut,) = await _file_cuts(tmp_path, short, rate, file_tail_ms=0)
    assert kept.audio_end_sample == short.size  # every sample, the partial frame too
    assert cut.audio_end_sample < short.size - 480
    assert (kept.speech_start_sample, kept.speech_end_sample) == (
        cut.speech_start_sample,
        cut.speech_end_sample,
    )
    np.testing.assert_array_equal(kept.audio[: cut.audio.size], cut.audio)
    long, _ = _sentence_then_noise(3.0)
    (far,) = await _file_cuts(tmp_path, long, rate, file_tail_ms=1000)
    assert far.audio_end_sample == cut.audio_end_sample


async def test_a_word_in_the_files_tail_is_its_own_utterance(tmp_path: Path) -> None:
    """The held utterance does not swallow a word that starts in the file's tail: two FSDD
    digits 0.6 s apart, 0.5 s before the file's end, give the same two utterances with and
    without ``file_tail_ms`` (2 s: the first is held too), the first with the same audio; only
    the last keeps the file's end."""
    names = ("7_lucas_0.wav", "3_jackson_0.wav")
    words = [sf.read(str(AUDIO / "fsdd" / n), dtype="float32")[0] for n in names]
    noise = np.random.default_rng(1).normal(0.0, 3e-4, 16_000).astype(np.float32)
    samples = np.concatenate((noise[:8000], words[0], noise[:9600], words[1], noise[:8000]))
    held = await _file_cuts(tmp_path, samples, 16_000, file_tail_ms=2000)
    plain = await _file_cuts(tmp_path, samples, 16_000, file_tail_ms=0)
    assert len(held) == len(plain) == 2
    assert [(u.speech_start_sample, u.speech_end_sample) for u in held] == [
        (u.speech_start_sample, u.speech_end_sample) for u in plain
    ]
    np.testing.assert_array_equal(held[0].audio, plain[0].audio)
    assert plain[1].audio_end_sample < held[1].audio_end_sample == samples.size

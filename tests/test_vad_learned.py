"""The learned frame detector: numpy equals torch, the shipped weights on real speech, errors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamer.errors import ConfigError
from streamer.segmenter import Segmenter, UtteranceReady
from streamer.segmenter_config import SegmenterConfig
from streamer.vad_learned import (
    DEFAULT_MODEL,
    FRAME_SAMPLES,
    N_FEATURES,
    FeatureTracker,
    LearnedVad,
    frame_features,
    load_weights,
    webrtc_verdicts,
)

REPO = Path(__file__).resolve().parents[1]
AUDIO = REPO.parent / "shared" / "audio"


def test_numpy_network_matches_torch(tmp_path: Path) -> None:
    """Random torch weights saved as the trainer saves them score the same frames the same."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    inp, gru, out = (
        torch.nn.Linear(N_FEATURES, 16),
        torch.nn.GRU(16, 16, batch_first=True),
        (torch.nn.Linear(16, 1)),
    )
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(FRAME_SAMPLES * 40) * 0.05).astype(np.float32)
    audio[FRAME_SAMPLES * 10 : FRAME_SAMPLES * 20] *= 10
    frames = audio.reshape(40, FRAME_SAMPLES)
    raw = frame_features(frames, webrtc_verdicts(frames))
    mean, std = raw.mean(axis=0), raw.std(axis=0) + 1.0
    arrays = {f"inp.{k}": v for k, v in inp.state_dict().items()}
    arrays |= {f"gru.{k}": v for k, v in gru.state_dict().items()}
    arrays |= {f"out.{k}": v for k, v in out.state_dict().items()}
    path = tmp_path / "vad.npz"
    np.savez(path, norm_mean=mean, norm_std=std, **{k: v.numpy() for k, v in arrays.items()})
    with torch.no_grad():
        x = torch.from_numpy((raw - mean) / std)[None]
        want = torch.sigmoid(out(gru(torch.relu(inp(x)))[0])).numpy().ravel()
    vad = LearnedVad(model=path)
    got = np.array([vad.score(f) for f in frames])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_frame_by_frame_features_equal_the_trainers() -> None:
    """The runtime's per-frame features (floor included) are the trainer's, exactly."""
    rng = np.random.default_rng(0)
    gains = np.repeat(rng.uniform(0.001, 0.3, 120), FRAME_SAMPLES)
    frames = (rng.standard_normal(FRAME_SAMPLES * 120) * gains).astype(np.float32)
    frames = frames.reshape(120, FRAME_SAMPLES)
    tracker = FeatureTracker()
    got = np.stack([tracker(f) for f in frames])
    np.testing.assert_array_equal(got, frame_features(frames, webrtc_verdicts(frames)))


def test_shipped_model_hears_a_real_sentence_and_not_the_silence_around_it() -> None:
    path = AUDIO / "sent_harvard_spk1_snt1.wav"
    assert path.exists(), f"shared speech material missing: {path}"
    speech, rate = sf.read(path, dtype="float32")
    assert rate == 16_000
    rng = np.random.default_rng(1)
    x = np.concatenate([np.zeros(16_000, np.float32), speech, np.zeros(16_000, np.float32)])
    x = (x + rng.standard_normal(x.size) * 10 ** (-60 / 20)).astype(np.float32)
    vad = LearnedVad()
    scores = np.array([vad.score(f) for f in x[: x.size // 480 * 480].reshape(-1, 480)])
    lead, tail = scores[: 16_000 // 480 - 3], scores[-(16_000 // 480) + 10 :]
    assert lead.max() < 0.5
    assert tail.max() < 0.5
    assert np.median(scores[16_000 // 480 + 10 : -(16_000 // 480) - 10]) > 0.5


def test_a_trimmed_clip_starting_inside_speech_gives_its_utterance() -> None:
    """The network needs no noise floor: speech from the first sample opens an utterance."""
    clips = sorted((AUDIO / "fsdd").glob("*.wav"))
    assert clips, f"shared speech material missing: {AUDIO / 'fsdd'}"
    found = 0
    for clip in clips[:20]:
        samples, rate = sf.read(clip, dtype="float32")
        assert rate == 16_000
        seg = Segmenter(SegmenterConfig(vad="learned"))
        events = seg.feed(samples) + seg.flush()
        found += sum(isinstance(e, UtteranceReady) for e in events) == 1
    assert found >= 19


def _opened(x: np.ndarray) -> int:
    seg = Segmenter(SegmenterConfig(vad="learned"))
    return sum(isinstance(e, UtteranceReady) for e in seg.feed(x) + seg.flush())


def _quiet(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(4)
    return (rng.standard_normal(round(seconds * 16_000)) * 10 ** (-70 / 20)).astype(np.float32)


def _sweep_then_quiet() -> np.ndarray:
    """A tone sweeping 200 Hz to 4 kHz in 1 s at -20 dBFS opening a stream, then 2 s quiet."""
    t = np.arange(16_000) / 16_000
    sweep = 0.1 * np.sin(2 * np.pi * (200 * t + 3800 * t**2 / 2))
    return np.concatenate([sweep.astype(np.float32), _quiet(2.0)])


def _rumble_then_quiet() -> np.ndarray:
    """1.5 s of a real low-frequency noise recording opening a stream, then 2 s quiet."""
    path = AUDIO / "nonspeech_noise3.wav"
    assert path.exists(), f"shared speech material missing: {path}"
    rumble, _ = sf.read(path, dtype="float32")
    return np.concatenate([rumble[:24_000], _quiet(2.0)])


@pytest.mark.parametrize("make", [_sweep_then_quiet, _rumble_then_quiet])
def test_a_tone_or_rumble_opening_a_stream_starts_nothing(
    make: Callable[[], np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shape gate: with no floor yet, the network alone calls these speech (checked below
    with the gate off), the gate keeps them from starting an utterance."""
    x = make()
    assert _opened(x) == 0
    monkeypatch.setattr("streamer.vad_learned.GATE_BANDS", 0)
    monkeypatch.setattr("streamer.vad_learned.GATE_LOW_DB", 200.0)
    assert _opened(x) == 1, "without the gate the network opens an utterance here"


def test_the_gate_lets_a_sentence_start_after_a_tone() -> None:
    speech, _ = sf.read(AUDIO / "sent_harvard_spk1_snt1.wav", dtype="float32")
    x = np.concatenate([_sweep_then_quiet(), speech, np.zeros(16_000, np.float32)])
    seg = Segmenter(SegmenterConfig(vad="learned"))
    (utt,) = [e for e in seg.feed(x) + seg.flush() if isinstance(e, UtteranceReady)]
    assert 3 * 16_000 - 480 * 10 <= utt.speech_start_sample <= 3 * 16_000 + 16_000 // 2


def test_other_frame_sizes_and_bad_files_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="30 ms"):
        LearnedVad(frame_ms=20)
    with pytest.raises(ConfigError, match="30 ms"):
        Segmenter(SegmenterConfig(vad="learned", frame_ms=10))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot read"):
        LearnedVad(model=bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, norm_mean=np.zeros(N_FEATURES, np.float32))
    with pytest.raises(ConfigError, match="missing arrays"):
        LearnedVad(model=partial)


def test_shipped_weights_load() -> None:
    weights = load_weights(DEFAULT_MODEL)
    assert weights["norm_mean"].shape == (N_FEATURES,)


async def test_the_daemon_serves_with_the_learned_detector_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`segmenter.vad = "learned"` through a real daemon: a trimmed real digit (speech from its
    first sample) gives its transcript, and the log names the detector in use."""
    from live_server import config, running, stream_recording

    clip = AUDIO / "fsdd" / "7_jackson_0.wav"
    assert clip.is_file(), f"shared speech material missing: {clip}"
    samples, _ = sf.read(clip, dtype="float32")
    models = {"commands-ctc": REPO / "exported" / "commands-ctc"}
    with caplog.at_level(logging.INFO, logger="streamer.app"):
        async with running(config(segmenter={"vad": "learned"}), models) as daemon:
            events = await stream_recording(daemon.url, "digit", samples)
    assert "segmenter: learned voice-activity detector" in caplog.text
    finals = [e for e in events if e["type"] == "utterance"]
    assert len(finals) == 1
    assert finals[0]["transcript"]["text"] == "seven"


def test_a_lecture_pause_ends_the_utterance() -> None:
    """A recorded lecture (60 s, pauses of up to 2.2 s): no utterance is ended by
    ``max_utterance_s``, none is longer than 20 s (measured 7, the longest 18.8 s; webrtc 8,
    18.6 s). The network trained before inner pauses were labelled gave a 30 s forced cut."""
    path = AUDIO / "long_lecture_silero_test.wav"
    assert path.exists(), f"shared speech material missing: {path}"
    x, rate = sf.read(path, dtype="float32")
    assert rate == 16_000
    seg = Segmenter(SegmenterConfig(vad="learned"))
    utts = [e for e in seg.feed(x) + seg.flush() if isinstance(e, UtteranceReady)]
    longest = max(u.speech_end_sample - u.speech_start_sample for u in utts) / 16_000
    assert not any(u.forced_cut for u in utts)
    assert longest < 20, f"{len(utts)} utterances, the longest {longest:.1f} s"


def test_training_labels_long_inner_pauses_non_speech() -> None:
    """The trainer's truth: a pause of 0.8 s inside an utterance (50 dB down) is non-speech but
    for 50 ms at each side; one of 0.4 s stays speech, as does the quiet around a word."""
    from streamer_training.train_vad import inner_pauses

    rate = 16_000
    rng = np.random.default_rng(0)

    def part(seconds: float, db: float) -> np.ndarray:
        return rng.standard_normal(int(seconds * rate)) * 10 ** (db / 20)

    seg = np.concatenate([part(0.5, -20), part(0.8, -70), part(0.5, -20), part(0.4, -70)])
    seg = np.concatenate([seg, part(0.5, -20)])
    lab = inner_pauses(seg, np.ones(seg.size, np.float32))
    long_pause = lab[int(0.5 * rate) : int(1.3 * rate)]
    assert long_pause[: int(0.04 * rate)].all()
    assert long_pause[-int(0.04 * rate) :].all()
    assert not long_pause[int(0.07 * rate) : -int(0.07 * rate)].any()
    assert lab[int(1.8 * rate) : int(2.2 * rate)].all()  # 0.4 s: shorter than PAUSE_MIN_S
    assert lab[: int(0.5 * rate)].all()
    assert lab[-int(0.5 * rate) :].all()

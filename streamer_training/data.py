"""Training and evaluation corpora: espeak-ng commands and real FSDD digits (single and strings).

Splits are by voice or speaker, never by utterance: synthetic training audio uses the training
accents and variants of :mod:`streamer_training.synth`, the synthetic test set only held-out ones;
FSDD training uses two speakers and holds the third out entirely. FSDD recordings with index 0-3
(the copies in the shared test audio) are never trained on, for any speaker.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from streamer_training import augment, grammar, piper, synth

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
FSDD_SPEAKERS: tuple[str, ...] = ("george", "jackson", "lucas")
SHORT_S = 1.5
"""Longest synthetic clip drawn during the short-utterance curriculum phase."""
P_FSDD_SPEED = 0.7
"""Share of FSDD training items played faster or slower (a new virtual speaker each time)."""
FSDD_SPEED_RANGE = (0.85, 1.15)
"""Speed-perturbation factors for FSDD items: two real training speakers are too few to
generalise to a third, so each perturbed item is a speaker with pitch and formants shifted."""
P_PIPER_SPEED = 0.7
"""Share of Piper items played faster or slower: one voice, many virtual speakers."""
PIPER_SPEED_RANGE = (0.85, 1.2)
FSDD_TEST_INDICES = frozenset(range(4))
"""FSDD recording indices kept out of training for every speaker (they are the test copies)."""


@dataclass
class Utterance:
    """One audio clip with its transcript and labels."""

    audio: np.ndarray
    text: str
    intent: str
    room: str
    source: str


@dataclass
class Corpus:
    """A list of utterances that can be saved to and loaded from one ``.npz`` file."""

    items: list[Utterance]

    def save(self, path: Path) -> None:
        """Write the corpus (audio as int16) to ``path``."""
        lengths = np.array([len(u.audio) for u in self.items], dtype=np.int64)
        audio = np.concatenate([u.audio for u in self.items]) if self.items else np.zeros(0)
        pcm = (np.clip(audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            pcm=pcm,
            lengths=lengths,
            texts=np.array([u.text for u in self.items]),
            intents=np.array([u.intent for u in self.items]),
            rooms=np.array([u.room for u in self.items]),
            sources=np.array([u.source for u in self.items]),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Corpus:
        """Read a corpus written by :meth:`save`."""
        with np.load(path) as z:
            pcm = z["pcm"]
            ends = np.cumsum(z["lengths"])
            starts = ends - z["lengths"]
            items = [
                Utterance(
                    audio=pcm[s:e].astype(np.float32) / 32768.0,
                    text=str(t),
                    intent=str(i),
                    room=str(r),
                    source=str(src),
                )
                for s, e, t, i, r, src in zip(
                    starts, ends, z["texts"], z["intents"], z["rooms"], z["sources"], strict=True
                )
            ]
        return cls(items)


def build_synthetic(
    n: int,
    *,
    heldout: bool,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> Corpus:
    """Speak ``n`` grammar commands (intents balanced) with training or held-out voices."""
    rng = random.Random(seed)
    items: list[Utterance] = []
    for k in range(n):
        intent = grammar.INTENTS[k % len(grammar.INTENTS)]
        cmd = grammar.sample_command(rng, intent=intent)
        voice = synth.random_voice(rng, heldout=heldout)
        audio = synth.synthesize(cmd.text, voice)
        items.append(Utterance(audio, cmd.text, cmd.intent, cmd.room, f"espeak:{voice.name}"))
        if progress is not None:
            progress(k + 1)
    return Corpus(items)


def build_piper(
    n: int,
    *,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> Corpus:
    """Speak ``n`` grammar commands (intents balanced) with the Piper voice, random prosody.

    Raises:
        SynthError: the voice package or espeak-ng is missing.
    """
    voice = piper.PiperVoice.bundled()
    rng = random.Random(seed)
    items: list[Utterance] = []
    for k in range(n):
        cmd = grammar.sample_command(rng, intent=grammar.INTENTS[k % len(grammar.INTENTS)])
        audio = voice.synthesize(cmd.text, piper.random_prosody(rng))
        items.append(Utterance(audio, cmd.text, cmd.intent, cmd.room, piper.VOICE_NAME))
        if progress is not None:
            progress(k + 1)
    return Corpus(items)


@dataclass(frozen=True)
class FsddClip:
    """One FSDD recording, resampled to 16 kHz."""

    digit: int
    speaker: str
    index: int
    audio: np.ndarray


def load_fsdd(root: Path) -> list[FsddClip]:
    """Read every ``DIGIT_SPEAKER_INDEX.wav`` under ``root`` (8 kHz) as 16 kHz float32."""
    clips: list[FsddClip] = []
    for path in sorted(root.glob("*_*_*.wav")):
        digit_s, speaker, index_s = path.stem.split("_")
        audio, rate_hz = sf.read(str(path), dtype="float32")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        audio16 = soxr.resample(audio, rate_hz, SAMPLE_RATE_HZ).astype(np.float32)
        clips.append(FsddClip(int(digit_s), speaker, int(index_s), audio16))
    return clips


def fsdd_split(
    clips: Sequence[FsddClip], *, heldout_speaker: str
) -> tuple[list[FsddClip], list[FsddClip]]:
    """Split into (train, test): other speakers minus the test indices; the held-out speaker."""
    train = [c for c in clips if c.speaker != heldout_speaker and c.index not in FSDD_TEST_INDICES]
    test = [c for c in clips if c.speaker == heldout_speaker]
    return train, test


def concat_digits(
    clips: Sequence[FsddClip], rng: np.random.Generator, *, n_digits: int
) -> Utterance:
    """Join ``n_digits`` recordings of one speaker with 50-400 ms gaps and a low noise floor."""
    speaker = clips[int(rng.integers(len(clips)))].speaker
    pool = [c for c in clips if c.speaker == speaker]
    parts: list[np.ndarray] = []
    words: list[str] = []
    for k in range(n_digits):
        clip = pool[int(rng.integers(len(pool)))]
        if k:
            parts.append(np.zeros(int(rng.uniform(0.05, 0.4) * SAMPLE_RATE_HZ), np.float32))
        parts.append(clip.audio)
        words.append(grammar.DIGIT_WORDS[clip.digit])
    audio = np.concatenate(parts)
    audio = audio + rng.standard_normal(len(audio)).astype(np.float32) * 1e-4
    return Utterance(audio, " ".join(words), "digits", "none", f"fsdd:{speaker}")


def pad_silence(audio: np.ndarray, rng: np.random.Generator, *, max_s: float = 0.3) -> np.ndarray:
    """Add 0-``max_s`` s of near-silence before and after (VAD-cut utterances have margins)."""
    lead = np.zeros(int(rng.uniform(0.0, max_s) * SAMPLE_RATE_HZ), np.float32)
    tail = np.zeros(int(rng.uniform(0.0, max_s) * SAMPLE_RATE_HZ), np.float32)
    out = np.concatenate([lead, audio, tail])
    noisy: np.ndarray = out + rng.standard_normal(len(out)).astype(np.float32) * 3e-5
    return noisy


class Mixture:
    """Draws augmented training utterances from synthetic commands and real FSDD digits."""

    def __init__(
        self,
        synthetic: Corpus,
        fsdd_train: Sequence[FsddClip],
        noises: Sequence[np.ndarray],
        *,
        p_fsdd: float,
        piper_corpus: Corpus | None = None,
        p_piper: float = 0.0,
        max_s: float = 3.5,
    ) -> None:
        self._synthetic = [u for u in synthetic.items if len(u.audio) <= max_s * SAMPLE_RATE_HZ]
        self._piper = (
            [u for u in piper_corpus.items if len(u.audio) <= max_s * SAMPLE_RATE_HZ]
            if piper_corpus
            else []
        )
        self._piper_short = [u for u in self._piper if len(u.audio) <= SHORT_S * SAMPLE_RATE_HZ]
        self._p_piper = p_piper
        self._short = [u for u in self._synthetic if len(u.audio) <= SHORT_S * SAMPLE_RATE_HZ]
        self._digit_words = [
            u for u in self._synthetic if u.intent == "digits" and len(u.text.split()) <= 2
        ]
        self._fsdd = list(fsdd_train)
        self._noises = list(noises)
        self._p_fsdd = p_fsdd

    def draw(
        self,
        rng: np.random.Generator,
        *,
        short: bool = False,
        digits: bool = False,
        piper: bool = True,
    ) -> Utterance:
        """Return one augmented utterance.

        Curriculum phases: ``digits`` draws only single digits (real or synthetic, at most two
        words), ``short`` limits clips to about 1.5 s. Outside the digit phase a share
        ``p_fsdd`` of draws is FSDD digits and a share ``p_piper`` of the rest is the Piper voice
        (when a Piper corpus is given and ``piper`` is true; otherwise the draws are those of
        older runs, which had no Piper corpus).
        """
        if digits:
            if self._fsdd and rng.random() < 0.5:
                utt = self._fsdd_item(rng, n_digits=1)
            else:
                utt = self._digit_words[int(rng.integers(len(self._digit_words)))]
            clean = pad_silence(utt.audio, rng)
            audio = augment.augment(clean, self._noises, rng)
            return Utterance(audio, utt.text, utt.intent, utt.room, utt.source)
        if self._fsdd and rng.random() < self._p_fsdd:
            n_digits = 1 if rng.random() < 0.4 else int(rng.integers(2, 3 if short else 5))
            utt = self._fsdd_item(rng, n_digits=n_digits)
        elif self._piper and piper and rng.random() < self._p_piper:
            pool = self._piper_short if short else self._piper
            utt = pool[int(rng.integers(len(pool)))]
            if rng.random() < P_PIPER_SPEED:
                faster = augment.speed(utt.audio, float(rng.uniform(*PIPER_SPEED_RANGE)))
                utt = Utterance(faster, utt.text, utt.intent, utt.room, utt.source)
        else:
            pool = self._short if short else self._synthetic
            utt = pool[int(rng.integers(len(pool)))]
        clean = pad_silence(utt.audio, rng)
        audio = augment.augment(clean, self._noises, rng)
        return Utterance(audio, utt.text, utt.intent, utt.room, utt.source)

    def _fsdd_item(self, rng: np.random.Generator, *, n_digits: int) -> Utterance:
        """A string of FSDD digits of one speaker, speed-perturbed with ``P_FSDD_SPEED``."""
        utt = concat_digits(self._fsdd, rng, n_digits=n_digits)
        if rng.random() < P_FSDD_SPEED:
            utt.audio = augment.speed(utt.audio, float(rng.uniform(*FSDD_SPEED_RANGE)))
        return utt


def noise_paths(audio_dir: Path) -> list[Path]:
    """The real non-speech recordings in the shared audio folder."""
    return sorted(audio_dir.glob("nonspeech_*.wav"))

"""Offline speech synthesis with the espeak-ng command-line tool, resampled to 16 kHz float32.

A :class:`Voice` is an espeak-ng accent plus a voice variant (``en-us+f3``) and prosody (speed in
words per minute, pitch 0-99, word gap). Accents and variants are split into a training and a
held-out set so evaluation hears voices never used in training.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from streamer.errors import StreamerError

SAMPLE_RATE_HZ = 16000

TRAIN_ACCENTS: tuple[str, ...] = (
    "en-us",
    "en-gb",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-029",
    "en-us-nyc",
)
"""espeak-ng English accents used for training data."""
HELDOUT_ACCENTS: tuple[str, ...] = ("en-gb-scotland", "en-gb-x-gbcwmd")
"""Accents never used in training (evaluation only)."""
TRAIN_VARIANTS: tuple[str, ...] = (
    "m1",
    "m2",
    "m4",
    "m6",
    "m7",
    "m8",
    "f1",
    "f3",
    "f5",
    "klatt",
    "klatt3",
    "croak",
    "Andy",
    "anika",
    "belinda",
    "benjamin",
    "david",
    "ed",
    "edward",
    "john",
    "linda",
    "max",
    "paul",
    "rob",
    "robert",
    "steph",
    "travis",
    "victor",
    "zac",
)
"""espeak-ng voice variants used for training data."""
HELDOUT_VARIANTS: tuple[str, ...] = ("m3", "m5", "f2", "f4", "aunty", "grandpa", "shelby", "michel")
"""Variants never used in training (evaluation only)."""


class SynthError(StreamerError):
    """espeak-ng is missing or failed on a sentence."""


@dataclass(frozen=True)
class Voice:
    """One espeak-ng voice: accent, variant and prosody."""

    accent: str
    variant: str
    speed_wpm: int = 165
    pitch: int = 50
    word_gap_10ms: int = 0

    @property
    def name(self) -> str:
        """The espeak-ng ``-v`` argument, e.g. ``en-us+f3``."""
        return f"{self.accent}+{self.variant}"


def random_voice(rng: random.Random, *, heldout: bool) -> Voice:
    """Draw a voice from the training or the held-out accents and variants, random prosody."""
    accents = HELDOUT_ACCENTS if heldout else TRAIN_ACCENTS
    variants = HELDOUT_VARIANTS if heldout else TRAIN_VARIANTS
    return Voice(
        accent=rng.choice(accents),
        variant=rng.choice(variants),
        speed_wpm=rng.randint(120, 220),
        pitch=rng.randint(20, 80),
        word_gap_10ms=rng.choice((0, 0, 0, 1, 2, 4)),
    )


def espeak_available() -> bool:
    """Return True when the ``espeak-ng`` executable is on PATH."""
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """Speak ``text`` with ``voice``; return float32 mono samples at 16 kHz.

    Raises:
        SynthError: espeak-ng is not installed or exits with an error.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SynthError("espeak-ng not found; install it with `apt-get install espeak-ng`")
    cmd = [
        exe,
        "-v",
        voice.name,
        "-s",
        str(voice.speed_wpm),
        "-p",
        str(voice.pitch),
        "-g",
        str(voice.word_gap_10ms),
        "--stdout",
        text,
    ]
    proc = subprocess.run(cmd, capture_output=True, check=False, timeout=30)
    if proc.returncode != 0 or not proc.stdout:
        raise SynthError(f"espeak-ng failed for {voice.name!r}: {proc.stderr.decode()[:200]}")
    audio, rate_hz = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    out = soxr.resample(audio, rate_hz, SAMPLE_RATE_HZ) if rate_hz != SAMPLE_RATE_HZ else audio
    return np.asarray(out, dtype=np.float32)

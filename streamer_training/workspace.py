"""Where the demo pipeline reads and writes, and the sizes and seeds of its corpora.

Shared by the stages (:mod:`streamer_training.pipeline`, :mod:`streamer_training.lm_tuning`) and
the model cards (:mod:`streamer_training.card`), so none of them imports another for a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"
FSDD_ROOT = REPO.parent / "shared" / "datasets" / "fsdd"
HELDOUT_SPEAKER = "lucas"
"""The FSDD speaker the shipped bundles never hear (``--heldout-speaker`` rotates it)."""
N_SYNTH_TRAIN = 9000
N_SYNTH_TEST = 480
SYNTH_TRAIN_SEED = 1
SYNTH_TEST_SEED = 2
N_SYNTH_DEV = 240
"""New sentences in the *training* voices: what the LM fusion weights are tuned on."""
SYNTH_DEV_SEED = 3
N_PIPER_TRAIN = 2000
"""Commands spoken by the Piper voice (SEW-D training only)."""
PIPER_TRAIN_SEED = 4
BUNDLE_NAMES = ("commands-intent", "commands-ctc")
"""The intent model first: the daemon holds a ctc transcript to the grammar of the intent, so
commands-ctc is evaluated with the intents commands-intent gave."""


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes, and the FSDD speaker the run holds out."""

    data_dir: Path
    work_dir: Path
    exported_dir: Path
    heldout_speaker: str = HELDOUT_SPEAKER

    @property
    def synth_train(self) -> Path:
        """Synthetic training corpus."""
        return self.data_dir / "synth_train.npz"

    @property
    def synth_test(self) -> Path:
        """Synthetic held-out-voice corpus."""
        return self.data_dir / "synth_test.npz"

    @property
    def synth_dev(self) -> Path:
        """New sentences in training voices, for tuning the decoder."""
        return self.data_dir / "synth_dev.npz"

    @property
    def piper_train(self) -> Path:
        """Commands in the Piper voice."""
        return self.data_dir / "piper_train.npz"


def relative(path: Path) -> Path:
    """``path`` relative to the working folder when it lies inside it, else as given."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path

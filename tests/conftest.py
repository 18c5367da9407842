"""Shared fixtures: tiny exported bundles (built once per session) and the export helper."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import settings

# Property tests check correctness, not speed: hypothesis's default 200 ms deadline per example
# makes a busy machine look like a bug (test_guard_answers_every_request failed once, with a
# hypothesis ExceptionGroup, while the suite shared the CPU with other work, and passed alone).
settings.register_profile("streamer", deadline=None)
settings.load_profile("streamer")

REPO = Path(__file__).resolve().parents[1]
#: Real speech the tests read; it lives beside the repository (see README "Development").
#: ``STREAMER_SHARED_AUDIO`` names another folder (the suite's own test of this file uses it).
SHARED_AUDIO = Path(os.environ.get("STREAMER_SHARED_AUDIO") or REPO.parent / "shared" / "audio")
EXPORT_ONNX = REPO / "bin" / "export_onnx"
#: Generous: a tiny export takes ~10 s on 2 cores. Scale with STREAMER_TEST_TIMEOUT_FACTOR.
EXPORT_TIMEOUT_S = 300 * float(os.environ.get("STREAMER_TEST_TIMEOUT_FACTOR", "1"))
#: The tiny SEGUE intent model's label sets (one per head, as n_classes=[4, 3]).
INTENT_LABELS = (
    ("activate", "deactivate", "increase", "decrease"),
    ("lights", "music", "heat"),
)


def export_bundle(src: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bin/export_onnx SRC --out OUT *ARGS`` with this interpreter and capture its output."""
    return subprocess.run(
        [sys.executable, str(EXPORT_ONNX), str(src), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=EXPORT_TIMEOUT_S,
        check=False,
    )


def exported(src: Path, out: Path, *args: str) -> Path:
    """Export like :func:`export_bundle` and return ``out``; on failure, fail with its stderr."""
    result = export_bundle(src, out, *args)
    if result.returncode != 0:
        pytest.fail(f"export_onnx exited {result.returncode}: {result.stderr.strip()}")
    return out


@pytest.fixture(scope="session")
def tiny_ctc_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SEW-D CTC checkpoint folder (character vocab, blank 0, delimiter "|")."""
    pytest.importorskip("torch")
    from checkpoints import make_sewd_ctc

    return make_sewd_ctc(tmp_path_factory.mktemp("sewd-ctc-checkpoint"))


@pytest.fixture(scope="session")
def tiny_ctc_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_ctc_checkpoint: Path) -> Path:
    """The tiny SEW-D CTC checkpoint exported by ``bin/export_onnx``; returns the bundle folder."""
    return exported(tiny_ctc_checkpoint, tmp_path_factory.mktemp("bundles") / "sewd-ctc")


@pytest.fixture(scope="session")
def tiny_intent_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random multi-label SEGUE classifier checkpoint (n_classes [4, 3], no id2label)."""
    pytest.importorskip("torch")
    from checkpoints import make_segue

    return make_segue(tmp_path_factory.mktemp("segue-intent-checkpoint"), [4, 3])


@pytest.fixture(scope="session")
def tiny_intent_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_intent_checkpoint: Path
) -> Path:
    """The tiny SEGUE intent bundle: ``logits_0`` [batch, 4], ``logits_1`` [batch, 3], embedding.

    Labels are :data:`INTENT_LABELS`, given with ``--labels`` as SEGUE configs carry no id2label.
    """
    labels = ";".join(",".join(group) for group in INTENT_LABELS)
    out = tmp_path_factory.mktemp("bundles") / "segue-intent"
    return exported(tiny_intent_checkpoint, out, "--labels", labels)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Without the shared recordings, skip (with one reason) every test of a module reading them.

    Such a module names the folder ``AUDIO`` or uses a helper module that does
    (``live_server.speech``); the rest of the suite still runs. In CI (``CI=true``) a missing
    folder is a setup error instead: the run stops with one line naming it, never a silent skip.

    Raises:
        pytest.UsageError: in CI, a collected test needs the recordings and they are absent.
    """
    if SHARED_AUDIO.is_dir():
        return
    needing = [
        item
        for item in items
        if (module := getattr(item, "module", None)) is not None and _reads_shared_audio(module)
    ]
    if needing and running_in_ci():
        raise pytest.UsageError(
            f"the shared speech recordings are missing: {SHARED_AUDIO} is not a folder, and "
            f"{len(needing)} collected tests read them (CI never skips them; see README "
            '"Development")'
        )
    skip = pytest.mark.skip(reason=f"needs the shared speech recordings, absent: {SHARED_AUDIO}")
    for item in needing:
        item.add_marker(skip)


def running_in_ci() -> bool:
    """The ``CI`` environment variable is set to a true value, as CI services set it."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _reads_shared_audio(module: ModuleType) -> bool:
    """The module names the shared folder ``AUDIO``, or imports a helper from one that does."""
    if getattr(module, "AUDIO", None) == SHARED_AUDIO:
        return True
    for value in vars(module).values():
        owner = sys.modules.get(getattr(value, "__module__", None) or "")
        if (
            owner is not None
            and owner is not module
            and getattr(owner, "AUDIO", None) == SHARED_AUDIO
        ):
            return True
    return False

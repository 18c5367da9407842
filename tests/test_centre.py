"""Centring a speech-embedding bundle: a really exported tiny SEGUE student, real speech."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_AUDIO as AUDIO, exported
from onnx_graphs import write_bundle

from streamer.engine.bundles import load_manifest
from streamer_training.centre import (
    PARITY_NOTE,
    centre_bundle,
    embedding_mean,
    main,
    training_choice,
)
from streamer_training.evaluate import Bundle, load_audio

pytestmark = pytest.mark.export

CLIPS = ("cmd_living_room_light.wav", "digits_tidigits_2934z.wav", "sent_harvard_spk1_snt1.wav")


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [load_audio(AUDIO / name) for name in CLIPS]


@pytest.mark.parametrize("quantize", [False, True])
def test_the_centred_bundle_gives_the_embedding_minus_the_mean(
    tmp_path: Path, clips: list[np.ndarray], quantize: bool
) -> None:
    pytest.importorskip("torch")
    from checkpoints import make_segue

    args = ("--task", "embed", *(("--quantize", "int8") if quantize else ()))
    bundle = exported(make_segue(tmp_path / "segue", projection_dim=24), tmp_path / "b", *args)
    mean = embedding_mean(bundle, clips)
    assert mean.shape == (24,)
    assert np.linalg.norm(mean) > 0
    centred = centre_bundle(bundle, tmp_path / "centred", mean)
    before, after = Bundle(bundle), Bundle(centred)
    for clip in clips:
        want = before.run(clip)[0][0] - mean
        np.testing.assert_allclose(after.run(clip)[0][0], want, atol=1e-4)
    assert np.linalg.norm(embedding_mean(centred, clips)) < 1e-4
    manifest = load_manifest(centred)
    assert manifest == dataclasses.replace(load_manifest(bundle), parity=manifest.parity)
    assert manifest.parity is not None
    assert manifest.parity.compared.endswith(PARITY_NOTE)


def test_a_bundle_without_an_embedding_bias_is_refused_by_name(
    tmp_path: Path, clips: list[np.ndarray]
) -> None:
    ctc = write_bundle(tmp_path / "ctc")
    with pytest.raises(ValueError, match="no 'embedding' output"):
        embedding_mean(ctc, clips[:1])
    with pytest.raises(ValueError, match="'embedding' is not an Add or Gemm of a float bias"):
        centre_bundle(ctc, tmp_path / "out", np.zeros(4))
    assert not (tmp_path / "out").exists()


def test_a_mean_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from checkpoints import make_segue

    bundle = exported(make_segue(tmp_path / "segue", projection_dim=24), tmp_path / "b")
    with pytest.raises(ValueError, match=r"mean of shape \(4,\) for a bias of shape \(24,\)"):
        centre_bundle(bundle, tmp_path / "out", np.zeros(4))
    with pytest.raises(ValueError, match="another folder"):
        centre_bundle(bundle, tmp_path / "b", np.zeros(24))
    assert (bundle / "model.onnx").is_file()


def test_the_command_names_the_missing_training_data(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--bundle", str(tmp_path), "--out", str(tmp_path / "o"), "--data", "nope.npz"])
    assert exit_info.value.code == 2


def test_the_centring_clips_are_a_seeded_choice_without_repeats() -> None:
    """The trainer's evaluations and the command centre on the same kind of choice."""
    picked = training_choice(1000, 200, seed=3)
    assert len(set(picked)) == 200
    assert picked == sorted(picked)
    assert all(0 <= i < 1000 for i in picked)
    assert training_choice(1000, 200, seed=3) == picked
    assert training_choice(1000, 200, seed=4) != picked
    assert training_choice(5, 200, seed=3) == [0, 1, 2, 3, 4]  # fewer clips than asked: all

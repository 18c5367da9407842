"""Weights recovered from an exported bundle are the exported model's (fine-tuning a release)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer_training import loop, train_ctc

REPO = Path(__file__).resolve().parents[1]
SMALL = train_ctc.CtcRecipe(hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64)


def _export(source: Path, out: Path, *args: str) -> Path:
    command = [sys.executable, str(REPO / "bin" / "export_onnx"), str(source), "--out", str(out)]
    subprocess.run([*command, *args], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("quantize", [False, True])
def test_recovered_weights_give_the_exported_models_outputs(tmp_path: Path, quantize: bool) -> None:
    torch = pytest.importorskip("torch", reason="torch is part of the export extra")
    from streamer_training.recover import load_released

    torch.manual_seed(1)
    trained = train_ctc.build_model(SMALL)
    with torch.no_grad():  # a "trained" model: no parameter at its initial value
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    train_ctc.save_hf(trained, tmp_path / "hf")
    args = ("--quantize", "int8") if quantize else ()
    bundle = _export(tmp_path / "hf", tmp_path / "bundle", *args)

    torch.manual_seed(2)
    fresh = train_ctc.build_model(SMALL)
    load_released(fresh, bundle, train_ctc.save_hf)
    trained.eval()
    fresh.eval()
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    values = torch.from_numpy(loop.normalize(audio))[None]
    with torch.inference_mode():
        want = trained(values).logits.numpy()
        got = fresh(values).logits.numpy()
    # fp32: the same weights; int8: MatMul weights rounded to 8 bits
    assert np.abs(got - want).max() < (0.05 if quantize else 1e-4)


def test_a_segue_classifier_is_recovered_from_int8_too(tmp_path: Path) -> None:
    """wav2vec 2.0's weight-normed positional conv and int8's transposed heads come back."""
    torch = pytest.importorskip("torch", reason="torch is part of the export extra")
    from streamer_training import train_intent
    from streamer_training.recover import load_released

    recipe = train_intent.IntentRecipe(hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64)

    def save(model: object, folder: Path) -> None:
        train_intent.save_segue(model, recipe, folder)

    torch.manual_seed(1)
    trained = train_intent.build_model(recipe)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save(trained, tmp_path / "hf")
    bundle = _export(tmp_path / "hf", tmp_path / "bundle", "--quantize", "int8")

    torch.manual_seed(2)
    fresh = train_intent.build_model(recipe)
    head = fresh.ctc_head.weight.detach().clone()
    load_released(fresh, bundle, save, skip=("ctc_head.",))
    assert torch.equal(fresh.ctc_head.weight, head)  # not in the graph: left as built
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    values = torch.from_numpy(loop.normalize(audio))[None]
    mask = torch.ones(values.shape, dtype=torch.long)
    trained.eval()
    fresh.eval()
    with torch.inference_mode():
        want = [t.numpy() for t in trained(values, mask, [16000])]
        got = [t.numpy() for t in fresh(values, mask, [16000])]
    for g, w in zip(got, want, strict=True):  # MatMul weights rounded to 8 bits
        assert np.abs(g - w).max() < 0.05


def test_an_embedding_student_is_trained_further_from_its_int8_bundle(tmp_path: Path) -> None:
    """``--init-bundle`` for the embed stage: the whole student (projection too) comes back."""
    torch = pytest.importorskip("torch", reason="torch is part of the export extra")
    from streamer_training import train_embed, train_intent

    small = train_intent.IntentRecipe(hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64)
    recipe = train_embed.EmbedRecipe(projection_dim=24)
    torch.manual_seed(1)
    trained = train_embed.build_student(recipe, small)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    train_embed.save_student(trained, tmp_path / "hf", meta={})
    bundle = _export(tmp_path / "hf", tmp_path / "bundle", "--task", "embed", "--quantize", "int8")

    torch.manual_seed(2)
    fresh = train_embed.build_student(recipe, small)
    before = fresh.embedding_projection.weight.detach().clone()
    train_embed.init_from_bundle(fresh, bundle)
    assert not torch.equal(fresh.embedding_projection.weight, before)
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    values, mask, lengths = loop.pad_batch([audio])
    trained.eval()
    fresh.eval()
    with torch.inference_mode():
        args = (torch.from_numpy(values), torch.from_numpy(mask), lengths.tolist())
        want, got = trained(*args).numpy(), fresh(*args).numpy()
    assert np.abs(got - want).max() < 0.05  # MatMul weights rounded to 8 bits


def test_embed_clips_gives_the_raw_output_for_centring() -> None:
    """The trainer centres validation vectors as the shipped graph is centred: ``embed_clips``
    with ``normalise=False`` is the student's raw output in clip order, whose unit vectors are
    what it gives by default."""
    torch = pytest.importorskip("torch", reason="torch is part of the export extra")
    from streamer_training import train_embed, train_intent

    small = train_intent.IntentRecipe(hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64)
    torch.manual_seed(3)
    student = train_embed.build_student(train_embed.EmbedRecipe(projection_dim=24), small)
    rng = np.random.default_rng(4)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 4000, 9000)]
    raw = train_embed.embed_clips(student, clips, normalise=False)
    unit = train_embed.embed_clips(student, clips)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)
    values, mask, lengths = loop.pad_batch([clips[1]])
    student.eval()
    with torch.inference_mode():
        alone = student(torch.from_numpy(values), torch.from_numpy(mask), lengths.tolist())
    np.testing.assert_allclose(raw[1], alone.numpy()[0], atol=1e-4)

"""Training the CTC model on another machine: the data pack, layer stacking, the time-boxed run.

The run itself is exercised for real on CPU (``--device cpu``) with a tiny pack and a budget of
seconds: it must read the pack, train, evaluate and leave a ``best.pt`` that the ``export``
stage (``real_voices.save_best``) turns into a Hugging Face folder of the grown depth.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from streamer_training import pack, real_gpu, real_voices, train_ctc


def _tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * pack.RATE)) / pack.RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_pack_round_trip_keeps_groups_texts_and_lengths(tmp_path: Path) -> None:
    clips = [
        pack.Clip("an4", "yes", _tone(0.8, 300)),
        pack.Clip("noise", "", _tone(0.5, 900)),
        pack.Clip("val:an4", "no", _tone(1.3, 440)),
    ]
    counts = pack.write(tmp_path, clips)
    assert counts == {"an4": 1, "noise": 1, "val:an4": 1}
    back = pack.read(tmp_path)
    assert [(c.group, c.text, len(c.audio)) for c in back] == [
        (c.group, c.text, len(c.audio)) for c in clips
    ]
    # Lossy, but the same signal: a tone survives Opus almost unchanged.
    mid = slice(2000, 6000)
    corr = np.corrcoef(back[2].audio[mid], clips[2].audio[mid])[0, 1]
    assert corr > 0.95


def test_pack_read_names_what_is_missing(tmp_path: Path) -> None:
    pack.write(tmp_path, [pack.Clip("an4", "yes", _tone(0.5, 300))])
    (tmp_path / pack.INDEX).unlink()
    with pytest.raises(FileNotFoundError, match=r"index\.json: no such file"):
        pack.read(tmp_path)


def test_stacking_copies_each_layer_into_two_neighbours() -> None:
    shallow = train_ctc.build_model(replace(train_ctc.CtcRecipe(), n_layers=2)).state_dict()
    deep_model = train_ctc.build_model(replace(train_ctc.CtcRecipe(), n_layers=4))
    grown = real_gpu.stack_layers(shallow, 4)
    deep_model.load_state_dict(grown)  # strict: every key present, every shape right
    key = "attention.self.query_proj.weight"
    for j, i in ((0, 0), (1, 0), (2, 1), (3, 1)):
        got = deep_model.state_dict()[f"{real_gpu.LAYER_PREFIX}{j}.{key}"]
        assert got.equal(shallow[f"{real_gpu.LAYER_PREFIX}{i}.{key}"])
    with pytest.raises(ValueError, match="multiple"):
        real_gpu.stack_layers(shallow, 3)


def test_time_boxed_run_leaves_a_best_checkpoint_the_export_stage_reads(tmp_path: Path) -> None:
    import torch

    clips = [pack.Clip("an4", "yes", _tone(1.0, 200 + 10 * i)) for i in range(6)]
    clips += [pack.Clip("synthetic", "no", _tone(1.2, 500 + 10 * i)) for i in range(6)]
    clips += [pack.Clip("background", "", _tone(2.0, 50))]
    clips += [pack.Clip("val:an4", "yes", _tone(1.0, 260)), pack.Clip("val:x", "no", _tone(1, 520))]
    pack_dir, out = tmp_path / "pack", tmp_path / "out"
    pack.write(pack_dir, clips)
    init = train_ctc.build_model(train_ctc.CtcRecipe()).state_dict()
    torch.save(init, pack_dir / pack.INIT)
    args = ["--pack", str(pack_dir), "--out", str(out), "--device", "cpu", "--workers", "0"]
    args += ["--minutes", "0.05", "--layers", "8", "--batch-size", "4", "--eval-every-s", "1"]
    assert real_gpu.main(args) == 0
    curve = json.loads((out / "curve.json").read_text())
    assert curve["steps"] >= 1
    assert {"an4_wer", "x_wer", "mean_wer"} <= set(curve["evals"][-1])
    # A second run starts from the first one's best (a warm restart of the grown model).
    again = tmp_path / "again"
    args = [*args[:3], str(again), *args[4:], "--init", str(out / "best.pt")]
    assert real_gpu.main(args) == 0
    first = json.loads((out / "curve.json").read_text())["evals"]
    assert json.loads((again / "curve.json").read_text())["evals"][0]["mean_wer"] == min(
        e["mean_wer"] for e in first
    )
    work = tmp_path / "work"
    work.mkdir()
    (out / "best.pt").rename(work / "best.pt")
    hf = real_voices.save_best(work, real_voices.RealRecipe())
    config = json.loads((hf / "config.json").read_text())
    assert config["num_hidden_layers"] == 8


def test_a_folder_that_is_not_a_full_pack_is_refused_by_name(tmp_path: Path) -> None:
    pack.write(tmp_path, [pack.Clip("an4", "yes", _tone(0.5, 300))])
    with pytest.raises(SystemExit, match=r"lacks \['synthetic', 'background'\]"):
        real_gpu.main(["--pack", str(tmp_path), "--out", str(tmp_path / "out"), "--device", "cpu"])


def test_train_demo_pack_stage_needs_the_starting_bundle(tmp_path: Path) -> None:
    """``--stage pack`` without ``--init-bundle``: one line saying so, exit 1, nothing packed."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / "bin" / "train_demo"), "--stage", "pack"]
    cmd += ["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == "train_demo: --stage pack needs --init-bundle"
    assert not (tmp_path / "data" / "pack").exists()

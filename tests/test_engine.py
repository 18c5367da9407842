"""Engine: bundle loading, graph checks, runs, and the execution-provider choice."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx_graphs import STRIDE, VOCAB, write_bundle

from streamer.config import EngineConfig
from streamer.engine.encoder import (
    CPU,
    CUDA,
    Encoder,
    confirm_provider,
    probe_cuda,
    request_providers,
)
from streamer.errors import ModelError


@pytest.fixture(scope="module")
def ctc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("ctc"))


def test_request_providers_prefers_cuda_when_it_loads() -> None:
    """CUDA is requested first when the build lists it and its library loads."""
    providers, reason = request_providers([CUDA, CPU], wanted="auto", cuda_probe=lambda: None)
    assert providers == [CUDA, CPU]
    assert "loaded" in reason


def test_request_providers_falls_back_when_cuda_library_missing() -> None:
    """A listed CUDA provider whose libraries are missing is never requested."""
    providers, reason = request_providers(
        [CUDA, CPU], wanted="auto", cuda_probe=lambda: "libcublasLt.so.13: cannot open"
    )
    assert providers == [CPU]
    assert "libcublasLt" in reason


def test_request_providers_without_cuda_build() -> None:
    """A CPU-only onnxruntime build gives CPU, saying why, without probing."""

    def probe() -> str | None:
        raise AssertionError("must not probe")

    providers, reason = request_providers([CPU], wanted="auto", cuda_probe=probe)
    assert providers == [CPU]
    assert "no CUDA provider" in reason


def test_request_providers_cpu_forced() -> None:
    """provider=cpu never asks for CUDA."""
    assert request_providers([CUDA, CPU], wanted="cpu", cuda_probe=lambda: None)[0] == [CPU]


def test_confirm_provider_detects_silent_fallback() -> None:
    """A session that asked for CUDA but runs on CPU is reported as a CPU fallback."""
    choice = confirm_provider([CUDA, CPU], [CPU], "CUDA provider loaded")
    assert choice.provider == CPU
    assert "failed to initialise" in choice.reason
    ok = confirm_provider([CUDA, CPU], [CUDA, CPU], "CUDA provider loaded")
    assert ok.provider == CUDA


def test_probe_cuda_reports_a_reason_on_this_machine() -> None:
    """Without CUDA libraries the probe names what is missing (or that the build lacks CUDA)."""
    reason = probe_cuda()
    if reason is None:  # pragma: no cover - only on a machine with a working CUDA stack
        pytest.skip("CUDA libraries are present here; the fallback path cannot be observed")
    assert "CUDA" in reason


def test_encoder_loads_and_runs(ctc_dir: Path) -> None:
    """A bundle loads on the CPU here and returns logits of [1, frames, vocab]."""
    enc = Encoder.load("ctc", ctc_dir, config=EngineConfig())
    assert enc.provider.provider == CPU
    out = enc.run(np.full(16000, 0.1, dtype=np.float32))
    assert out["logits"].shape == (1, 16000 // STRIDE, len(VOCAB))


def test_encoder_rejects_bad_inputs(ctc_dir: Path) -> None:
    """Too short, non-finite or wrongly typed input raises ModelError, not an ORT crash."""
    enc = Encoder.load("ctc", ctc_dir, config=EngineConfig(provider="cpu"))
    with pytest.raises(ModelError, match="shorter than"):
        enc.run(np.zeros(STRIDE - 1, dtype=np.float32))
    bad = np.zeros(16000, dtype=np.float32)
    bad[5] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        enc.run(bad)
    with pytest.raises(ModelError, match="1-D float32"):
        enc.run(np.zeros((2, 16000), dtype=np.float32))


def test_missing_bundle_is_a_one_line_error(tmp_path: Path) -> None:
    """A missing folder, manifest or model file names the model and the problem."""
    with pytest.raises(ModelError, match="does not exist"):
        Encoder.load("x", tmp_path / "nope", config=EngineConfig())
    with pytest.raises(ModelError, match=r"no manifest\.json"):
        Encoder.load("x", tmp_path, config=EngineConfig())


def test_corrupt_model_is_refused(ctc_dir: Path, tmp_path: Path) -> None:
    """A truncated model.onnx is refused with a one-line reason."""
    bad = tmp_path / "bad"
    shutil.copytree(ctc_dir, bad)
    (bad / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelError, match="cannot load") as info:
        Encoder.load("bad", bad, config=EngineConfig())
    assert "\n" not in str(info.value)


def test_manifest_graph_mismatch_is_refused(tmp_path: Path) -> None:
    """A manifest naming outputs the graph lacks is refused at load."""
    ctc = write_bundle(tmp_path / "a")
    cls = write_bundle(tmp_path / "b", task="classify", labels=(("a", "b"), ("c", "d")))
    shutil.copy(cls / "model.onnx", ctc / "model.onnx")
    with pytest.raises(ModelError, match="lacks the manifest's outputs"):
        Encoder.load("mixed", ctc, config=EngineConfig())

"""bin/export_text_embedder on a tiny random BERT, and streamer.engine.text_embed loading it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from checkpoints import BERT_MAX_POSITIONS as MAX_POSITIONS, make_tiny_bert
from conftest import EXPORT_TIMEOUT_S, REPO
from onnx import numpy_helper

from streamer.engine.text_embed import (
    SPEC_NAME,
    TextEmbedder,
    TextEmbedderError,
    load_text_embedder,
    read_spec,
)
from streamer_export.text_embed import main as export_main

pytestmark = pytest.mark.export

EXPORT_TEXT_EMBEDDER = REPO / "bin" / "export_text_embedder"
SENTENCES = [
    "turn on the lights",
    "Play some quiet JAZZ in the bedroom, please!",
    "stop",
    "set a timer for ten minutes",
    "what is the weather like tomorrow morning in the living room",
    "xylophone",  # unknown word: spelled with ## pieces
]


def torch_reference(checkpoint: Path, texts: list[str]) -> np.ndarray:
    """Embed each text alone with transformers: mean over tokens, then L2-normalise."""
    import torch
    from tokenizers import Tokenizer
    from transformers import BertModel

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    tokenizer.no_padding()
    loader: Any = BertModel  # untyped classmethod
    model = loader.from_pretrained(checkpoint, add_pooling_layer=False).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text).ids])
            hidden = model(input_ids=ids).last_hidden_state[0].numpy()
            rows.append(hidden.mean(axis=0))
    pooled = np.stack(rows)
    return np.asarray(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))


def export(source: Path, out: Path, *args: str) -> int:
    """Run the exporter's main() in this process (torch is imported once per test run)."""
    return export_main([str(source), str(out), *args])


def only_error_line(err: str) -> str:
    """Assert ``err`` is exactly one ``export_text_embedder: error:`` line and return it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("export_text_embedder: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT sentence embedder folder."""
    pytest.importorskip("torch")
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def bundles(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The checkpoint exported through the command line: fp32, int8 and int8-weights."""
    root = tmp_path_factory.mktemp("text-bundles")
    out = {kind: root / kind for kind in ("fp32", "int8", "int8-weights")}
    assert export(checkpoint, out["fp32"]) == 0
    for kind in ("int8", "int8-weights"):
        assert export(checkpoint, out[kind], "--quantize", kind) == 0
    return out


@pytest.fixture(scope="module")
def fp32(bundles: dict[str, Path]) -> TextEmbedder:
    """The fp32 bundle, loaded on the CPU."""
    return load_text_embedder(bundles["fp32"], provider="cpu")


def test_bundle_holds_graph_tokenizer_and_spec(bundles: dict[str, Path], checkpoint: Path) -> None:
    """The bundle has no manifest.json; its spec records size, limits, source hash and parity."""
    folder = bundles["fp32"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.onnx",
        "text_embedder.json",
        "tokenizer.json",
    ]
    spec = read_spec(folder)
    assert (spec.kind, spec.arch, spec.embedding_dim, spec.max_tokens) == (
        "text-embedder",
        "bert",
        32,
        MAX_POSITIONS,
    )
    assert (spec.pooling, spec.normalized, spec.quantization, spec.opset) == (
        "mean",
        True,
        "none",
        17,
    )
    weights = checkpoint / "model.safetensors"
    assert spec.source.weights == "model.safetensors"
    assert spec.source.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert spec.parity is not None
    assert spec.parity.max_abs_diff <= 1e-4
    assert spec.parity.cosine_min > 0.9999
    assert read_spec(bundles["int8"]).quantization == "int8"
    assert read_spec(bundles["int8-weights"]).quantization == "int8-weights"


def test_fp32_embeddings_match_torch(fp32: TextEmbedder, checkpoint: Path) -> None:
    """Mean-pooled, normalised ONNX embeddings equal transformers' within 1e-4."""
    got = fp32.embed(SENTENCES)
    assert got.dtype == np.float32
    assert got.shape == (len(SENTENCES), 32)
    np.testing.assert_allclose(got, torch_reference(checkpoint, SENTENCES), atol=1e-4)


@pytest.mark.parametrize("batch", [1, 2, 32])
def test_padded_batches_equal_one_by_one(fp32: TextEmbedder, batch: int) -> None:
    """Texts of different lengths in one padded batch embed as they do alone, in input order."""
    alone = np.concatenate([fp32.embed([text]) for text in SENTENCES])
    np.testing.assert_allclose(fp32.embed(SENTENCES, batch=batch), alone, atol=1e-5)


@pytest.mark.parametrize("kind", ["fp32", "int8", "int8-weights"])
def test_rows_have_unit_norm(bundles: dict[str, Path], kind: str) -> None:
    """Every embedding row has length 1, quantized or not."""
    embedded = load_text_embedder(bundles[kind], provider="cpu").embed(SENTENCES)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)


def test_int8_stays_close_to_fp32(bundles: dict[str, Path], fp32: TextEmbedder) -> None:
    """The int8 graph's embeddings point where the fp32 ones do (cosine > 0.98)."""
    int8 = load_text_embedder(bundles["int8"], provider="cpu")
    cosine = np.sum(int8.embed(SENTENCES) * fp32.embed(SENTENCES), axis=1)
    assert cosine.min() > 0.98, cosine


def weights_read_by(graph: onnx.GraphProto) -> dict[tuple[str, str], str]:
    """{(op type, weight input): its producer} of every MatMul B input and Gather data input.

    The producer is ``"initializer"``, ``"DequantizeLinear"`` or another op type.
    """
    producers = {o: n.op_type for n in graph.node for o in n.output}
    producers.update({t.name: "initializer" for t in graph.initializer})
    slots = {"MatMul": 1, "Gather": 0}
    return {
        (n.op_type, n.input[slots[n.op_type]]): producers.get(n.input[slots[n.op_type]], "input")
        for n in graph.node
        if n.op_type in slots
    }


def test_int8_weights_graph_dequantizes_every_weight(bundles: dict[str, Path]) -> None:
    """Every MatMul weight and embedding table of the fp32 graph is int8 behind a DequantizeLinear.

    Scales are per output column (MatMul) or per row (Gather), zero points 0, and each int8
    weight times its scale is the float weight within half a step.
    """
    fp32 = onnx.load(str(bundles["fp32"] / "model.onnx")).graph
    graph = onnx.load(str(bundles["int8-weights"] / "model.onnx")).graph
    floats = {t.name: numpy_helper.to_array(t) for t in fp32.initializer}
    before = {k: v for k, v in weights_read_by(fp32).items() if v == "initializer"}
    assert sum(op == "MatMul" for op, _ in before) == 12  # 2 layers x (q, k, v, out, up, down)
    assert sum(op == "Gather" for op, _ in before) == 3  # word, position, token type
    after = weights_read_by(graph)
    assert "initializer" not in after.values()
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len(dequantize) == len(before)
    for node in dequantize:
        weight, scale, zero = (inits[name] for name in node.input)
        name = node.input[0].removesuffix("_int8")
        axis = onnx.helper.get_attribute_value(node.attribute[0])
        consumers = {op for (op, read), producer in after.items() if read == node.output[0]}
        assert consumers == {"MatMul" if axis == 1 else "Gather"}, node.name
        assert (weight.dtype.name, zero.dtype.name) == ("int8", "int8")
        assert scale.shape == (weight.shape[axis],)
        assert not zero.any()
        step = np.expand_dims(scale, 1 - axis)
        assert np.all(np.abs(weight * step - floats[name]) <= step / 2 + 1e-7), name
    float_weights = [t.name for t in graph.initializer if t.name in floats and len(t.dims) == 2]
    assert float_weights == []
    size = {kind: (bundles[kind] / "model.onnx").stat().st_size for kind in bundles}
    assert size["int8-weights"] < size["fp32"] * 0.6, size


def test_int8_weights_stay_within_0_999_of_fp32(
    bundles: dict[str, Path], fp32: TextEmbedder
) -> None:
    """Weight-only int8 embeddings are nearly the fp32 ones (cosine > 0.999), unit length."""
    weights = load_text_embedder(bundles["int8-weights"], provider="cpu")
    assert weights.spec.quantization == "int8-weights"
    got = weights.embed(SENTENCES)
    assert got.shape == (len(SENTENCES), 32)
    cosine = np.sum(got * fp32.embed(SENTENCES), axis=1)
    assert cosine.min() > 0.999, cosine
    parity = read_spec(bundles["int8-weights"]).parity
    assert parity is not None
    assert parity.compared.startswith("onnxruntime int8-weights graph")
    assert parity.cosine_min > 0.999


def test_long_text_is_truncated_to_max_tokens(fp32: TextEmbedder) -> None:
    """A text past max_tokens embeds as its first max_tokens tokens: what follows is ignored."""
    long = " ".join(["play some music"] * 40)
    assert len(fp32.token_ids([long])[0]) == MAX_POSITIONS
    np.testing.assert_allclose(
        fp32.embed([long + " stop"]), fp32.embed([long + " turn on the lights"]), atol=1e-6
    )


def test_cpu_provider_choice_is_reported(fp32: TextEmbedder) -> None:
    """The provider and the reason for it are kept, as the speech engine does."""
    assert (fp32.provider.provider, fp32.provider.reason) == (
        "CPUExecutionProvider",
        "CPU requested by configuration",
    )
    assert fp32.dim == 32


@pytest.mark.parametrize("texts", [["lights on", ""], ["   "], "lights on"])
def test_empty_text_is_refused(fp32: TextEmbedder, texts: Any) -> None:
    """An empty or blank text, or one string instead of a list, is an error, not a vector."""
    with pytest.raises(TextEmbedderError):
        fp32.embed(texts)


def test_no_texts_give_an_empty_array(fp32: TextEmbedder) -> None:
    """Zero texts give a [0, dim] array."""
    assert fp32.embed([]).shape == (0, 32)


def _break(folder: Path, damage: str) -> None:
    spec_path = folder / SPEC_NAME
    spec = json.loads(spec_path.read_text())
    if damage == "missing folder":
        shutil.rmtree(folder)
    elif damage == "corrupt json":
        spec_path.write_text("{oops")
    elif damage == "wrong kind":
        spec_path.write_text(json.dumps({**spec, "kind": "speech"}))
    elif damage == "no tokenizer":
        (folder / "tokenizer.json").unlink()
    elif damage == "corrupt graph":
        (folder / "model.onnx").write_bytes(b"not onnx")
    elif damage == "wrong dim":
        spec_path.write_text(json.dumps({**spec, "embedding_dim": 16}))


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("missing folder", "does not exist"),
        ("corrupt json", "unreadable JSON"),
        ("wrong kind", "kind is 'speech'"),
        ("no tokenizer", "tokenizer.json: missing"),
        ("corrupt graph", "cannot load "),
        ("wrong dim", "embedding_dim 16"),
    ],
)
def test_broken_bundles_fail_with_one_line(
    bundles: dict[str, Path], tmp_path: Path, damage: str, says: str
) -> None:
    """Each broken bundle raises TextEmbedderError: one line naming the path and the problem."""
    folder = tmp_path / "bundle"
    shutil.copytree(bundles["fp32"], folder)
    _break(folder, damage)
    with pytest.raises(TextEmbedderError) as info:
        load_text_embedder(folder, provider="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert says in message
    assert str(folder) in message


def test_export_refuses_a_non_empty_output_without_force(
    checkpoint: Path, bundles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing bundle is kept (exit 2, one line) unless --force is given."""
    out = tmp_path / "bundle"
    shutil.copytree(bundles["fp32"], out)
    (out / "model.onnx").write_bytes(b"old")
    assert export(checkpoint, out) == 2
    assert "pass --force" in only_error_line(capsys.readouterr().err)
    assert (out / "model.onnx").read_bytes() == b"old"


def test_export_refuses_cls_pooling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint whose 1_Pooling/config.json asks for CLS pooling is refused (exit 2)."""
    source = make_tiny_bert(tmp_path / "cls", pooling="cls_token")
    capsys.readouterr()
    assert export(source, tmp_path / "out") == 2
    line = only_error_line(capsys.readouterr().err)
    assert "cls_token pooling" in line
    assert not (tmp_path / "out").exists()


def test_export_script_reports_a_missing_source(tmp_path: Path) -> None:
    """bin/export_text_embedder with no such folder exits 2 with one error line."""
    result = subprocess.run(
        [sys.executable, str(EXPORT_TEXT_EMBEDDER), str(tmp_path / "nope"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=EXPORT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2
    assert "no such folder" in only_error_line(result.stderr)

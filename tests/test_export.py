"""bin/export_onnx on tiny random SEW-D, wav2vec 2.0 and SEGUE checkpoints, checked with ORT."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from checkpoints import (
    SEGUE_ENCODER,
    VOCAB,
    make_segue,
    make_sewd_classify,
    make_wav2vec2_ctc,
)
from conftest import EXPORT_ONNX, INTENT_LABELS, REPO, export_bundle, exported

from streamer.engine.bundles import load_manifest
from streamer_export.errors import ExportInputError
from streamer_export.labels import parse_labels
from streamer_export.spec import ConvStack, plan_export

W2V2_CONV = ConvStack(kernels=(10, 3, 3, 3, 3, 2, 2), strides=(5, 2, 2, 2, 2, 2, 2))
SEWD_CONV = ConvStack(
    kernels=(10, 3, 1, 3, 1, 3, 1, 3, 1, 2, 1, 2, 1),
    strides=(5, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1),
)
ATOL = 1e-4
export = pytest.mark.export


def run_ort(bundle: Path, audio: np.ndarray) -> list[np.ndarray]:
    """Run the bundle's graph on ``audio`` [batch, samples] with ONNX Runtime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(str(bundle / "model.onnx"), options, ["CPUExecutionProvider"])
    return [np.asarray(x) for x in session.run(None, {"input_values": audio})]


def speechlike(n_samples: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    """Noisy harmonic signals at speech level, different per row."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 16000
    rows = [0.2 * np.sin(2 * np.pi * (150 + 40 * i) * t) for i in range(batch)]
    noise = 0.05 * rng.standard_normal((batch, n_samples))
    return (np.stack(rows) + noise).astype(np.float32)


def normalize(audio: np.ndarray) -> np.ndarray:
    """What Wav2Vec2FeatureExtractor(do_normalize=True) does to each row."""
    from transformers import Wav2Vec2FeatureExtractor

    extractor: Any = Wav2Vec2FeatureExtractor(do_normalize=True)
    return np.asarray(extractor(list(audio), sampling_rate=16000)["input_values"], np.float32)


def error_line(result: subprocess.CompletedProcess[str], *, only: bool = True) -> str:
    """Assert stderr ends with the one ``export_onnx: error:`` line and return that line.

    With ``only``, nothing else may precede it (no step lines: the input was refused up front).
    """
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:], result.stderr
    assert lines[-1].startswith("export_onnx: error: "), lines[-1]
    if only:
        assert len(lines) == 1, result.stderr
    return lines[-1]


# --- planning and parsing (no torch) ----------------------------------------------------------


def test_conv_stack_frames_match_the_segue_processor_formula() -> None:
    """Frame counts equal SEGUE's (n - (k - s)) // s per layer, and n_samples_for inverts them."""
    for n in (400, 401, 719, 720, 8240, 160_000):
        m = n
        for k, s in zip(W2V2_CONV.kernels, W2V2_CONV.strides, strict=True):
            m = (m - (k - s)) // s
        assert W2V2_CONV.n_frames(n) == m
    assert W2V2_CONV.n_frames(399) == 0
    for frames in (1, 2, 25, 150):
        n = W2V2_CONV.n_samples_for(frames)
        assert W2V2_CONV.n_frames(n) == frames
        assert W2V2_CONV.n_frames(n - 1) == frames - 1


def test_plan_derives_min_samples_and_stride_per_architecture() -> None:
    """SEW-D needs squeeze_factor conv frames (720 samples); wav2vec 2.0 and SEGUE one (400)."""
    sewd = plan_export(
        {
            "architectures": ["SEWDForCTC"],
            "conv_kernel": list(SEWD_CONV.kernels),
            "conv_stride": list(SEWD_CONV.strides),
            "squeeze_factor": 2,
        }
    )
    w2v2 = plan_export(
        {
            "architectures": ["Wav2Vec2ForCTC"],
            "conv_kernel": list(W2V2_CONV.kernels),
            "conv_stride": list(W2V2_CONV.strides),
        }
    )
    segue = plan_export({"architectures": ["SegueForClassification"], "n_classes": [3, 7]})
    assert (sewd.min_samples, sewd.frame_stride_samples, sewd.task) == (720, 320, "ctc")
    assert (w2v2.min_samples, w2v2.frame_stride_samples) == (400, 320)
    assert (segue.min_samples, segue.encoder_config["hidden_size"], segue.task) == (
        400,
        768,
        "classify",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes,no", ("yes", "no")),
        ("a, b;x,y,z", (("a", "b"), ("x", "y", "z"))),
        ('["on", "off"]', ("on", "off")),
        ('[["a"], ["b", "c"]]', (("a",), ("b", "c"))),
    ],
)
def test_labels_option_accepts_json_and_short_forms(text: str, expected: object) -> None:
    """--labels parses JSON lists, lists of lists, and the comma/semicolon short form."""
    assert parse_labels(text) == expected


@pytest.mark.parametrize("text", ["a,,b", "[1, 2]", '["a", ["b"]]', "[oops"])
def test_labels_option_rejects_malformed_values(text: str) -> None:
    """Empty names, non-strings, mixed nesting and bad JSON are input errors."""
    with pytest.raises(ExportInputError):
        parse_labels(text)


# --- SEW-D CTC bundle ---------------------------------------------------------------------------


@export
def test_ctc_bundle_holds_graph_and_manifest(
    tiny_ctc_bundle: Path, tiny_ctc_checkpoint: Path
) -> None:
    """The SEW-D CTC bundle is model.onnx + manifest.json with timing, vocab and weight hashes."""
    assert sorted(p.name for p in tiny_ctc_bundle.iterdir()) == ["manifest.json", "model.onnx"]
    m = load_manifest(tiny_ctc_bundle)
    assert (m.arch, m.task, m.sample_rate, m.opset, m.quantization) == (
        "sew-d",
        "ctc",
        16000,
        17,
        None,
    )
    assert (m.min_samples, m.frame_stride_samples) == (720, 320)
    assert (m.vocab, m.blank_id, m.word_delimiter) == (VOCAB, 0, "|")
    assert [(t.name, t.dtype, t.shape) for t in m.inputs] == [
        ("input_values", "float32", ("batch", "samples"))
    ]
    assert [(t.name, t.dtype, t.shape) for t in m.outputs] == [
        ("logits", "float32", ("batch", "frames", len(VOCAB)))
    ]
    weights = tiny_ctc_checkpoint / "model.safetensors"
    assert m.source.path == str(tiny_ctc_checkpoint.resolve())
    assert m.source.sha256 == {weights.name: hashlib.sha256(weights.read_bytes()).hexdigest()}


@export
def test_ctc_parity_covers_required_lengths(tiny_ctc_bundle: Path) -> None:
    """Parity ran at odd and even frame counts, under 1 s and over 10 s, batch 1 and more."""
    parity = load_manifest(tiny_ctc_bundle).parity
    assert parity is not None
    frames = [SEWD_CONV.n_frames(n) for n in parity.lengths]
    assert any(f % 2 for f in frames)
    assert any(f % 2 == 0 for f in frames)
    assert min(parity.lengths) < 16_000 < 160_000 < max(parity.lengths)
    assert len(parity.lengths) >= 4
    assert 1 in parity.batch_sizes
    assert max(parity.batch_sizes) > 1
    assert parity.atol == ATOL
    assert 0 <= parity.max_abs_diff <= ATOL
    assert "SEWDForCTC" in parity.compared


@export
def test_graph_input_axes_are_symbolic(tiny_ctc_bundle: Path) -> None:
    """The graph declares input_values as [batch, samples] and logits' time axis as frames."""
    import onnx

    graph = onnx.load(str(tiny_ctc_bundle / "model.onnx")).graph
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert (graph.input[0].name, dims) == ("input_values", ["batch", "samples"])
    assert out_dims == ["batch", "frames", len(VOCAB)]


@export
def test_ctc_bundle_matches_transformers_at_unseen_lengths(
    tiny_ctc_bundle: Path, tiny_ctc_checkpoint: Path
) -> None:
    """Raw audio through ORT equals feature extractor + SEWDForCTC, one frame per 320 samples."""
    import torch
    from transformers import SEWDForCTC

    model = SEWDForCTC.from_pretrained(tiny_ctc_checkpoint).eval()
    for n_samples, batch in ((12_345, 3), (20_000, 1), (721, 2)):
        audio = speechlike(n_samples, batch, seed=n_samples)
        (logits,) = run_ort(tiny_ctc_bundle, audio)
        with torch.no_grad():
            expected = model(torch.from_numpy(normalize(audio))).logits.numpy()
        assert logits.shape == (batch, SEWD_CONV.n_frames(n_samples), len(VOCAB))
        np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=0)


@export
def test_min_samples_is_the_shortest_accepted_input(tiny_ctc_bundle: Path) -> None:
    """ORT runs the SEW-D graph at min_samples and rejects one sample less."""
    m = load_manifest(tiny_ctc_bundle)
    (logits,) = run_ort(tiny_ctc_bundle, speechlike(m.min_samples))
    assert logits.shape[1] == 2
    with pytest.raises(Exception, match=r"Reshape|Pool|Conv"):
        run_ort(tiny_ctc_bundle, speechlike(m.min_samples - 1))


@export
def test_int8_bundle_quantizes_matmul_only_and_runs(
    tiny_ctc_bundle: Path, tiny_ctc_checkpoint: Path, tmp_path: Path
) -> None:
    """--quantize int8 --force replaces a bundle with a MatMulInteger graph that still decodes."""
    import onnx

    out = tmp_path / "int8"
    shutil.copytree(tiny_ctc_bundle, out)
    exported(tiny_ctc_checkpoint, out, "--quantize", "int8", "--force")
    m = load_manifest(out)
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert m.quantization == "int8"
    assert m.parity is not None
    assert "int8" in m.parity.compared
    assert "MatMulInteger" in ops
    assert "ConvInteger" not in ops
    (fp32,) = run_ort(tiny_ctc_bundle, speechlike(16_000))
    (int8,) = run_ort(out, speechlike(16_000))
    assert int8.shape == fp32.shape
    assert np.all(np.isfinite(int8))
    assert not list(tmp_path.glob(".int8.*")), "staging folders left behind"


@export
def test_lm_option_ships_the_lm_and_the_daemon_searches_with_it(
    tiny_ctc_checkpoint: Path, tmp_path: Path
) -> None:
    """--lm copies the ARPA file into the bundle, the manifest names it with its weights, and
    the runtime's decoder for that bundle is the LM-fused beam search."""
    from streamer.decoding import OutputDecoder
    from streamer_training.lm import write_arpa

    arpa = write_arpa(["turn on the light", "turn off the light"], tmp_path / "grammar.arpa")
    out = exported(
        tiny_ctc_checkpoint, tmp_path / "b", "--lm", str(arpa), "--lm-alpha", "0.7",
        "--lm-beta", "2",
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["lm.arpa", "manifest.json", "model.onnx"]
    assert (out / "lm.arpa").read_bytes() == arpa.read_bytes()
    m = load_manifest(out)
    assert m.lm is not None
    assert (m.lm.file, m.lm.alpha, m.lm.beta, m.lm.unk_score_offset) == ("lm.arpa", 0.7, 2.0, -10)
    decoder = OutputDecoder(m, bundle_dir=out)
    assert decoder.ctc_search == "beam search with lm.arpa, width 64"
    (logits,) = run_ort(out, speechlike(16_000))
    found = decoder.decode({"logits": logits[0]}).transcript
    assert found is not None  # a random model: the words are noise, the path must run
    assert found.text == " ".join(w.word for w in found.words)


@export
def test_word_list_option_ships_a_grammar_the_daemon_holds_the_intent_to(
    tiny_ctc_checkpoint: Path, tmp_path: Path
) -> None:
    """--word-list writes the manifest's grammars; the runtime's decoder holds an utterance with
    that intent to the words (even a random model's output), and any other to the free search."""
    from streamer.decoding import OutputDecoder
    from streamer.manifest import IntentGrammar
    from streamer.protocol import Intent

    out = exported(tiny_ctc_checkpoint, tmp_path / "b", "--word-list", "yesno=YES, NO")
    m = load_manifest(out)
    assert m.grammars == (IntentGrammar("yesno", ("YES", "NO")),)
    decoder = OutputDecoder(m, bundle_dir=out)
    (logits,) = run_ort(out, speechlike(16_000))
    held = decoder.decode({"logits": logits[0]}, intent=Intent("yesno", 0.9)).transcript
    assert held is not None
    assert held.grammar == "yesno"
    assert held.text.split()
    assert set(held.text.split()) <= {"yes", "no"}
    free = decoder.decode({"logits": logits[0]}, intent=Intent("other", 0.9)).transcript
    assert free is not None
    assert free.grammar is None


# --- wav2vec 2.0 and SEW-D classification -----------------------------------------------------


@export
def test_wav2vec2_ctc_bundle_accepts_400_samples(tmp_path: Path) -> None:
    """A wav2vec 2.0 CTC bundle has min_samples 400, which ORT accepts and 399 it rejects."""
    bundle = exported(make_wav2vec2_ctc(tmp_path / "ckpt"), tmp_path / "bundle")
    m = load_manifest(bundle)
    assert (m.arch, m.task, m.min_samples, m.frame_stride_samples) == ("wav2vec2", "ctc", 400, 320)
    assert run_ort(bundle, speechlike(400))[0].shape == (1, 1, len(VOCAB))
    with pytest.raises(Exception, match="Conv"):
        run_ort(bundle, speechlike(399))


@export
def test_wav2vec2_embed_task_without_normalization(tmp_path: Path) -> None:
    """--task embed on a CTC checkpoint gives the mean last hidden state, unnormalized input."""
    import torch
    from transformers import Wav2Vec2ForCTC

    ckpt = make_wav2vec2_ctc(tmp_path / "ckpt", do_normalize=False)
    bundle = exported(ckpt, tmp_path / "bundle", "--task", "embed")
    m = load_manifest(bundle)
    assert (m.task, m.embedding_dim, m.vocab) == ("embed", 32, None)
    assert [(t.name, t.shape) for t in m.outputs] == [("embedding", ("batch", 32))]
    audio = speechlike(9_000, 2)
    model = Wav2Vec2ForCTC.from_pretrained(ckpt).eval()
    with torch.no_grad():
        expected = model.wav2vec2(torch.from_numpy(audio)).last_hidden_state.mean(dim=1).numpy()
    np.testing.assert_allclose(run_ort(bundle, audio)[0], expected, atol=ATOL, rtol=0)


@export
def test_sewd_classifier_takes_labels_from_id2label(tmp_path: Path) -> None:
    """A SEW-D sequence classifier exports logits [batch, 3] labelled from config id2label."""
    bundle = exported(make_sewd_classify(tmp_path / "ckpt"), tmp_path / "bundle")
    m = load_manifest(bundle)
    assert (m.arch, m.task, m.labels, m.min_samples) == (
        "sew-d",
        "classify",
        ("yes", "no", "stop"),
        720,
    )
    assert [(t.name, t.shape) for t in m.outputs] == [("logits", ("batch", 3))]
    assert run_ort(bundle, speechlike(5_000, 2))[0].shape == (2, 3)


def export_warnings(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The ``export_onnx: warning:`` lines of an export's stderr (step lines left out)."""
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if "warning" in line.lower()]


UNNAMED_CLASSES = {
    "sew-d without id2label": ("sewd", None, ("0", "1"), "no id2label", "0..1"),
    "sew-d with LABEL_n placeholders": (
        "sewd",
        ("LABEL_0", "LABEL_1", "LABEL_2"),
        ("0", "1", "2"),
        "LABEL_0",
        "0..2",
    ),
    "segue, two heads": (
        "segue",
        None,
        (("0", "1", "2", "3"), ("0", "1", "2")),
        "no id2label",
        "0..3; 0..2",
    ),
}


@export
@pytest.mark.parametrize("case", list(UNNAMED_CLASSES), ids=list(UNNAMED_CLASSES))
def test_unnamed_classes_export_as_indices_with_one_warning(case: str, tmp_path: Path) -> None:
    """A classifier whose config names no classes exports labels 0..k-1 per head, warning once.

    As transformers reads it: no id2label is two classes; LABEL_n are only placeholder names.
    """
    arch, id2label, expected, why, spans = UNNAMED_CLASSES[case]
    if arch == "sewd":
        ckpt = make_sewd_classify(tmp_path / "ckpt", labels=id2label)
        assert ("id2label" in json.loads((ckpt / "config.json").read_text())) is bool(id2label)
    else:
        ckpt = make_segue(tmp_path / "ckpt", [4, 3])
    result = export_bundle(ckpt, tmp_path / "bundle")
    warnings = export_warnings(result)
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("export_onnx: warning: config.json "), warnings[0]
    assert why in warnings[0]
    assert f"({spans})" in warnings[0]
    assert "--labels" in warnings[0]
    m = load_manifest(tmp_path / "bundle")
    assert (m.task, m.labels) == ("classify", expected)
    heads = expected if isinstance(expected[0], tuple) else (expected,)
    outputs = run_ort(tmp_path / "bundle", speechlike(6_000))
    assert [o.shape[1] for o in outputs[: len(heads)]] == [len(h) for h in heads]


@export
def test_labels_option_names_unnamed_classes_without_a_warning(tmp_path: Path) -> None:
    """--labels still overrides: a config without id2label takes the given names, no warning."""
    ckpt = make_sewd_classify(tmp_path / "ckpt", labels=None)
    result = export_bundle(ckpt, tmp_path / "bundle", "--labels", "stop,go")
    assert export_warnings(result) == []
    assert load_manifest(tmp_path / "bundle").labels == ("stop", "go")


# --- SEGUE ------------------------------------------------------------------------------------


@export
def test_segue_multilabel_bundle_has_one_head_per_label_set(tiny_intent_bundle: Path) -> None:
    """n_classes [4, 3] exports logits_0, logits_1 and then the embedding, labels per head."""
    m = load_manifest(tiny_intent_bundle)
    assert (m.arch, m.task, m.min_samples, m.embedding_dim) == ("segue", "classify", 400, 32)
    assert m.labels == INTENT_LABELS
    assert m.label_sets == INTENT_LABELS
    assert [(t.name, t.shape) for t in m.outputs] == [
        ("logits_0", ("batch", 4)),
        ("logits_1", ("batch", 3)),
        ("embedding", ("batch", 32)),
    ]


@export
def test_segue_bundle_matches_an_independent_reimplementation(
    tiny_intent_bundle: Path, tiny_intent_checkpoint: Path
) -> None:
    """ORT equals Wav2Vec2Model + speech_encoder.* weights, mean over n tokens, linear heads."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    state = torch.load(tiny_intent_checkpoint / "pytorch_model.bin", weights_only=True)
    speech = {
        k.removeprefix("speech_encoder.")
        .replace("weight_g", "parametrizations.weight.original0")
        .replace("weight_v", "parametrizations.weight.original1"): v
        for k, v in state.items()
        if k.startswith("speech_encoder.")
    }
    encoder = Wav2Vec2Model(Wav2Vec2Config(**SEGUE_ENCODER)).eval()
    encoder.load_state_dict(speech)
    audio = speechlike(10_001, 2, seed=7)
    with torch.no_grad():
        hidden = encoder(torch.from_numpy(normalize(audio))).last_hidden_state
    n_tokens = W2V2_CONV.n_frames(audio.shape[1])
    embedding = hidden[:, :n_tokens].mean(dim=1)
    expected = [
        (
            embedding @ state[f"classification_heads.{i}.weight"].T
            + state[f"classification_heads.{i}.bias"]
        ).numpy()
        for i in range(2)
    ]
    got = run_ort(tiny_intent_bundle, audio)
    for g, e in zip(got, [*expected, embedding.numpy()], strict=True):
        np.testing.assert_allclose(g, e, atol=ATOL, rtol=0)


@export
def test_segue_regression_bundle_outputs_value_and_embedding(tmp_path: Path) -> None:
    """SegueForRegression exports value [batch] and the embedding."""
    bundle = exported(make_segue(tmp_path / "ckpt", regression=True), tmp_path / "bundle")
    m = load_manifest(bundle)
    assert (m.task, m.labels, m.embedding_dim) == ("regress", None, 32)
    assert [(t.name, t.shape) for t in m.outputs] == [
        ("value", ("batch",)),
        ("embedding", ("batch", 32)),
    ]
    value, embedding = run_ort(bundle, speechlike(8_000, 3))
    assert value.shape == (3,)
    assert embedding.shape == (3, 32)


@export
def test_segue_base_model_exports_embedding_only(tmp_path: Path) -> None:
    """A plain SegueModel checkpoint exports the embed task with one output."""
    bundle = exported(make_segue(tmp_path / "ckpt"), tmp_path / "bundle")
    m = load_manifest(bundle)
    assert (m.task, m.embedding_dim) == ("embed", 32)
    assert [t.name for t in m.outputs] == ["embedding"]


@export
def test_segue_student_projects_its_embedding(tmp_path: Path) -> None:
    """embedding_projection_dim: the embedding is the projected mean state, as torch computes."""
    import onnxruntime as ort
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    ckpt = make_segue(tmp_path / "ckpt", projection_dim=24)
    bundle = exported(ckpt, tmp_path / "bundle")
    m = load_manifest(bundle)
    assert (m.task, m.embedding_dim) == ("embed", 24)
    config = json.loads((ckpt / "config.json").read_text())
    state = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    encoder = Wav2Vec2Model(Wav2Vec2Config(**config["speech_encoder_config"])).eval()
    encoder.load_state_dict(
        {
            k.removeprefix("speech_encoder.")
            .replace(".weight_g", ".parametrizations.weight.original0")
            .replace(".weight_v", ".parametrizations.weight.original1"): v
            for k, v in state.items()
            if k.startswith("speech_encoder.")
        },
        strict=False,
    )
    x = np.random.default_rng(0).standard_normal((1, 8000)).astype(np.float32)
    with torch.no_grad():
        pooled = encoder(torch.from_numpy(x)).last_hidden_state.mean(dim=1)
        want = torch.nn.functional.linear(
            pooled, state["embedding_projection.weight"], state["embedding_projection.bias"]
        ).numpy()
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    [got] = session.run(["embedding"], {"input_values": x})
    np.testing.assert_allclose(got, want, atol=1e-4)


@export
def test_segue_projection_needs_a_plain_segue_model(tmp_path: Path) -> None:
    """A projection on a classifier checkpoint is refused with one line, exit 2."""
    ckpt = make_segue(tmp_path / "ckpt", 3, projection_dim=24)
    result = export_bundle(ckpt, tmp_path / "bundle")
    assert result.returncode == 2, result.stderr
    assert "embedding_projection_dim must be a positive integer" in result.stderr


@export
def test_segue_single_label_fp16_with_short_labels(tmp_path: Path) -> None:
    """n_classes 5 with --labels a,b,c,d,e and --fp16 gives float16 weights and float32 I/O."""
    ckpt = make_segue(tmp_path / "ckpt", 5)
    bundle = exported(ckpt, tmp_path / "bundle", "--fp16", "--labels", "a,b,c,d,e")
    m = load_manifest(bundle)
    assert (m.quantization, m.labels) == ("fp16", ("a", "b", "c", "d", "e"))
    assert [(t.name, t.dtype) for t in m.outputs] == [
        ("logits", "float32"),
        ("embedding", "float32"),
    ]
    logits, _ = run_ort(bundle, speechlike(6_000))
    assert logits.dtype == np.float32
    assert logits.shape == (1, 5)


# --- failures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_sources(tmp_path_factory: pytest.TempPathFactory, tiny_ctc_checkpoint: Path) -> Path:
    """Checkpoint folders that must be refused: foreign arch, no vocab, classifier, ctc."""
    root = tmp_path_factory.mktemp("bad-sources")
    hubert = root / "hubert"
    hubert.mkdir()
    (hubert / "config.json").write_text(json.dumps({"architectures": ["HubertForCTC"]}))
    (hubert / "model.safetensors").write_bytes(b"")
    no_vocab = root / "no-vocab"
    shutil.copytree(tiny_ctc_checkpoint, no_vocab)
    (no_vocab / "vocab.json").unlink()
    classifier = root / "classifier"
    classifier.mkdir()
    (classifier / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["SEWDForSequenceClassification"],
                "conv_kernel": [10],
                "conv_stride": [5],
                "id2label": {"0": "yes", "1": "no"},
            }
        )
    )
    (classifier / "model.safetensors").write_bytes(b"")
    (root / "a-file").write_text("not a folder")
    shutil.copytree(tiny_ctc_checkpoint, root / "ctc")
    (root / "lm.arpa").write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1\tyes\t0\n\n\\end\\\n")
    return root


BAD_INPUTS = {
    "missing folder": (["{root}/nowhere"], "no such folder"),
    "unsupported architecture": (
        ["{root}/hubert"],
        "HubertForCTC.*supported: SEWDForCTC.*SegueModel",
    ),
    "task not available": (
        ["{root}/classifier", "--task", "ctc"],
        "not available.*classify, embed",
    ),
    "missing vocab": (["{root}/no-vocab"], "vocab.json"),
    "unwritable out": (["{root}/classifier", "--out", "{root}/a-file/bundle"], "cannot write"),
    "out exists": (["{root}/classifier", "--out", "{root}"], "exists; pass --force"),
    "force on a non-bundle": (["{root}/classifier", "--out", "{root}", "--force"], "not a bundle"),
    "label count": (["{root}/classifier", "--labels", "a,b,c"], "2 classes, got 3"),
    "labels on embed": (["{root}/classifier", "--task", "embed", "--labels", "a,b"], "classify"),
    "int8 and fp16": (["{root}/classifier", "--quantize", "int8", "--fp16"], "exclude"),
    "bad task name": (["{root}/classifier", "--task", "translate"], "invalid choice"),
    "bad opset": (["{root}/classifier", "--opset", "9"], "opset 9"),
    "lm on a classifier": (["{root}/classifier", "--lm", "{root}/lm.arpa"], "applies to ctc"),
    "lm not ARPA": (["{root}/ctc", "--lm", "{root}/a-file"], "not an ARPA file"),
    "lm missing": (["{root}/ctc", "--lm", "{root}/nowhere.arpa"], "cannot read it"),
    "word list on a classifier": (
        ["{root}/classifier", "--word-list", "digits=ONE"],
        "--word-list applies to ctc exports",
    ),
    "word list malformed": (["{root}/ctc", "--word-list", "digits"], "expected INTENT=WORD"),
    "word list unspellable": (["{root}/ctc", "--word-list", "digits=one"], "cannot be spelled"),
    "word list intent twice": (
        ["{root}/ctc", "--word-list", "d=ONE", "--word-list", "d=TWO"],
        "names an intent twice",
    ),
    "lm negative alpha": (
        ["{root}/ctc", "--lm", "{root}/lm.arpa", "--lm-alpha", "-1"],
        "--lm-alpha must be finite and >= 0",
    ),
}


@export
@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case: str, bad_sources: Path, tmp_path: Path) -> None:
    """Each bad input exits 2 with one `export_onnx: error:` line naming the problem."""
    args, pattern = BAD_INPUTS[case]
    argv = [a.format(root=bad_sources) for a in args]
    out = tmp_path / "bundle"
    if "--out" in argv:
        i = argv.index("--out")
        out, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2 :]
    result = export_bundle(Path(argv[0]), out, *argv[1:])
    assert result.returncode == 2, result.stderr
    assert re.search(pattern, error_line(result))
    assert not (tmp_path / "bundle").exists()


@export
def test_parity_failure_exits_1_and_writes_nothing(
    tiny_ctc_checkpoint: Path, tmp_path: Path
) -> None:
    """An unreachable atol fails parity with one line, exit 1, and no bundle or staging left."""
    result = export_bundle(tiny_ctc_checkpoint, tmp_path / "bundle", "--atol", "1e-12")
    assert result.returncode == 1
    assert "parity failed: max abs diff" in error_line(result, only=False)
    assert list(tmp_path.iterdir()) == []


def test_bin_runs_from_a_shell_without_the_venv() -> None:
    """bin/export_onnx --help works when `python3` on PATH is not the venv's interpreter."""
    venv_bin = str(REPO / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": path}
    result = subprocess.run(
        [str(EXPORT_ONNX), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--labels" in result.stdout
    assert "SegueForRegression" in result.stdout

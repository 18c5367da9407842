"""Intents files in the daemon: `--intents`, the `intent` event's fields, bad files, start-up.

Real parts throughout: a tiny random SEGUE embedding model and a tiny random BERT text embedder,
both really exported; real speech from the shared audio through the real segmenter and engine;
the daemon as a subprocess with a real WebSocket client. The models are random, so these tests
check the plumbing and the rules (thresholds, n-best, which model's intent wins), not accuracy:
bench/intents_zero_shot.py measures that.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import exported
from live_server import (
    UNIT_S,
    config,
    daemon_process,
    running,
    speech,
    stream_recording,
)

from streamer import protocol as proto
from streamer.engine.bundles import resolve_models
from streamer.errors import ConfigError
from streamer.serving_config import IntentsConfig
from streamer.streams.intents_setup import setup_intents

REPO = Path(__file__).resolve().parents[1]
INTENT = REPO / "exported" / "commands-intent"
STREAMER = [sys.executable, "-m", "streamer"]

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny SEGUE embedding bundle (32-d) and a tiny text embedder bundle (32-d)."""
    pytest.importorskip("torch")
    from checkpoints import make_segue, make_tiny_bert

    from streamer_export.text_embed import main as export_text

    root = tmp_path_factory.mktemp("intents")
    speech_bundle = exported(make_segue(root / "segue"), root / "embed")
    text = root / "text"
    assert export_text([str(make_tiny_bert(root / "bert")), str(text)]) == 0
    return {"embed": speech_bundle, "text": text}


def _intents_file(folder: Path, threshold: float, *, top_k: int = 3) -> Path:
    path = folder / f"home_{threshold:+.1f}.toml".replace("+", "p").replace("-", "m")
    path.write_text(
        f"threshold = {threshold}\ntop_k = {top_k}\n"
        '[intents.lights_on]\nexamples = ["turn on the lights", "lights on please"]\n'
        '[intents.music]\nexamples = ["play some quiet jazz", "play music"]\n'
        '[intents.timer]\nexamples = ["set a timer for ten minutes"]\n'
        '[intents.weather]\nexamples = ["what is the weather like tomorrow"]\n',
        encoding="utf-8",
    )
    return path


async def _stream(url: str, name: str, audio: np.ndarray, **start: Any) -> list[dict[str, Any]]:
    """The utterance events of one recording streamed as ``name``."""
    events = await stream_recording(url, name, audio, **start)
    return [e for e in events if e["type"] == "utterance"]


@pytest.mark.parametrize(("threshold", "abstains"), [(-1.0, False), (1.0, True)])
async def test_intents_file_on_real_speech_through_the_daemon(
    bundles: dict[str, Path], tmp_path: Path, threshold: float, abstains: bool
) -> None:
    """Each utterance of real speech gets the nearest intents, with the file's threshold rule."""
    path = _intents_file(tmp_path, threshold)
    cfg = config(intents={"file": str(path), "text_embedder": str(bundles["text"])})
    models = {"intent": INTENT, "embed": bundles["embed"]}
    async with running(cfg, models) as daemon:
        assert daemon.services.decoders["embed"].intents_name == path.stem
        [utt] = await _stream(daemon.url, "light", speech("cmd_living_room_light.wav"))
    intent = utt["intent"]
    assert intent["intents"] == path.stem  # the file's, ahead of the classifier served beside
    names = [intent["name"], *(a["name"] for a in intent["alternatives"])]
    assert len(names) == 3
    assert set(names) <= {"lights_on", "music", "timer", "weather"}
    scores = [intent["confidence"], *(a["confidence"] for a in intent["alternatives"])]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert intent["abstain"] is abstains
    assert "embedding" not in utt  # the vector is matched, not sent, unless a client asks
    assert utt["labels"][0]["name"]  # the classifier's room labels still arrive


async def test_a_stream_without_the_embedding_model_gets_the_classifiers_intent(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """A stream that runs only the classifier is untouched by the intents file."""
    path = _intents_file(tmp_path, 0.0)
    cfg = config(intents={"file": str(path), "text_embedder": str(bundles["text"])})
    async with running(cfg, {"intent": INTENT, "embed": bundles["embed"]}) as daemon:
        [utt] = await _stream(
            daemon.url, "cls", speech("cmd_living_room_light.wav"), models=["intent"]
        )
    assert "intents" not in utt["intent"]


def test_setup_picks_the_model_in_the_text_embedders_space(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """The model to match on is the one whose embedding is as wide as the text embedder's."""
    path = _intents_file(tmp_path, 0.5, top_k=2)
    cfg = IntentsConfig(file=str(path), text_embedder=str(bundles["text"]))
    found = setup_intents(cfg, {"intent": INTENT, "embed": bundles["embed"]})
    assert found is not None
    assert (found.name, found.model, found.matcher.top_k) == (path.stem, "embed", 2)
    assert found.matcher.names == ("lights_on", "music", "timer", "weather")
    assert setup_intents(IntentsConfig(), {"intent": INTENT}) is None
    with pytest.raises(ConfigError, match="needs a served model with a 32-wide embedding"):
        setup_intents(cfg, {"intent": INTENT})  # commands-intent's is 192 wide
    with pytest.raises(ConfigError, match="'intent' has no 32-wide embedding output"):
        setup_intents(IntentsConfig(**{**cfg.__dict__, "model": "intent"}), {"intent": INTENT})
    with pytest.raises(ConfigError, match="needs a text embedder"):
        setup_intents(IntentsConfig(file=str(path), text_embedder=str(tmp_path)), {})


def test_the_embedded_embedding_model_is_served_only_for_intents(tmp_path: Path) -> None:
    """Without --intents, the default models leave an embed bundle out (no vector per event)."""
    from checkpoints import make_segue

    models_dir = tmp_path / "exported"
    exported(make_segue(tmp_path / "segue"), models_dir / "embed")
    (models_dir / "intent").symlink_to(INTENT)
    assert sorted(resolve_models([], models_dir=models_dir, embed=False)) == ["intent"]
    assert sorted(resolve_models([], models_dir=models_dir)) == ["embed", "intent"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STREAMER, *args], capture_output=True, text=True, timeout=6 * UNIT_S, check=False
    )


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("empty.toml", "[intents.lights_on]\nexamples = []\n", "'lights_on' has no example"),
        (
            "twice.toml",
            '[intents.a]\nexamples = ["x"]\n[intents.a]\nexamples = ["y"]\n',
            "duplicate",
        ),
        ("twice.yaml", "intents:\n  a: [x]\n  a: [y]\n", "duplicate key 'a'"),
        ("none.toml", None, "cannot read|does not exist|no such file"),
    ],
)
def test_a_bad_intents_file_is_one_line_exit_2(
    tmp_path: Path, name: str, text: str | None, problem: str
) -> None:
    """`serve --intents` with a bad file: one stderr line naming the file, exit 2."""
    path = tmp_path / name
    if text is not None:
        path.write_text(text, encoding="utf-8")
    result = _run("--model", str(INTENT), "serve", "--port", "0", "--intents", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert re.search(problem, lines[0], re.IGNORECASE), lines[0]


async def test_serve_with_intents_subprocess_and_websocket_client(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """`streamer serve --intents FILE` answers a real client with the file's intents."""
    path = _intents_file(tmp_path, -1.0)
    async with daemon_process(
        "--model", f"embed={bundles['embed']}", "serve", "--port", "0",
        "--intents", str(path), "--text-embedder", str(bundles["text"]),
    ) as daemon:  # fmt: skip
        embedded = r"4 intents, 6 examples embedded in [\d.]+ s"
        assert any(re.search(embedded, line) for line in daemon.log), daemon.log
        [utt] = await _stream(daemon.url, "sub", speech("cmd_living_room_light.wav"))
    event = proto.decode_event(json.dumps(utt))
    assert isinstance(event, proto.Utterance)
    assert event.intent is not None
    assert event.intent.intents == path.stem
    assert event.intent.abstain is False
    assert event.intent.name in {"lights_on", "music", "timer", "weather"}

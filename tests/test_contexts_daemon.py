"""Contexts in the daemon: `--context`, `start.context`, the `intent` event's slots, bad files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from live_server import (
    UNIT_S,
    collect,
    config,
    daemon_process,
    running,
    speech,
    start_msg,
    stream_recording,
)
from websockets.asyncio.client import connect

from streamer import protocol as proto
from streamer.config import DecoderConfig
from streamer.contexts import DEFAULT_MAX_GAP_PER_FRAME
from streamer.errors import ConfigError
from streamer.streams.services import context_files

REPO = Path(__file__).resolve().parents[1]
CTC = REPO / "exported" / "commands-ctc"
INTENT = REPO / "exported" / "commands-intent"
HOME = REPO / "contexts" / "home.yaml"
AUDIO = REPO.parent / "shared" / "audio"
STREAMER = [sys.executable, "-m", "streamer"]

pytestmark = pytest.mark.skipif(not AUDIO.is_dir(), reason="shared test audio not present")


def _utterances(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "utterance"]


async def test_context_understands_real_speech_through_the_daemon() -> None:
    """The living-room recording gives lightsOn with its room slot; other speech is rejected."""
    cfg = config(decoder={"contexts": f"home={HOME}"})
    models = {"commands-ctc": CTC, "commands-intent": INTENT}
    async with running(cfg, models) as daemon:
        assert list(daemon.services.contexts) == ["home"]
        events = await stream_recording(
            daemon.url, "light", speech("cmd_living_room_light.wav"), context="home"
        )
        assert events[0]["type"] == "started"
        assert events[0]["context"] == "home"
        [utt] = _utterances(events)
        intent = utt["intent"]
        assert intent["name"] == "lightsOn"
        assert intent["slots"] == {"room": "living room"}
        assert intent["understood"] is True
        assert intent["abstain"] is False
        assert intent["context"] == "home"
        assert 0.0 < intent["confidence"] <= 1.0
        assert utt["transcript"]["text"]  # the free transcript is still sent
        # a stream that names no context gets the server's default (the first one)
        events = await stream_recording(daemon.url, "harvard", speech("sent_harvard_spk1_snt1.wav"))
        assert events[0]["context"] == "home"
        for utt in _utterances(events):
            assert utt["intent"]["understood"] is False, utt
            assert utt["intent"]["abstain"] is True
            assert utt["transcript"]["text"]


async def test_without_contexts_the_intent_is_the_classifiers() -> None:
    """No context compiled: no slots or understood fields; naming a context is refused (1007)."""
    models = {"commands-ctc": CTC, "commands-intent": INTENT}
    async with running(config(), models) as daemon:
        events = await stream_recording(daemon.url, "plain", speech("cmd_living_room_light.wav"))
        assert "context" not in events[0]
        [utt] = _utterances(events)
        assert utt["intent"]["name"] == "lights_on"
        assert not {"slots", "understood", "context"} & set(utt["intent"])
        async with connect(f"{daemon.url}{proto.INGEST_PATH}") as ws:
            await ws.send(start_msg("named", context="home"))
            [error] = await collect(ws)
            assert ws.close_code == proto.CLOSE_INVALID_DATA
        assert error["code"] == proto.BAD_FIELD
        assert "no context named 'home'" in error["message"]


async def test_a_context_needs_a_ctc_model_in_the_stream() -> None:
    """Naming a context for a stream that runs only the classifier is a bad_field error."""
    cfg = config(decoder={"contexts": f"home={HOME}"})
    async with running(cfg, {"commands-ctc": CTC, "commands-intent": INTENT}) as daemon:
        async with connect(f"{daemon.url}{proto.INGEST_PATH}") as ws:
            await ws.send(start_msg("intent-only", models=["commands-intent"], context="home"))
            [error] = await collect(ws)
        assert error["code"] == proto.BAD_FIELD
        assert "needs a ctc model" in error["message"]
        # without naming it, the default context simply does not apply to such a stream
        events = await stream_recording(
            daemon.url, "cls", speech("cmd_living_room_light.wav"), models=["commands-intent"]
        )
        assert "context" not in events[0]
        assert "understood" not in _utterances(events)[0]["intent"]


def test_start_context_is_checked_on_the_wire() -> None:
    """`start.context` is a name (never a path) and decodes into the message."""
    msg = proto.decode_client_text(start_msg("s", context="home"))
    assert isinstance(msg, proto.Start)
    assert msg.context == "home"
    with pytest.raises(proto.ProtocolError, match="context"):
        proto.decode_client_text(start_msg("s", context="../contexts/home.yaml"))


def test_context_settings_are_validated() -> None:
    """`decoder.contexts` is [NAME=]FILE items; names are checked; the default gap is the core's."""
    assert context_files(" home=a/home.yaml, b/coffee.yaml ") == {
        "home": Path("a/home.yaml"),
        "coffee": Path("b/coffee.yaml"),
    }
    for bad in ("bad name=x.yaml", "a=x.yaml,a=y.yaml", "a="):
        with pytest.raises(ConfigError, match=r"decoder\.contexts"):
            context_files(bad)
    with pytest.raises(ConfigError, match="context_max_gap_per_frame"):
        DecoderConfig(context_max_gap_per_frame=-1.0)
    assert DecoderConfig().context_max_gap_per_frame == DEFAULT_MAX_GAP_PER_FRAME


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STREAMER, *args], capture_output=True, text=True, timeout=6 * UNIT_S, check=False
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('context:\n  expressions:\n    a:\n      - "turn [on, off"\n', r":4: .*unbalanced"),
        ('context:\n  expressions:\n    a:\n      - "call $who:x"\n', r":4: .*unknown slot type"),
        ('context:\n  expressions:\n    a:\n      - "set 5 lights"\n', r":4: .*cannot spell"),
        ("context: [\n", r":\d+: "),
    ],
)
def test_a_bad_context_is_one_line_naming_file_and_line_exit_2(
    tmp_path: Path, text: str, problem: str
) -> None:
    """`serve --context` with a broken file: one stderr line FILE:LINE: problem, exit 2."""
    bad = tmp_path / "broken.yaml"
    bad.write_text(text, encoding="utf-8")
    result = _run("--model", str(CTC), "serve", "--port", "0", "--context", f"bad={bad}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(re.escape(str(bad)) + problem, lines[0]), lines[0]
    assert "Traceback" not in result.stderr


def test_a_missing_context_file_is_one_line_exit_2(tmp_path: Path) -> None:
    """A context file that does not exist is refused before serving, naming it."""
    result = _run("--model", str(CTC), "serve", "--context", str(tmp_path / "none.yaml"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "none.yaml:1: cannot read the context" in result.stderr


async def test_serve_with_context_subprocess_and_websocket_client() -> None:
    """`streamer serve --context home=...` answers a real client with the intent and its slot."""
    async with daemon_process(
        "--model", str(CTC), "serve", "--port", "0",
        "--context", f"home={HOME}", "--context", f"coffee={REPO / 'contexts' / 'coffee.yaml'}",
    ) as daemon:  # fmt: skip
        events = await stream_recording(
            daemon.url, "sub", speech("cmd_living_room_light.wav"), context="home"
        )
    [utt] = _utterances(events)
    assert (utt["intent"]["name"], utt["intent"]["slots"]) == ("lightsOn", {"room": "living room"})
    event = proto.decode_event(json.dumps(utt))
    assert isinstance(event, proto.Utterance)
    assert event.intent is not None
    assert event.intent.understood is True
    assert event.intent.context == "home"

"""The command line as a user runs it: `streamer serve`, `transcribe`, and its error messages."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx_graphs import write_bundle
from websockets.asyncio.client import connect

from streamer import protocol as proto
from streamer.audio import float_to_pcm16
from streamer.streams.sources import read_audio_file

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
UNIT_S = 10.0 * float(os.environ.get("STREAMER_TEST_TIMEOUT_FACTOR", "1"))
STREAMER = [sys.executable, "-m", "streamer"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("cli")
    ctc = write_bundle(root / "ctc")
    intent = write_bundle(root / "intent", task="classify", labels=(("yes", "no"),))
    return ["--model", f"ctc={ctc}", "--model", f"intent={intent}"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STREAMER, *args], capture_output=True, text=True, timeout=6 * UNIT_S, check=False
    )


async def test_serve_subprocess_streams_and_stops_on_sigterm(bundles: list[str]) -> None:
    """`streamer serve --port 0` logs its real port, serves a stream, and exits 0 on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        *STREAMER, *bundles, "serve", "--port", "0",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    port = None
    async with asyncio.timeout(3 * UNIT_S):
        while port is None:
            line = (await proc.stderr.readline()).decode()
            assert line, "daemon exited before listening"
            if m := re.search(r"listening on ws://127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
    audio = read_audio_file(AUDIO / "cmd_living_room_light.wav").samples
    async with connect(f"ws://127.0.0.1:{port}{proto.INGEST_PATH}") as ws:
        await ws.send(
            json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le",
                        "channels": 1, "stream": "cli"})
        )  # fmt: skip
        assert json.loads(await ws.recv())["type"] == "started"
        await ws.send(float_to_pcm16(np.concatenate([audio, np.zeros(16000, np.float32)])))
        async with asyncio.timeout(3 * UNIT_S):
            while (event := json.loads(await ws.recv()))["type"] != "utterance":
                pass
        assert event["intent"]["name"] in ("yes", "no")
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(3 * UNIT_S):
            rest = await proc.stderr.read()
            assert await proc.wait() == 0
    assert b"shutting down" in rest
    assert b"Traceback" not in rest


def test_transcribe_long_file_jsonl(bundles: list[str]) -> None:
    """`streamer transcribe --jsonl` on a 60 s recording prints one valid utterance event a line."""
    result = run(*bundles, "transcribe", "--jsonl", str(AUDIO / "long_lecture_silero_test.wav"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) >= 5
    starts = []
    for line in lines:
        event = proto.decode_event(line)
        assert isinstance(event, proto.Utterance)
        assert event.transcript is not None
        assert event.intent is not None
        starts.append(event.start_ms)
        assert event.end_ms <= 60_000
    assert starts == sorted(starts)


def test_transcribe_readable_and_bad_file(bundles: list[str], tmp_path: Path) -> None:
    """Readable output names the file; a missing or non-audio file is one error line, exit 2."""
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF nonsense")
    result = run(*bundles, "transcribe", str(AUDIO / "cmd_living_room_light.wav"), str(junk))
    assert result.returncode == 2
    assert result.stdout.startswith("cmd_living_room_light [")
    assert "junk.wav: not a readable audio file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/nonexistent/bundle", "serve"], "does not exist"),
        (["--model", "bad name=/tmp", "serve"], "model name"),
        (["--config", "/nonexistent.toml", "serve"], "config file"),
    ],
)
def test_bad_startup_is_one_line_exit_2(args: list[str], message: str) -> None:
    """A missing bundle, bad model name or missing config file: one clear line and exit code 2."""
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_corrupt_bundle_refuses_to_start(tmp_path: Path) -> None:
    """A bundle whose model.onnx is corrupt stops the daemon before it listens."""
    bundle = write_bundle(tmp_path / "b")
    (bundle / "model.onnx").write_bytes(b"\x00garbage")
    result = run("--model", str(bundle), "serve", "--port", "0")
    assert result.returncode == 2
    assert "cannot load" in result.stderr
    assert "listening" not in result.stderr


def test_bad_config_value(tmp_path: Path) -> None:
    """A config file with a wrong type names the setting."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nport = "eighty"\n')
    result = run("--config", str(cfg), "serve")
    assert result.returncode == 2
    assert "server.port must be int" in result.stderr


@pytest.mark.parametrize("script", ["export_onnx", "train_demo"])
def test_bin_scripts_run_from_a_shell_without_the_venv(script: str) -> None:
    """A shell whose python lacks streamer's packages hands the bin script to the repo's venv."""
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 on this machine to play the shell's python")
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"
    system = subprocess.run(
        ["/usr/bin/python3", "-c", "import websockets"], env=env, capture_output=True, check=False
    )
    if system.returncode == 0:
        print("the system python has websockets: nothing to hand over, only --help is checked")
    done = subprocess.run(
        ["/usr/bin/python3", str(repo / "bin" / script), "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=6 * UNIT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script}")

"""The command line as a user runs it: `streamer serve`, `transcribe`, and its error messages."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
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
        (["serve", "--context", "home=a,b.yaml"], "a file name with a comma"),
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


# --- the README's command lines ---------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: What a README placeholder stands for when its command line is run (``{tmp}``: a temp folder).
PLACEHOLDERS = {
    "NAME=BUNDLE": f"commands-ctc={REPO / 'exported' / 'commands-ctc'}",
    "BUNDLE": str(REPO / "exported" / "commands-ctc"),
    "H": "127.0.0.1",
    "P": "0",
    "DEVICE": "default",
    "FILE": str(AUDIO / "cmd_living_room_light.wav"),
    "kitchen.wav": str(AUDIO / "cmd_living_room_light.wav"),
    "N": "2",
    "OUT": "{tmp}/bench.json",
    "ws://HOST:PORT": "ws://127.0.0.1:8765",
    "T": "readme-token",
    "S": "3",
}
#: Placeholders that stand for something else after a given flag.
AFTER_FLAG = {("--config", "FILE"): "{tmp}/streamer.toml"}
#: Flags that need hardware or a fixed port: parsed, but left out when the line is run.
NOT_RUN = ("--mic", "--wyoming")


def readme_command_lines() -> list[tuple[str, list[str]]]:
    """Every ``streamer ...`` line of README's code blocks: (line as printed, printed output).

    Continuation lines (indented, in text blocks) join their command; a ``$`` prompt, a trailing
    ``# comment`` and leading ``VAR=value`` settings stay in the line. The output is what a
    console block prints below its ``$ streamer`` line.
    """
    found = []
    for block in re.findall(r"^```\w*\n(.*?)^```", README.read_text(), re.M | re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if not re.match(r"^(\$ )?([A-Z_]+=\S+ )*streamer ", line):
                continue
            command, output = line, []
            for nxt in lines[i + 1 :]:
                if nxt.startswith(" ") and not line.startswith("$"):
                    command += " " + nxt.strip()
                elif line.startswith("$") and nxt and not nxt.startswith("$"):
                    output.append(nxt)
                else:
                    break
            found.append((command, output))
    return found


def concrete(command: str, tmp: Path) -> tuple[dict[str, str], list[str]]:
    """The environment settings and argv (after ``streamer``) of a README line, placeholders
    filled in: every optional part is taken, the first of alternatives ``[a|b]``."""
    text = command.removeprefix("$ ").split(" # ")[0].split("  #")[0]
    text = re.sub(r"\[([^\[\]|]+)\|[^\[\]]*\]", r"\1", text)
    while re.search(r"\[[^\[\]]*\]", text):
        text = re.sub(r"\[([^\[\]]*)\]", r"\1", text)
    words = [w for w in text.replace("...", " ").split() if w]
    env = {}
    while "=" in words[0] and words[0] != "streamer":
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words.pop(0) == "streamer", command
    argv = [
        AFTER_FLAG.get((before, w), PLACEHOLDERS.get(w, w)).format(tmp=tmp)
        for before, w in zip(["", *words], words, strict=False)
    ]
    return env, argv


def without_unrunnable(argv: list[str]) -> list[str]:
    """``argv`` less the :data:`NOT_RUN` flags and their values."""
    out, skip = [], False
    for word in argv:
        if skip and not word.startswith("-"):
            skip = False
            continue
        skip = word in NOT_RUN
        if not skip:
            out.append(word)
    return out


async def start_and_stop(argv: list[str], env: dict[str, str]) -> str:
    """Start ``streamer ARGV`` (a ``serve`` line), wait until it listens, SIGTERM it; its log."""
    proc = await asyncio.create_subprocess_exec(
        *STREAMER, *argv, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    log = ""
    try:
        async with asyncio.timeout(3 * UNIT_S):
            while not (m := re.search(r"listening on ws://[^:]+:(\d+)", log)):
                line = (await proc.stderr.readline()).decode()
                assert line, f"streamer {' '.join(argv)} exited before listening:\n{log}"
                log += line
            # an answer means the loop runs on past the log line, signal handlers installed
            url = f"http://127.0.0.1:{m.group(1)}/healthz"
            with await asyncio.to_thread(urllib.request.urlopen, url, timeout=UNIT_S) as answer:
                assert answer.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(3 * UNIT_S):
            log += (await proc.stderr.read()).decode()
            code = await proc.wait()
    assert code == 0, log
    return log


README_LINES = readme_command_lines()


def test_readme_prints_the_command_lines_this_test_runs() -> None:
    """The README's usage and example blocks are found (a moved block must not pass silently)."""
    commands = [concrete(c, Path("/tmp"))[1][0] for c, _ in README_LINES]
    for name in ("serve", "transcribe", "devices", "journal", "inspect"):
        assert name in commands, name
    assert any("bench" in argv for argv in (concrete(c, Path("/tmp"))[1] for c, _ in README_LINES))


@pytest.mark.parametrize(
    ("command", "output"), README_LINES, ids=[c.split(" #")[0].strip() for c, _ in README_LINES]
)
def test_readme_command_line_runs_as_printed(
    command: str, output: list[str], tmp_path: Path
) -> None:
    """Each README command line parses as printed, global flags where it prints them, and runs.

    ``serve`` starts (on port 0) and stops; ``bench`` prints its help; the rest really run, in a
    temp folder, and a console example prints the transcripts the README shows.
    """
    from streamer.cli import parse_args

    env, argv = concrete(command, tmp_path)
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README line does not parse ({exc.code}): {command}")
    run_env = os.environ | env | {"STREAMER_TOKEN": "readme-token"}
    run_env["STREAMER_JOURNAL_PATH"] = str(tmp_path / "journal.jsonl")
    (tmp_path / "journal.jsonl").touch()
    (tmp_path / "streamer.toml").touch()
    if args.command == "serve":
        argv = without_unrunnable(argv)
        if "--port" not in argv:
            argv += ["--port", "0"]
        assert "Traceback" not in asyncio.run(start_and_stop(argv, run_env))
        return
    if args.command == "bench":
        argv = [*argv, "--help"]
    result = subprocess.run(
        [*STREAMER, *argv],
        capture_output=True,
        text=True,
        env=run_env,
        cwd=REPO if "../shared" in command else tmp_path,
        timeout=6 * UNIT_S,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    if args.command == "inspect":
        assert (tmp_path / args.png).is_file()
    printed = [re.sub(r"\[.*?\]|\(.*?\)", "", line).split() for line in output]
    got = [re.sub(r"\[.*?\]|\(.*?\)", "", line).split() for line in result.stdout.splitlines()]
    if output:
        assert got == printed, result.stdout

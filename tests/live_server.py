"""A live daemon on 127.0.0.1 port 0 for the hardening tests, and the client steps they share."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamer.app import build_services, server_info
from streamer.audio import float_to_pcm16
from streamer.config import Config, ServerConfig
from streamer.serve.websocket import StreamerServer
from streamer.streams.services import Services
from streamer.streams.sources import read_audio_file

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
UNIT_S = 10.0 * float(os.environ.get("STREAMER_TEST_TIMEOUT_FACTOR", "1"))


def speech(name: str = "stream_clean.wav", seconds: float | None = None) -> np.ndarray:
    """Real speech as 16 kHz float32, optionally cut to its first ``seconds``."""
    audio = read_audio_file(AUDIO / name)
    assert audio.rate_hz == 16000
    return audio.samples if seconds is None else audio.samples[: int(seconds * 16000)]


def config(**sections: dict[str, Any]) -> Config:
    """A Config bound to 127.0.0.1 port 0, with ``section={field: value}`` overrides."""
    server = replace(ServerConfig(host="127.0.0.1", port=0), **sections.pop("server", {}))
    base = Config(server=server)
    return replace(
        base, **{name: replace(getattr(base, name), **values) for name, values in sections.items()}
    )


class Daemon:
    """A started StreamerServer and the URLs to reach it."""

    def __init__(self, server: StreamerServer, *, scheme: str = "ws") -> None:
        self.server = server
        self.services: Services = server.services
        self.port = server.ports[0]
        self.url = f"{scheme}://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def running(
    cfg: Config,
    models: dict[str, Path],
    *,
    routes: dict[str, Callable[[Request], Response]] | None = None,
    scheme: str = "ws",
) -> AsyncIterator[Daemon]:
    """Serve ``models`` with ``cfg`` for the duration of the block, then drain and stop."""
    services = build_services(cfg, models)
    server = StreamerServer(services, info=server_info(services), routes=routes)
    await server.start()
    try:
        yield Daemon(server, scheme=scheme)
    finally:
        await server.drain(UNIT_S)
        services.runner.close()


def start_msg(stream: str = "s1", **extra: Any) -> str:
    return json.dumps(
        {
            "type": "start",
            "sample_rate": 16000,
            "encoding": "pcm_s16le",
            "channels": 1,
            "stream": stream,
            **extra,
        }
    )


def subscribe_msg(streams: list[str] | None = None, events: list[str] | None = None) -> str:
    return json.dumps({"type": "subscribe", "streams": streams or ["*"], "events": events or ["*"]})


async def send_audio(
    ws: ClientConnection, samples: np.ndarray, *, chunk_ms: int = 100, pace_s: float = 0.0
) -> None:
    """Send ``samples`` as 16-bit PCM in ``chunk_ms`` frames, ``pace_s`` apart."""
    data = float_to_pcm16(samples)
    step = 16000 * chunk_ms // 1000 * 2
    for i in range(0, len(data), step):
        await ws.send(data[i : i + step])
        if pace_s:
            await asyncio.sleep(pace_s)


async def collect(ws: ClientConnection, *, timeout_s: float = 3 * UNIT_S) -> list[dict[str, Any]]:
    """Read events until the server closes the connection."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                message = await ws.recv()
            except ConnectionClosed:
                return events
            events.append(json.loads(message))


async def read_until(
    ws: ClientConnection, done: Callable[[list[dict[str, Any]]], bool], *, timeout_s: float = UNIT_S
) -> list[dict[str, Any]]:
    """Read events until ``done(events)`` holds."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        while not done(events):
            events.append(json.loads(await ws.recv()))
    return events


async def http_get(
    port: int, path: str, headers: list[tuple[str, str]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET; returns status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    async with asyncio.timeout(UNIT_S):
        raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    pairs = (line.split(": ", 1) for line in header_lines)
    fields = {name.lower(): value for name, value in pairs}
    return int(status_line.split()[1]), fields, body


@dataclass
class DaemonProcess:
    """``python -m streamer ... serve`` as a child process: its ports and its log so far."""

    proc: asyncio.subprocess.Process
    ports: dict[str, int]
    log: list[str]

    @property
    def url(self) -> str:
        """The WebSocket base URL of its ``streamer`` listener."""
        return f"ws://127.0.0.1:{self.ports['streamer']}"


@contextlib.asynccontextmanager
async def daemon_process(
    *args: str, listeners: tuple[str, ...] = ("streamer",)
) -> AsyncIterator[DaemonProcess]:
    """Run ``python -m streamer *args`` (info logging) until every listener logs its port.

    On leaving the block: SIGTERM, and the daemon must exit 0 with no traceback on stderr.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamer", *args,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "STREAMER_LOG_LEVEL": "info"},
    )  # fmt: skip
    assert proc.stderr is not None
    daemon = DaemonProcess(proc, {}, [])
    try:
        async with asyncio.timeout(3 * UNIT_S):
            while len(daemon.ports) < len(listeners):
                line = (await proc.stderr.readline()).decode()
                assert line, f"daemon exited before listening: {''.join(daemon.log)}"
                daemon.log.append(line)
                if m := re.search(r"(\w+) listening on \w+://127\.0\.0\.1:(\d+)", line):
                    daemon.ports[m.group(1)] = int(m.group(2))
        yield daemon
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(3 * UNIT_S):
            rest = await proc.stderr.read()
            assert await proc.wait() == 0
    assert b"Traceback" not in rest


async def stream_recording(
    url: str, name: str, audio: np.ndarray, **start: Any
) -> list[dict[str, Any]]:
    """Send one recording (plus 1 s of silence) as stream ``name``; return every event."""
    from websockets.asyncio.client import connect

    async with connect(f"{url}/v1/stream") as ws:
        await ws.send(start_msg(name, **start))
        await send_audio(ws, np.concatenate([audio, np.zeros(16000, np.float32)]))
        await ws.send(json.dumps({"type": "end"}))
        return await collect(ws)

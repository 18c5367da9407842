"""The live-captions page in real Chromium, its microphone fed from a real-speech WAV file.

The daemon runs in this process over TLS with a token, on the shipped default bundles, and the
test asserts that the page shows exactly the utterances the server produced from what the
browser captured, each with its intent and latency (not that the demo models heard right).
``CAPTIONS_PNG=$PWD/docs/captions.png make pytest PYTEST_ARGS="-k captions_page"`` refreshes the
README's screenshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from streamer import protocol as proto
from streamer.app import build_services, server_info
from streamer.config import Config, ServerConfig
from streamer.serve.routes import read_page_file, routes
from streamer.serve.security import SecurityConfig
from streamer.serve.websocket import StreamerServer
from streamer.streams.sources import read_audio_file

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
EXPORTED = Path(__file__).resolve().parents[1] / "exported"
UNIT_S = 10.0 * float(os.environ.get("STREAMER_TEST_TIMEOUT_FACTOR", "1"))
TOKEN = "captions-s3cret"
STREAM = "captions-test"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Reads the captions the page shows.
CAPTIONS_JS = """items => items.map(li => ({
    id: li.dataset.utteranceId,
    text: li.querySelector('.text').textContent,
    intent: li.querySelector('.intent').dataset.name,
    latency: li.querySelector('.latency') && li.querySelector('.latency').dataset.ms,
    server: li.querySelector('.latency') && li.querySelector('.latency').dataset.serverMs,
    classes: li.className,
}))"""
CHROMIUM_FLAGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _skip_reason() -> str | None:
    if CHROMIUM is None:
        return "chromium is not installed (make install adds it)"
    if shutil.which("openssl") is None:
        return "openssl is not installed (make install adds it)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (the dev extra has it)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.fixture(scope="module")
def fake_mic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A 16-bit WAV: 0.5 s silence, "turn on the living room light", 1.5 s silence."""
    speech = read_audio_file(AUDIO / "cmd_living_room_light.wav")
    assert speech.rate_hz == 16000
    silence = np.zeros(8000, dtype=np.float32)
    samples = np.concatenate([silence, speech.samples, silence, silence, silence])
    path = tmp_path_factory.mktemp("mic") / "speech.wav"
    soundfile.write(path, samples, 16000, subtype="PCM_16")
    return path, len(samples) / 16000


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1."""
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=UNIT_S,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    """The shipped default bundles: the page shows what a user of `make run` sees."""
    return {name: EXPORTED / f"commands-{name}" for name in ("ctc", "intent")}


async def start_daemon(
    models: dict[str, Path], tls: tuple[Path, Path], *, port: int = 0
) -> StreamerServer:
    """The daemon over TLS with a token, serving the page (as `streamer serve` does)."""
    cert, key = tls
    config = Config(
        server=ServerConfig(host="127.0.0.1", port=port),
        security=SecurityConfig(token=TOKEN, certfile=str(cert), keyfile=str(key)),
    )
    services = build_services(config, models)
    server = StreamerServer(services, info=server_info(services), routes=routes(services))
    await server.start()
    return server


async def stop_daemon(server: StreamerServer) -> None:
    await server.drain(UNIT_S)
    server.services.runner.close()


@pytest.fixture
async def daemon(models: dict[str, Path], tls: tuple[Path, Path]) -> AsyncIterator[StreamerServer]:
    server = await start_daemon(models, tls)
    yield server
    await stop_daemon(server)


@contextlib.asynccontextmanager
async def chromium(profile: Path, mic: str) -> AsyncIterator[Any]:
    """Headless Debian Chromium whose microphone plays ``mic`` (a WAV path, optional %noloop)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            ignore_https_errors=True,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={mic}"],
            viewport={"width": 1000, "height": 560},
        )
        try:
            yield browser.pages[0] if browser.pages else await browser.new_page()
        finally:
            await browser.close()


def test_page_files_ship_with_the_package() -> None:
    """index.html loads app.js, which loads worklet.js; all three are package data."""
    assert b"app.js__ASSET_QUERY__" in read_page_file("index.html")
    assert b'url("worklet.js")' in read_page_file("app.js")
    assert b'registerProcessor("pcm-capture"' in read_page_file("worklet.js")


async def test_captions_page_in_chromium(
    daemon: StreamerServer, fake_mic: tuple[Path, float], tmp_path: Path
) -> None:
    """Chromium's fake mic plays real speech; the page shows the server's utterances live."""
    wav, duration_s = fake_mic
    base = f"https://127.0.0.1:{daemon.ports[0]}"
    sub = daemon.services.hub.subscribe(streams=(STREAM,), events=("utterance",))
    sockets: list[str] = []
    errors: list[str] = []
    async with chromium(tmp_path / "profile", f"{wav}%noloop") as page:
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{base}/?token={TOKEN}&stream={STREAM}")
        await page.click("#start")
        await page.wait_for_function(
            "() => document.body.dataset.state === 'live'", timeout=3 * UNIT_S * 1000
        )
        # every sample of the file must reach the server (a silent fake mic reads as 0)
        need = int(16000 * (duration_s - 0.5))
        await page.wait_for_function(
            f"() => Number(document.body.dataset.samplesSent || 0) >= {need}",
            timeout=3 * UNIT_S * 1000,
        )
        await page.click("#stop")  # end: the server flushes and closes with 1000
        await page.wait_for_function(
            "() => document.body.dataset.state === 'idle'", timeout=UNIT_S * 1000
        )
        shown = await page.eval_on_selector_all("#captions li", CAPTIONS_JS)
        # audio captured before the stream went live was kept and sent, not dropped
        assert await page.evaluate("document.body.dataset.samplesDropped") == "0"
        await page.screenshot(path=str(tmp_path / "captions.png"))
    published, _ = sub.drain()
    sent = [proto.decode_event(text) for text in published]
    utterances = [u for u in sent if isinstance(u, proto.Utterance)]
    assert len(utterances) == 1, [(u.start_ms, u.end_ms) for u in utterances]
    by_id = {item["id"]: item for item in shown}
    assert set(by_id) == {u.utterance_id for u in utterances}
    for u in utterances:
        item = by_id[u.utterance_id]
        assert u.transcript is not None
        assert u.intent is not None
        assert item["text"] == (u.transcript.text or "(no words)")
        assert item["intent"] == u.intent.name
        assert "listening" not in item["classes"]
        assert 0 <= int(item["latency"]) < 3 * UNIT_S * 1000
        assert float(item["server"]) == u.latency_ms.end_of_speech_to_emit
        # the utterance is the speech (1.4 s of it), after 0.5 s of silence in the 2.4 s file;
        # a loaded machine may start the fake mic's playback before the page captures, so the
        # stream can begin a little into that silence
        assert 0 <= u.start_ms <= 1200
        assert u.start_ms + 800 <= u.end_ms <= 3000
    assert sockets == [f"wss://127.0.0.1:{daemon.ports[0]}/v1/stream?token={TOKEN}"]
    assert errors == []  # no uncaught exception in the page's scripts
    assert (tmp_path / "captions.png").stat().st_size > 10_000
    if docs_png := os.environ.get("CAPTIONS_PNG"):  # how docs/captions.png is made
        shutil.copyfile(tmp_path / "captions.png", docs_png)


async def test_page_and_scripts_need_the_token(daemon: StreamerServer) -> None:
    """Without the token even the page is refused; with it, index.html passes it to app.js."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    base = f"https://127.0.0.1:{daemon.ports[0]}"

    def get(path: str) -> tuple[int, bytes, dict[str, Any]]:
        try:
            with urllib.request.urlopen(base + path, timeout=UNIT_S, context=context) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, b"", {}

    assert (await asyncio.to_thread(get, "/"))[0] == 401
    assert (await asyncio.to_thread(get, "/app.js"))[0] == 401
    status, body, headers = await asyncio.to_thread(get, f"/?token={TOKEN}")
    assert status == 200
    assert f'src="app.js?token={TOKEN}"'.encode() in body
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, body, headers = await asyncio.to_thread(get, f"/worklet.js?token={TOKEN}")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    status, body, _ = await asyncio.to_thread(get, f"/metrics?token={TOKEN}")
    assert status == 200
    assert b"streamer_end_of_speech_to_final_seconds" in body


async def test_page_reconnects_after_a_daemon_restart(
    models: dict[str, Path],
    tls: tuple[Path, Path],
    fake_mic: tuple[Path, float],
    tmp_path: Path,
) -> None:
    """When the daemon restarts, the page reconnects by itself and captions go on."""
    wav, _ = fake_mic
    first = await start_daemon(models, tls)
    port = first.ports[0]
    sockets: list[str] = []
    async with chromium(tmp_path / "profile", str(wav)) as page:  # the file loops
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await page.goto(f"https://127.0.0.1:{port}/?token={TOKEN}&stream={STREAM}")
        await page.click("#start")
        live = "() => document.body.dataset.state === 'live'"
        await page.wait_for_function(live, timeout=3 * UNIT_S * 1000)
        await stop_daemon(first)  # closes the page's connection with 1001
        await page.wait_for_function(
            "() => document.body.dataset.state === 'reconnecting'", timeout=UNIT_S * 1000
        )
        second = await start_daemon(models, tls, port=port)
        try:
            sub = second.services.hub.subscribe(streams=(STREAM,), events=("utterance",))
            await page.wait_for_function(live, timeout=3 * UNIT_S * 1000)
            published: list[str] = []
            async with asyncio.timeout(3 * UNIT_S):
                while not published:
                    await asyncio.sleep(0.1)
                    published += sub.drain()[0]
            event = proto.decode_event(published[0])
            assert isinstance(event, proto.Utterance)
            selector = f'li[data-utterance-id="{event.utterance_id}"][data-seq]'
            await page.wait_for_selector(selector, timeout=UNIT_S * 1000)
            await page.click("#stop")
        finally:
            await stop_daemon(second)
    assert len(sockets) >= 2
    assert set(sockets) == {f"wss://127.0.0.1:{port}/v1/stream?token={TOKEN}"}

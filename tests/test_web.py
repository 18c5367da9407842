"""The live-captions page in real Chromium, its microphone fed from a real-speech WAV file.

The daemon runs in this process over TLS with a token, on the shipped default bundles, and the
test asserts that the page shows exactly the utterances the server produced from what the
browser captured, each with its intent and latency (not that the demo models heard right), and
that a line shows the server's partials while its utterance is spoken, until the final comes.
``CAPTIONS_PNG=$PWD/docs/captions.png make pytest PYTEST_ARGS="-k captions_page"`` refreshes the
README's screenshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
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
from streamer.partials import PartialsConfig
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
#: Records, from before the page's script runs, every state of each caption line that shows a
#: partial (stable words and the dimmed tail), and whether the line already had its final then.
PARTIALS_SEEN_JS = """(() => {
    window.partialsSeen = [];
    const last = new Map();
    const record = () => {
        for (const li of document.querySelectorAll('#captions li')) {
            const stable = li.querySelector('.text .stable');
            const tail = li.querySelector('.text .tail');
            if (!stable && !tail) continue;
            const seen = {
                id: li.dataset.utteranceId,
                revision: Number(li.dataset.revision),
                stable: stable ? stable.textContent : null,
                tail: tail ? tail.textContent : null,
                tailHidden: tail ? tail.getAttribute('aria-hidden') : null,
                dimmed: tail && getComputedStyle(tail).color !== getComputedStyle(li).color,
                final: 'seq' in li.dataset,
            };
            const key = JSON.stringify(seen);
            if (last.get(seen.id) !== key) {
                last.set(seen.id, key);
                window.partialsSeen.push(seen);
            }
        }
    };
    new MutationObserver(record).observe(document, {
        subtree: true, childList: true, characterData: true, attributes: true,
    });
})()"""
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


def mic_file(speech_wav: Path, out: Path) -> tuple[Path, float]:
    """Write ``out``: 0.5 s silence, the speech, 1.5 s silence (16-bit); return it, its length."""
    speech = read_audio_file(speech_wav)
    assert speech.rate_hz == 16000
    silence = np.zeros(8000, dtype=np.float32)
    samples = np.concatenate([silence, speech.samples, silence, silence, silence])
    soundfile.write(out, samples, 16000, subtype="PCM_16")
    return out, len(samples) / 16000


@pytest.fixture(scope="module")
def fake_mic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A 16-bit WAV: 0.5 s silence, "turn on the living room light", 1.5 s silence."""
    out = tmp_path_factory.mktemp("mic") / "speech.wav"
    return mic_file(AUDIO / "cmd_living_room_light.wav", out)


@pytest.fixture(scope="module")
def sentence_mic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A 16-bit WAV: 0.5 s silence, a 2.9 s spoken sentence, 1.5 s silence."""
    out = tmp_path_factory.mktemp("mic") / "sentence.wav"
    return mic_file(AUDIO / "sent_harvard_spk1_snt1.wav", out)


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
    models: dict[str, Path],
    tls: tuple[Path, Path],
    *,
    port: int = 0,
    partials: PartialsConfig | None = None,
) -> StreamerServer:
    """The daemon over TLS with a token, serving the page (as `streamer serve` does)."""
    cert, key = tls
    config = Config(
        server=ServerConfig(host="127.0.0.1", port=port),
        security=SecurityConfig(token=TOKEN, certfile=str(cert), keyfile=str(key)),
        partials=partials or PartialsConfig(),
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


async def play_whole_file(page: Any, duration_s: float) -> None:
    """Start the page's microphone (the fake one plays a file), wait until every sample of the
    file reached the server (a silent fake mic reads as 0), then stop: the server flushes and
    closes with 1000."""
    await page.click("#start")
    await page.wait_for_function(
        "() => document.body.dataset.state === 'live'", timeout=3 * UNIT_S * 1000
    )
    need = int(16000 * (duration_s - 0.5))
    await page.wait_for_function(
        f"() => Number(document.body.dataset.samplesSent || 0) >= {need}",
        timeout=3 * UNIT_S * 1000,
    )
    await page.click("#stop")


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
        await play_whole_file(page, duration_s)
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


def record_frames(page: Any, frames: list[dict[str, Any]]) -> None:
    """Append every JSON message the page sends on its WebSockets to ``frames``."""

    def on_frame(data: str | bytes) -> None:
        if isinstance(data, str):
            frames.append(json.loads(data))

    page.on("websocket", lambda ws: ws.on("framesent", on_frame))


async def test_page_shows_partials_then_the_final(
    models: dict[str, Path],
    tls: tuple[Path, Path],
    sentence_mic: tuple[Path, float],
    tmp_path: Path,
) -> None:
    """While a sentence is spoken its line shows partials (stable, dimmed tail), then the final."""
    wav, duration_s = sentence_mic
    daemon = await start_daemon(models, tls, partials=PartialsConfig(interval_ms=200))
    sub = daemon.services.hub.subscribe(streams=(STREAM,), events=("partial", "utterance"))
    frames: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        async with chromium(tmp_path / "profile", f"{wav}%noloop") as page:
            record_frames(page, frames)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.add_init_script(script=PARTIALS_SEEN_JS)
            await page.goto(f"https://127.0.0.1:{daemon.ports[0]}/?token={TOKEN}&stream={STREAM}")
            await play_whole_file(page, duration_s)
            await page.wait_for_function(
                "() => document.body.dataset.state === 'idle'", timeout=UNIT_S * 1000
            )
            seen = await page.evaluate("window.partialsSeen")
            lines = await page.eval_on_selector_all(
                "#captions[aria-live] li",
                """items => items.map(li => ({
                    id: li.dataset.utteranceId,
                    text: li.querySelector('.text').textContent,
                    spans: li.querySelectorAll('.text .stable, .text .tail').length,
                    hidden: li.querySelectorAll('[aria-hidden]').length,
                    busy: li.getAttribute('aria-busy'),
                    classes: li.className,
                }))""",
            )
    finally:
        await stop_daemon(daemon)
    published = [proto.decode_event(text) for text in sub.drain()[0]]
    utterances = [e for e in published if isinstance(e, proto.Utterance)]
    assert len(utterances) == 1, [(u.start_ms, u.end_ms) for u in utterances]
    final = utterances[0]
    partials = {e.revision: e for e in published if isinstance(e, proto.Partial)}
    assert partials, "the server sent no partial while the sentence was spoken"
    assert {p.utterance_id for p in partials.values()} == {final.utterance_id}
    assert [f.get("want") for f in frames if f["type"] == "start"] == [["partial"]]
    # before its final, the line showed what a partial said: stable words, then the dimmed tail
    shown = [s for s in seen if s["id"] == final.utterance_id]
    assert shown, f"the page showed none of the partials {list(partials.values())}"
    for s in shown:
        assert not s["final"]  # the final replaced the partial's spans at once
        partial = partials[s["revision"]]
        assert s["stable"].split() == partial.stable_text.split()
        assert (s["stable"] + s["tail"]).split() == partial.text.split()
        assert s["tailHidden"] == "true"
        assert s["dimmed"] or not s["tail"].strip()
    revisions = [s["revision"] for s in shown]
    assert revisions == sorted(revisions)
    stable = [s["stable"].split() for s in shown]
    assert all(b[: len(a)] == a for a, b in itertools.pairwise(stable))
    # at the end the line holds the final text, readable, with nothing dimmed or hidden left
    assert final.transcript is not None
    assert lines == [
        {
            "id": final.utterance_id,
            "text": final.transcript.text or "(no words)",
            "spans": 0,
            "hidden": 0,
            "busy": None,
            "classes": "utt",
        }
    ]
    assert errors == []


async def test_page_streams_without_partials_when_no_ctc_model_runs(
    daemon: StreamerServer, fake_mic: tuple[Path, float], tmp_path: Path
) -> None:
    """A stream of intent models only refuses partials; the page starts it again without them."""
    wav, _ = fake_mic
    frames: list[dict[str, Any]] = []
    async with chromium(tmp_path / "profile", f"{wav}%noloop") as page:
        record_frames(page, frames)
        await page.goto(
            f"https://127.0.0.1:{daemon.ports[0]}/?token={TOKEN}&stream={STREAM}&models=intent"
        )
        await page.click("#start")
        await page.wait_for_selector("#captions li[data-seq]", timeout=3 * UNIT_S * 1000)
        error = await page.text_content("#error")
        info = await page.text_content("#info")
        await page.click("#stop")
    starts = [f for f in frames if f["type"] == "start"]
    assert [(f["models"], f.get("want")) for f in starts] == [
        (["intent"], ["partial"]),
        (["intent"], None),
    ]
    assert (error, info) == ("", "intent")

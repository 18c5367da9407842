"""Access control and transport security against a live daemon: token, Origin, TLS, limits."""

from __future__ import annotations

import http
import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from live_server import UNIT_S, collect, config, http_get, running, send_audio, speech, start_msg
from onnx_graphs import write_bundle
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response

from streamer import protocol as proto
from streamer.errors import ConfigError
from streamer.serve.security import (
    Guard,
    SecurityConfig,
    exposure_warning,
    load_token,
    presented_token,
    tls_context,
)

TOKEN = "s3cr3t-Token_0123456789"
PATHS = ["/v1/stream", "/v1/events", "/readyz", "/extra", "/nope", "/healthz/", "//healthz"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {"ctc": write_bundle(root / "ctc")}


def extra_route(request: Request) -> Response:
    return Response(200, "OK", Headers([("Content-Length", "2")]), b"ok")


def without_date(fields: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in fields.items() if k != "date"}


async def test_every_endpoint_refuses_without_the_token(models: dict[str, Path]) -> None:
    """Without a token, or with a wrong one, every path but /healthz gets the same bare 401."""
    cfg = config(security={"token": TOKEN})
    async with running(cfg, models, routes={"/extra": extra_route}) as d:
        for path in PATHS:
            none = await http_get(d.port, path)
            wrong = await http_get(d.port, path, [("Authorization", "Bearer " + TOKEN[:-1])])
            query = await http_get(d.port, path + "?token=" + TOKEN + "x")
            assert none[0] == 401, path
            assert none[2] == b""
            assert without_date(none[1]) == without_date(wrong[1]) == without_date(query[1])
            assert none[1]["www-authenticate"] == "Bearer"
            assert (wrong[0], wrong[2], query[0], query[2]) == (401, b"", 401, b"")
        for path in (proto.INGEST_PATH, proto.EVENTS_PATH):
            with pytest.raises(InvalidStatus) as info:
                await connect(d.url + path)
            assert info.value.response.status_code == 401
        status, _, body = await http_get(d.port, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})


async def test_healthz_can_be_closed_too(models: dict[str, Path]) -> None:
    """With public_healthz off, /healthz also needs the token."""
    cfg = config(security={"token": TOKEN, "public_healthz": False})
    async with running(cfg, models) as d:
        assert (await http_get(d.port, "/healthz"))[0] == 401
        auth = [("Authorization", f"Bearer {TOKEN}")]
        assert (await http_get(d.port, "/healthz", auth))[0] == 200


async def test_token_in_header_or_query_opens_every_endpoint(models: dict[str, Path]) -> None:
    """The right token, as a Bearer header or a token parameter, is let through everywhere."""
    cfg = config(security={"token": TOKEN})
    async with running(cfg, models, routes={"/extra": extra_route}) as d:
        auth = [("Authorization", f"bearer   {TOKEN} ")]
        assert (await http_get(d.port, "/readyz", auth))[0] == 200
        assert (await http_get(d.port, f"/readyz?a=1&token={TOKEN}"))[0] == 200
        assert (await http_get(d.port, "/extra", auth))[2] == b"ok"
        assert (await http_get(d.port, "/nope", auth))[0] == 404
        twice = [*auth, ("Authorization", f"Bearer {TOKEN}")]
        assert (await http_get(d.port, "/readyz", twice))[0] == 401
        assert (await http_get(d.port, f"/readyz?token={TOKEN}&token={TOKEN}"))[0] == 401
        basic = [("Authorization", f"Basic {TOKEN}")]
        assert (await http_get(d.port, "/readyz", basic))[0] == 401
        header = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(d.url + proto.EVENTS_PATH, additional_headers=header) as ws:
            await ws.send(json.dumps({"type": "subscribe", "streams": ["*"]}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
        async with connect(f"{d.url}{proto.INGEST_PATH}?token={TOKEN}") as ws:
            await ws.send(start_msg())
            assert json.loads(await ws.recv())["type"] == "started"


async def test_origin_allow_list(models: dict[str, Path]) -> None:
    """A browser Origin not on the list gets 403; listed ones and non-browser clients pass."""
    cfg = config(security={"origins": "https://app.example, http://localhost:8080/"})
    async with running(cfg, models) as d:
        for origin in ("https://evil.example", "https://app.example.evil", "null"):
            with pytest.raises(InvalidStatus) as info:
                await connect(d.url + proto.EVENTS_PATH, origin=origin)  # type: ignore[arg-type]
            assert info.value.response.status_code == 403
            assert info.value.response.body == b""
        for origin in ("https://app.example", "HTTP://LOCALHOST:8080"):
            async with connect(d.url + proto.EVENTS_PATH, origin=origin):  # type: ignore[arg-type]
                pass
        async with connect(d.url + proto.EVENTS_PATH):
            pass
        two = [("Origin", "https://app.example"), ("Origin", "https://evil.example")]
        assert (await http_get(d.port, "/readyz", two))[0] == 403


@pytest.mark.parametrize(
    "frame",
    [b"\x00" * 5000, "x" * 5000, json.dumps({"type": "subscribe", "streams": ["a" * 60] * 80})],
)
async def test_oversize_frames_close_with_1009(models: dict[str, Path], frame: str | bytes) -> None:
    """Text or binary frames above max_message_bytes close either endpoint with 1009."""
    async with running(config(server={"max_message_bytes": 4096}), models) as d:
        for path in (proto.INGEST_PATH, proto.EVENTS_PATH):
            async with connect(d.url + path) as ws:
                await ws.send(frame)
                await collect(ws)
                assert ws.close_code == 1009, path


async def test_models_are_chosen_by_name_never_by_path(models: dict[str, Path]) -> None:
    """A model named by a path, even the path of a loaded bundle, is refused; the name works."""
    bundle = models["ctc"]
    async with running(config(), models) as d:
        for name, code in [
            (str(bundle), "bad_field"),
            (str(bundle.relative_to(bundle.parent.parent)), "bad_field"),
            ("../ctc", "bad_field"),
            ("ctc/", "bad_field"),
            ("..", "bad_field"),
            (bundle.name + "2", "unknown_model"),
        ]:
            async with connect(d.url + proto.INGEST_PATH) as ws:
                await ws.send(start_msg(models=[name]))
                events = await collect(ws)
            assert events[-1]["code"] == code, name
            assert not any(e["type"] == "started" for e in events)
        async with connect(d.url + proto.INGEST_PATH) as ws:
            await ws.send(start_msg(models=["ctc"]))
            assert json.loads(await ws.recv())["models"][0]["name"] == "ctc"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (made with the openssl tool)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=UNIT_S,
    )  # fmt: skip
    return cert, key


async def test_tls_serves_wss(models: dict[str, Path], certificate: tuple[Path, Path]) -> None:
    """With a certificate the daemon speaks wss:// (token included); plain ws:// fails."""
    cert, key = certificate
    security = {"certfile": str(cert), "keyfile": str(key), "token": TOKEN}
    client = ssl.create_default_context(cafile=str(cert))
    async with running(config(security=security), models, scheme="wss") as d:
        url = f"{d.url}{proto.INGEST_PATH}?token={TOKEN}"
        async with connect(url, ssl=client) as ws:
            await ws.send(start_msg())
            assert json.loads(await ws.recv())["type"] == "started"
            await send_audio(ws, speech("cmd_living_room_light.wav"))
            await ws.send(json.dumps({"type": "end"}))
            events = await collect(ws)
        assert [e["type"] for e in events].count("utterance") == 1
        with pytest.raises(InvalidStatus) as info:
            await connect(d.url + proto.INGEST_PATH, ssl=client)
        assert info.value.response.status_code == 401
        with pytest.raises(Exception):  # noqa: B017, PT011 (the exact failure is the OS's)
            await connect(d.url.replace("wss", "ws") + proto.INGEST_PATH, open_timeout=UNIT_S)


def test_tls_and_token_settings_are_checked(tmp_path: Path) -> None:
    """Unusable tokens, origins, key files and certificates stop the daemon with ConfigError."""
    bad: list[dict[str, Any]] = [
        {"token": ""},
        {"token": "has space"},
        {"token": "caf\u00e9"},
        {"token": "a", "token_file": "/x"},
        {"origins": "app.example"},
        {"origins": "https://app.example/path"},
        {"keyfile": "/k.pem"},
    ]
    for fields in bad:
        with pytest.raises(ConfigError):
            SecurityConfig(**fields)
    with pytest.raises(ConfigError, match="does not exist"):
        tls_context(SecurityConfig(certfile=str(tmp_path / "missing.pem")))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="cannot load"):
        tls_context(SecurityConfig(certfile=str(junk)))
    assert tls_context(SecurityConfig()) is None


def test_token_file(tmp_path: Path) -> None:
    """The token file's first line is the token; a missing or empty file is a ConfigError."""
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\nsecond line\n")
    assert load_token(SecurityConfig(token_file=str(path))) == TOKEN
    path.write_text("\n")
    with pytest.raises(ConfigError, match="printable ASCII"):
        load_token(SecurityConfig(token_file=str(path)))
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(SecurityConfig(token_file=str(tmp_path / "none")))


def test_exposure_warning() -> None:
    """Binding beyond loopback without a token is warned about; loopback or a token is not."""
    assert exposure_warning("127.0.0.1", SecurityConfig()) is None
    assert exposure_warning("0.0.0.0", SecurityConfig(token=TOKEN)) is None
    warning = exposure_warning("0.0.0.0", SecurityConfig())
    assert warning is not None
    assert "without a token" in warning


def request(path: str = "/v1/stream", **headers: str) -> Request:
    return Request(path, Headers(list(headers.items())))


header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)


@settings(max_examples=300)
@given(header_text | st.just(TOKEN), st.text(max_size=60), st.sampled_from(["header", "query"]))
def test_only_the_exact_token_passes(value: str, path: str, where: str) -> None:
    """Any presented value other than the token is refused with 401, and nothing raises."""
    guard = Guard(token=TOKEN)
    req = (
        request("/" + path, Authorization="Bearer " + value)
        if where == "header"
        else request("/x?" + path + "&token=" + value)
    )
    got = guard.check(req)
    if presented_token(req) == TOKEN:
        assert got is None
    else:
        assert got is not None
        assert got.status_code == http.HTTPStatus.UNAUTHORIZED


def test_presented_token_forms() -> None:
    """Header wins over the query; odd forms carry no token."""
    assert presented_token(request(Authorization="Bearer abc")) == "abc"
    assert presented_token(request("/x?token=q", Authorization="Bearer h")) == "h"
    assert presented_token(request("/x?token=q")) == "q"
    assert presented_token(request("/x?token=a%2Bb")) == "a+b"
    assert presented_token(request(Authorization="Bearer")) is None
    assert presented_token(request(Authorization="Token abc")) is None
    assert presented_token(request("/x?" + "&".join(f"k{i}=v" for i in range(40)))) is None
    assert presented_token(request("/x")) is None

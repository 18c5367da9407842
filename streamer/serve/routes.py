"""The daemon's plain-HTTP routes besides health: the live-captions page and ``/metrics``.

The page is three static files shipped in ``streamer/web/`` (vanilla JavaScript, no build
step): ``/`` (index.html), ``/app.js`` and ``/worklet.js``. When the server asks for a token
(see :mod:`streamer.serve.security`) every request needs it, the page's own files included; the page
is opened as ``/?token=T``, and the token is passed on to the script URLs here and to the
WebSocket by the script. Responses forbid framing, sniffing and referrers (the token is in URLs).
"""

from __future__ import annotations

import http
import importlib.resources
import json
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from streamer.serve.bus import Bus
from streamer.serve.metrics import CONTENT_TYPE, METRICS_PATH
from streamer.serve.security import TOKEN_PARAM, query_param
from streamer.streams.services import Services, accepting_streams

Handler = Callable[[Request], Response]

#: URL path -> (file in streamer/web, Content-Type).
PAGE_FILES: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/worklet.js": ("worklet.js", "text/javascript; charset=utf-8"),
}
#: Placeholder in index.html replaced by the query string the page's script URL needs.
ASSET_QUERY: Final = "__ASSET_QUERY__"
_CSP: Final = (
    "default-src 'self'; script-src 'self'; connect-src 'self' ws: wss:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; media-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def read_page_file(name: str) -> bytes:
    """Return one of the page's files as shipped in the package (``streamer/web/NAME``)."""
    return importlib.resources.files("streamer.serve").joinpath("web", name).read_bytes()


def page_routes() -> dict[str, Handler]:
    """Routes serving the captions page (files read once, now)."""
    files = {name: read_page_file(name) for name, _ in PAGE_FILES.values()}

    def handler(path: str) -> Handler:
        name, content_type = PAGE_FILES[path]
        body = files[name]

        def handle(request: Request) -> Response:
            data = body
            if name == "index.html":
                data = body.replace(ASSET_QUERY.encode(), _asset_query(request).encode())
            return _response(data, content_type)

        return handle

    return {path: handler(path) for path in PAGE_FILES}


def routes(services: Services) -> dict[str, Handler]:
    """Every extra route of the daemon: the captions page and ``/metrics``."""
    return {**page_routes(), **metrics_route(services)}


def metrics_route(services: Services) -> dict[str, Handler]:
    """The ``/metrics`` route; from now on the daemon's metrics report its live state."""
    metrics = services.metrics
    metrics.watch(runner=services.runner, streams=services.streams, hub=services.hub)

    def handle(request: Request) -> Response:
        del request
        body = metrics.render()
        headers = Headers([("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return Response(http.HTTPStatus.OK.value, http.HTTPStatus.OK.phrase, headers, body)

    return {METRICS_PATH: handle}


def bus_readyz_route(
    services: Services, bus: Bus, *, info: dict[str, Any], draining: Callable[[], bool]
) -> dict[str, Handler]:
    """``/readyz`` of a daemon on an event bus: 503 while the bus is down, the bus's state shown.

    A balancer then routes new clients to replicas that reach the bus; this replica still
    serves the clients it has. ``draining`` says whether the server is shutting down.
    """

    def handle(request: Request) -> Response:
        del request
        ready = not draining() and accepting_streams(services) and bus.up
        status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
        body = (json.dumps({"ready": ready, **info, "bus": bus.status()}) + "\n").encode()
        headers = Headers(
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return Response(status.value, status.phrase, headers, body)

    return {"/readyz": handle}


def _asset_query(request: Request) -> str:
    """``?token=...`` (URL-encoded) when the page was opened with one, else empty."""
    try:
        token = query_param(request, TOKEN_PARAM)
    except ValueError:
        return ""
    return "" if token is None else f"?token={quote(token, safe='')}"


def _response(body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("Content-Security-Policy", _CSP),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ]
    )
    return Response(http.HTTPStatus.OK.value, http.HTTPStatus.OK.phrase, headers, body)

"""Who may connect: an optional bearer token, an optional Origin allow-list, and TLS.

Every HTTP request the server receives, WebSocket upgrades and plain GETs alike, passes
:meth:`Guard.check` before anything else reads it. A refused request gets a bare ``401`` (no
token, or a wrong one) or ``403`` (an Origin not on the list): no body, no hint about what was
wrong beyond the status, and the same answer for a missing and a wrong token. ``/healthz`` may
stay open for liveness probes (``security.public_healthz``); it only ever says ``ok``.

The token is compared in constant time: both sides are hashed with SHA-256 first, so neither
its content nor its length leaks through timing, then compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import http
import logging
import ssl
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from streamer.errors import ConfigError
from streamer.serving_config import SecurityConfig, check_token, parse_origins

log = logging.getLogger(__name__)

#: Path that may answer without the token (see SecurityConfig.public_healthz).
HEALTH_PATH: Final = "/healthz"
#: Query parameter that may carry the token (browsers cannot set headers on WebSockets).
TOKEN_PARAM: Final = "token"
#: Fields a request's query may have; one with more is malformed (see :func:`query_param`).
MAX_QUERY_FIELDS: Final = 32


def load_token(config: SecurityConfig) -> str | None:
    """Return the configured token, reading ``token_file`` if that is how it is given.

    Raises:
        ConfigError: the token file is unreadable, empty or holds an unusable token.
    """
    if config.token_file is None:
        return config.token
    path = Path(config.token_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"security.token_file {path}: cannot read it ({exc})") from None
    token = lines[0].strip() if lines else ""
    check_token(token, f"the token in {path}")
    return token


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Guard:
    """Decides, per HTTP request, whether it may go on; no I/O.

    Contract: call :meth:`check` with every request before handling it; a returned response
    must be sent as the answer, None lets the request through.
    """

    def __init__(
        self, *, token: str | None, origins: tuple[str, ...] = (), public_healthz: bool = True
    ) -> None:
        """Create a guard; ``token`` None asks for none, empty ``origins`` allows any."""
        self._digest = None if token is None else _digest(token)
        self._origins = frozenset(origins)
        self._public_healthz = public_healthz

    @classmethod
    def from_config(cls, config: SecurityConfig) -> Guard:
        """Build the guard of ``config`` (reading the token file, if any).

        Raises:
            ConfigError: the token file cannot be used.
        """
        return cls(
            token=load_token(config),
            origins=parse_origins(config.origins),
            public_healthz=config.public_healthz,
        )

    @property
    def requires_token(self) -> bool:
        """Whether a token is asked for."""
        return self._digest is not None

    def check(self, request: Request) -> Response | None:
        """Return the refusal to send for ``request``, or None when it may go on."""
        if self._origins and not self._origin_allowed(request.headers):
            return refusal(http.HTTPStatus.FORBIDDEN)
        if self._digest is None:
            return None
        if self._public_healthz and request.path.partition("?")[0] == HEALTH_PATH:
            return None
        presented = presented_token(request)
        # Hash even a missing token, so both refusals take the same path and time.
        matches = hmac.compare_digest(_digest(presented or ""), self._digest)
        if presented is None or not matches:
            return refusal(http.HTTPStatus.UNAUTHORIZED)
        return None

    def _origin_allowed(self, headers: Headers) -> bool:
        values = headers.get_all("Origin")
        if not values:
            return True  # not a browser: the token, if any, decides
        return len(values) == 1 and values[0].strip().lower().rstrip("/") in self._origins


def presented_token(request: Request) -> str | None:
    """The token a request carries: ``Authorization: Bearer X``, else the ``token`` parameter.

    A request with several Authorization headers or several token parameters carries none.
    """
    headers = request.headers.get_all("Authorization")
    if headers:
        if len(headers) != 1:
            return None
        scheme, _, value = headers[0].strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None
    try:
        return query_param(request, TOKEN_PARAM)
    except ValueError:  # too many fields, or several tokens
        return None


def query_param(target: Request | str, name: str) -> str | None:
    """The value of query parameter ``name`` in a request's URL (or a path); None without one.

    A parameter with an empty value counts as absent.

    Raises:
        ValueError: the query has more than :data:`MAX_QUERY_FIELDS` fields, or gives ``name``
            more than once.
    """
    path = target if isinstance(target, str) else target.path
    query = path.partition("?")[2]
    if not query:
        return None
    values = parse_qs(query, max_num_fields=MAX_QUERY_FIELDS).get(name, [])
    if len(values) > 1:
        raise ValueError(f"query parameter {name!r} given {len(values)} times")
    return values[0] if values else None


def refusal(status: http.HTTPStatus) -> Response:
    """A bare refusal: status line, no body, nothing else to learn from."""
    headers = Headers([("Content-Length", "0"), ("Connection", "close")])
    if status is http.HTTPStatus.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"  # required on a 401 (RFC 9110 section 15.5.2)
    return Response(status.value, status.phrase, headers, b"")


def tls_context(config: SecurityConfig) -> ssl.SSLContext | None:
    """Return the server's TLS context (TLS 1.2 or newer), or None when TLS is off.

    Raises:
        ConfigError: the certificate or key cannot be loaded.
    """
    if config.certfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except FileNotFoundError as exc:
        raise ConfigError(f"TLS: {exc.filename} does not exist") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"TLS: cannot load certificate {config.certfile} / key {config.keyfile}: {exc}"
        ) from None
    return context


def exposure_warning(host: str, config: SecurityConfig) -> str | None:
    """A warning when the server listens beyond loopback without a token, else None."""
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if loopback or config.token is not None or config.token_file is not None:
        return None
    return (
        f"listening on {host} without a token: anyone who can reach this port may stream "
        "audio and read every result (set --token or STREAMER_TOKEN)"
    )

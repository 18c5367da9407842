"""What a misbehaving client costs the daemon: one rate-limited log line and a quiet close.

A client that sends malformed frames, or reconnects to send them again and again, must not be
able to flood the log. Every refused client message is still counted (``streamer_errors`` by
code, in :mod:`streamer.serve.metrics`), but :class:`ClientErrorLog` writes at most one INFO line
per ``interval_s`` across all connections and endpoints; the next line it writes says how many
it held back meanwhile, and :meth:`ClientErrorLog.close` reports the rest at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)

#: Default of ``server.client_error_log_interval_s``: seconds between two logged client errors.
CLIENT_ERROR_LOG_INTERVAL_S: Final = 10.0


class ClientErrorLog:
    """Logs refused client messages at INFO, at most one line per ``interval_s``.

    Call contract: call :meth:`report` for every client error (from the event loop thread);
    it logs it or counts it, and never raises. Call :meth:`close` once at shutdown.
    """

    def __init__(
        self,
        *,
        interval_s: float = CLIENT_ERROR_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the limiter.

        Args:
            interval_s: seconds that must pass after a logged line before the next one.
            clock: monotonic seconds (replaceable in tests).

        Raises:
            ValueError: ``interval_s`` is negative.
        """
        if interval_s < 0:
            raise ValueError(f"interval_s must be at least 0, got {interval_s}")
        self.interval_s = interval_s
        self.clock = clock
        self.n_reported = 0
        self.n_held_back = 0
        self._last_logged: float | None = None

    def report(self, logger: logging.Logger, peer: str, code: str, message: str) -> None:
        """Log (or count) that ``peer`` was refused with ``code`` and ``message``."""
        self.n_reported += 1
        now = self.clock()
        if self._last_logged is not None and now - self._last_logged < self.interval_s:
            self.n_held_back += 1
            return
        self._last_logged = now
        if self.n_held_back:
            logger.info(
                "%s: %s: %s (%d other client error(s) in the last %.0f s not logged)",
                peer, code, message, self.n_held_back, self.interval_s,
            )  # fmt: skip
        else:
            logger.info("%s: %s: %s", peer, code, message)
        self.n_held_back = 0

    def close(self) -> None:
        """Report the client errors held back since the last logged line, if any."""
        if self.n_held_back:
            log.info("%d more client error(s) not logged (see streamer_errors)", self.n_held_back)
            self.n_held_back = 0


async def close_discarding(ws: ServerConnection, code: int, reason: str) -> None:
    """Close with ``code``, reading and dropping whatever the peer still sends meanwhile.

    Why: a peer that kept sending after an error fills the receive queue; websockets then stops
    reading the socket and would not see the peer's close frame before ``close_timeout_s``.
    """

    async def discard() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    reader = asyncio.create_task(discard(), name=f"discard-{ws.id}")
    try:
        await ws.close(code, reason)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

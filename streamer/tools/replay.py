"""The replay client: one file streamed over one ``/v1/stream`` connection, its events scored.

Paced by sample count (a frame is sent when its last sample would have been spoken) or as fast
as the daemon keeps up. End-of-speech→final latency is measured here, at the client: from sending
the frame that holds the utterance's ``end_ms`` to receiving its ``utterance`` event.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer import protocol as proto
from streamer.audio import float_to_pcm16
from streamer.streams.sources import read_audio_file

#: Without pacing: utterances of one stream awaiting results before it pauses sending.
MAX_IN_FLIGHT = 2
#: Without pacing: frames between the pings that let the client see what the daemon said.
PING_EVERY_FRAMES = 10


@dataclass
class StreamReport:
    """What one stream sent and received."""

    stream: str
    file: str
    audio_s: float = 0.0
    models: str = "default"
    """The models the stream asked for, comma-separated (``default``: the server's set)."""
    utterances: int = 0
    results: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)
    queued_ms: list[float] = field(default_factory=list)


async def play(
    url: str,
    stream: str,
    path: Path,
    *,
    realtime: bool,
    chunk_ms: int = 100,
    delay_s: float = 0.0,
    duration_s: float | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
    models: Sequence[str] | None = None,
    token: str | None = None,
) -> StreamReport:
    """Stream one file over one ingest connection and collect its events.

    Args:
        url: the daemon's ws:// base URL.
        stream: the stream name.
        path: a WAV (or any file ``read_audio_file`` takes).
        realtime: pace frames by their sample count; else send as fast as the daemon keeps up.
        chunk_ms: audio per binary frame.
        delay_s: wait this long before connecting (staggered starts).
        duration_s: loop the file until this much audio was sent (None: play it once).
        max_in_flight: without ``realtime``, pause while more utterances than this await results
            (as ``streamer transcribe`` does), so a fast run measures throughput, not refusals.
        models: the models to ask for in ``start`` (None: the server's default set).
        token: bearer token, if the daemon asks for one.
    """
    audio = read_audio_file(path)
    looped = duration_s is not None and audio.samples.size > 0
    n_total = round(duration_s * audio.rate_hz) if looped and duration_s else audio.samples.size
    report = StreamReport(
        stream=stream,
        file=str(path),
        audio_s=n_total / audio.rate_hz,
        models=",".join(models) if models else "default",
    )
    start = {
        "type": "start",
        "sample_rate": audio.rate_hz,
        "encoding": "pcm_s16le",
        "channels": 1,
        "stream": stream,
        **({"models": list(models)} if models else {}),
    }
    await asyncio.sleep(delay_s)
    played = await play_samples(
        url,
        start,
        audio.samples,
        audio.rate_hz,
        n_total,
        realtime=realtime,
        chunk_ms=chunk_ms,
        max_in_flight=max_in_flight,
        token=token,
    )
    score_report(report, played, audio.rate_hz)
    return report


@dataclass
class Played:
    """One connection's events (receive time, event) and when each frame left (its end sample)."""

    events: list[tuple[float, dict[str, Any]]]
    sent_ends: list[int]
    sent_at: list[float]


async def play_samples(
    url: str,
    start: dict[str, Any],
    samples: npt.NDArray[np.float32],
    rate_hz: int,
    n_total: int,
    *,
    realtime: bool,
    chunk_ms: int,
    max_in_flight: int,
    token: str | None,
) -> Played:
    """Send ``start``, then ``n_total`` samples (``samples`` looped) in frames, then ``end``.

    Events are read until the daemon closes; a refused or closed connection keeps what came.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else None
    flow = _Flow()
    sender = _Sender(samples, rate_hz, n_total, chunk_ms=chunk_ms)
    async with connect(
        url + proto.INGEST_PATH, additional_headers=headers, max_size=None, compression=None
    ) as ws:
        reader = asyncio.create_task(flow.read(ws))
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(start))
            await sender.send(ws, flow, realtime=realtime, max_in_flight=max_in_flight)
            await ws.send(json.dumps({"type": "end"}))
        await reader
    return Played(flow.events, sender.ends or [0], sender.sent_at or [time.perf_counter()])


class _Sender:
    """Sends one stream's audio in frames and remembers when each frame left."""

    def __init__(
        self, samples: npt.NDArray[np.float32], rate_hz: int, n_total: int, *, chunk_ms: int
    ) -> None:
        self.samples = samples
        self.rate_hz = rate_hz
        self.n_total = n_total
        self.step = rate_hz * chunk_ms // 1000
        self.ends: list[int] = []
        self.sent_at: list[float] = []

    async def send(
        self, ws: ClientConnection, flow: _Flow, *, realtime: bool, max_in_flight: int
    ) -> None:
        """Send every frame, paced by sample count or by the daemon's progress."""
        t0 = time.perf_counter()
        for i, first in enumerate(range(0, self.n_total, self.step)):
            end = min(first + self.step, self.n_total)
            if realtime:
                await asyncio.sleep(max(0.0, t0 + end / self.rate_hz - time.perf_counter()))
            elif i % PING_EVERY_FRAMES == 0:
                # The pong comes once the daemon has read what was sent before the ping, so
                # the events that audio caused are due: only then is the in-flight count true.
                await (await ws.ping())
                await flow.wait_below(max_in_flight)
            await ws.send(float_to_pcm16(_frame(self.samples, first, end)))
            self.ends.append(end)
            self.sent_at.append(time.perf_counter())


def _frame(samples: npt.NDArray[np.float32], first: int, end: int) -> npt.NDArray[np.float32]:
    """Samples [first, end) of ``samples`` played in a loop (no copy of the whole loop)."""
    n = samples.size
    if end <= n:
        return samples[first:end]
    return samples[np.arange(first, end) % n]


class _Flow:
    """One connection's received events, and how many of its utterances await a result.

    An utterance is in flight from its ``speech_started`` to its ``utterance`` or ``error``. A
    started utterance the segmenter drops (too short) sends nothing more, but the next one reuses
    its ``seq``, so counting by the highest ``seq`` started never leaks.
    """

    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.started = 0
        self.done = 0
        self.closed = False
        self._changed = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Utterances started and not answered yet."""
        return self.started - self.done

    async def read(self, ws: Any) -> None:
        """Collect events until the connection closes."""
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:  # one by one: an abnormal close keeps what came before
                event = json.loads(message)
                self.events.append((time.perf_counter(), event))
                kind = event.get("type")
                if kind == "speech_started":
                    self.started = max(self.started, int(event["seq"]) + 1)
                elif kind == "utterance" or (kind == "error" and event.get("utterance_id")):
                    self.done += 1
                self._changed.set()
        self.closed = True
        self._changed.set()

    async def wait_below(self, limit: int) -> None:
        """Wait while more than ``limit`` utterances are in flight (never past a close)."""
        while self.in_flight > limit and not self.closed:
            self._changed.clear()
            await self._changed.wait()


def score_report(report: StreamReport, played: Played, rate_hz: int) -> None:
    """Fill ``report`` from what one connection received: counts, errors and latencies."""
    events, sent_ends, sent_at = played.events, played.sent_ends, played.sent_at
    seqs: set[int] = set()
    for received, event in events:
        kind = event.get("type")
        if kind in ("speech_started", "utterance") and "seq" in event:
            seqs.add(int(event["seq"]))
        if kind == "ended":
            report.utterances = int(event["n_utterances"])
        elif kind == "error":
            code = str(event.get("code"))
            report.error_codes[code] = report.error_codes.get(code, 0) + 1
            report.errors += 1 if event.get("utterance_id") else 0
        elif kind == "utterance":
            report.results += 1
            end_sample = round(float(event["end_ms"]) * rate_hz / 1000.0)
            i = min(bisect.bisect_left(sent_ends, end_sample), len(sent_at) - 1)
            report.latencies_ms.append((received - sent_at[i]) * 1000.0)
            latency = event.get("latency_ms", {})
            report.encode_ms.append(float(latency.get("encode", 0.0)))
            report.queued_ms.append(float(latency.get("queued", 0.0)))
    report.utterances = max(report.utterances, len(seqs))

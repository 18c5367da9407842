"""``streamer bench --partials``: the same streams with partial and eager results off, then on.

Each stream plays the files in turn (stream ``i`` starts with file ``i``), each followed by a
pause of faint noise, for ``--duration-s``. Both runs send the same samples at the same pace and
start offsets; ``streamer bench`` runs each against a fresh daemon (or both against ``--url``),
the first asking for nothing extra, the second for ``"want": ["partial", "eager"]``.

The figures come from the events, when each arrived and when each frame left: finals on vs off
(:func:`compare_finals`), stable words the final contradicts (:func:`stable_contradictions`),
when a word first shows in a partial (:func:`first_appearances`), how early a confirmed
``eager`` came (:func:`eager_advances`), the finals' ``end_of_speech_to_emit``, and the engine
time partial runs took (the daemon logs it when it stops).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.config import load_config
from streamer.errors import StreamerError
from streamer.streams.sources import read_audio_file
from streamer.tools.partials_report import COMMAND_MAX_MS, ONE_SECOND_MS, format_table
from streamer.tools.replay import MAX_IN_FLIGHT, StreamReport, play_samples, score_report

Audio = npt.NDArray[np.float32]
Event = dict[str, Any]
Timed = list[tuple[float, Event]]

WANT = ("partial", "eager")
#: A partial word and a final word are the same word: same text, times overlapping or this close.
MATCH_TOLERANCE_MS = 200.0
#: Contradicted stable words listed in the JSON report (the first ones, for diagnosis).
CONTRADICTED_EXAMPLES = 40
#: Pauses of faint noise between two files of a stream (uniform, seconds), and their level.
PAUSE_S = (0.8, 2.0)
NOISE_RMS = 1e-3
DEFAULT_DURATION_S = 60.0
_IGNORED = ("latency_ms", "lag_ms", "utterance_id")
_NOT_RESULTS = ("type", "latency_ms", "lag_ms")


@dataclass
class LiveStream:
    """One stream's events (receive time, event) and when each frame left (wall clock)."""

    report: StreamReport
    events: Timed
    sent_ends: list[int]
    sent_at: list[float]
    rate_hz: int

    def sent_time(self, ms: float) -> float:
        """When the frame holding stream time ``ms`` was sent."""
        i = bisect.bisect_left(self.sent_ends, round(ms * self.rate_hz / 1000.0))
        return self.sent_at[min(i, len(self.sent_at) - 1)]

    def spoken_time(self, ms: float) -> float:
        """When stream time ``ms`` was spoken (it does not move with the frame size).

        A frame leaves when its last sample is due in real time, so this is its departure less
        the frame's samples after ``ms``.
        """
        sample = round(ms * self.rate_hz / 1000.0)
        i = min(bisect.bisect_left(self.sent_ends, sample), len(self.sent_at) - 1)
        return self.sent_at[i] - max(0, self.sent_ends[i] - sample) / self.rate_hz


def stream_audio(files: Sequence[Audio], index: int, *, rate_hz: int, duration_s: float) -> Audio:
    """Stream ``index``: 1 s of noise, then files from ``index`` on, each paused, ≥ duration_s."""
    rng = np.random.default_rng(index)
    n_total = round(duration_s * rate_hz)
    parts = [_noise(rng, rate_hz)]
    n, k = parts[0].size, index
    while n < n_total:
        clip = files[k % len(files)]
        pause = _noise(rng, round(rng.uniform(*PAUSE_S) * rate_hz))
        parts += [clip, pause]
        n, k = n + clip.size + pause.size, k + 1
    return np.concatenate(parts)


def _noise(rng: np.random.Generator, n: int) -> Audio:
    return (rng.standard_normal(n) * NOISE_RMS).astype(np.float32)


class LivePlayer:
    """Plays stream ``i`` of ``audio`` in real time asking for ``want``; keeps what it saw.

    Call it as ``streamer.tools.bench.run_streams`` calls a player: ``(url, i, delay_s)``.
    """

    def __init__(
        self,
        audio: Sequence[Audio],
        rate_hz: int,
        *,
        want: Sequence[str],
        chunk_ms: int,
        token: str | None,
    ) -> None:
        self.audio, self.rate_hz, self.want = audio, rate_hz, list(want)
        self.chunk_ms, self.token = chunk_ms, token
        self.streams: dict[int, LiveStream] = {}

    async def __call__(self, url: str, index: int, delay_s: float) -> StreamReport:
        """Play stream ``index`` over one ingest connection; return its report."""
        samples, rate_hz, stream = self.audio[index], self.rate_hz, f"bench-{index}"
        report = StreamReport(stream=stream, file="turns", audio_s=samples.size / rate_hz)
        start = {"type": "start", "sample_rate": rate_hz, "encoding": "pcm_s16le", "channels": 1}
        start |= {"stream": stream, **({"want": self.want} if self.want else {})}
        await asyncio.sleep(delay_s)
        played = await play_samples(
            url,
            start,
            samples,
            rate_hz,
            samples.size,
            realtime=True,
            chunk_ms=self.chunk_ms,
            max_in_flight=MAX_IN_FLIGHT,
            token=self.token,
        )
        score_report(report, played, rate_hz)
        self.streams[index] = LiveStream(
            report, played.events, played.sent_ends, played.sent_at, rate_hz
        )
        return report

    @property
    def played(self) -> list[LiveStream]:
        """The streams played so far, in stream order."""
        return [self.streams[i] for i in sorted(self.streams)]


def players(args: argparse.Namespace) -> dict[str, LivePlayer]:
    """The two runs' players, ``off`` and ``on``, on the same audio.

    Raises:
        StreamerError: ``--fast``, or files of different sample rates.
    """
    if not args.realtime:
        raise StreamerError("--partials runs in real time only (no --fast)")
    clips = [read_audio_file(path) for path in args.files]
    rates = {c.rate_hz for c in clips}
    if len(rates) != 1:
        raise StreamerError(f"--partials needs files of one sample rate, got {sorted(rates)}")
    rate_hz, duration_s = rates.pop(), args.duration_s or DEFAULT_DURATION_S
    audio = [
        stream_audio([c.samples for c in clips], i, rate_hz=rate_hz, duration_s=duration_s)
        for i in range(args.streams)
    ]
    options = {"chunk_ms": args.chunk_ms, "token": args.token}
    return {
        arm: LivePlayer(audio, rate_hz, want=w, **options) for arm, w in (("off", ()), ("on", WANT))
    }


def _of(events: Timed, kind: str) -> Iterator[tuple[float, Event]]:
    return ((t, e) for t, e in events if e.get("type") == kind)


def _words(event: Event) -> list[Event]:
    return list((event.get("transcript") or {}).get("words") or [])


def same_word(a: Event, b: Event, tolerance_ms: float = MATCH_TOLERANCE_MS) -> bool:
    """Same text, and the times overlap or are at most ``tolerance_ms`` apart."""
    gap_ms = max(a["start_ms"], b["start_ms"]) - min(a["end_ms"], b["end_ms"])  # < 0: overlap
    return bool(a["word"] == b["word"] and gap_ms <= tolerance_ms)


def compare_finals(off: Sequence[LiveStream], on: Sequence[LiveStream]) -> dict[str, Any]:
    """Match the ``utterance`` events of two runs by stream and seq; count those that differ."""

    def finals(streams: Sequence[LiveStream]) -> dict[tuple[str, int], Event]:
        return {(e["stream"], e["seq"]): _without(e, _IGNORED) for e in _finals(streams)}

    a, b = finals(off), finals(on)
    both = sorted(a.keys() & b.keys())
    differing = [f"{s}#{q}" for s, q in both if a[(s, q)] != b[(s, q)]]
    return {
        "matched": len(both),
        "identical": len(both) - len(differing),
        "only_off": len(a.keys() - b.keys()),
        "only_on": len(b.keys() - a.keys()),
        "differing": differing[:20],
    }


def _stable_words(events: Timed) -> dict[str, list[Event]]:
    """Each utterance's distinct stable words, over all its partials (utterance id -> words)."""
    stable: dict[str, dict[tuple[str, float, float], Event]] = {}
    for _, e in _of(events, "partial"):
        for w in e.get("words") or []:
            if w.get("stable"):
                key = (w["word"], w["start_ms"], w["end_ms"])
                stable.setdefault(e["utterance_id"], {})[key] = w
    return {u: list(ws.values()) for u, ws in stable.items()}


def stable_contradictions(events: Timed) -> tuple[int, list[str]]:
    """(stable words, those the final contradicts) of one stream's events.

    Each distinct stable word of an utterance counts once; utterances without a final
    transcript (refused, or no ctc result) are left out. A contradicted word is given as
    ``"word@start-end ms in: final text"``.
    """
    finals = {e["utterance_id"]: _words(e) for _, e in _of(events, "utterance") if _words(e)}
    n, bad = 0, []
    for u, ws in _stable_words(events).items():
        if u not in finals:
            continue
        for w in ws:
            n += 1
            if not any(same_word(w, f) for f in finals[u]):
                text = " ".join(f"{f['word']}@{f['start_ms']:.0f}" for f in finals[u])
                bad.append(f"{w['word']}@{w['start_ms']:.0f}-{w['end_ms']:.0f} in: {text}")
    return n, bad


def stable_before_final(events: Timed) -> int:
    """How many of one stream's final words some partial had already shown as stable."""
    stable = _stable_words(events)
    return sum(
        any(same_word(word, w) for w in stable.get(final["utterance_id"], []))
        for _, final in _of(events, "utterance")
        for word in _words(final)
    )


def first_appearances(
    events: Timed, spoken_time: Callable[[float], float]
) -> tuple[list[float], int]:
    """Delays (ms) from a final word's end being spoken to the first partial holding it.

    ``spoken_time``: stream time (ms) -> when it was spoken, on the clock of the events' times
    (:meth:`LiveStream.spoken_time`). Returns the delays of the final words some partial of the
    same utterance held, and the number of final words in all.
    """
    partials: dict[str, list[tuple[float, list[Event]]]] = {}
    for t, e in _of(events, "partial"):
        partials.setdefault(e["utterance_id"], []).append((t, e.get("words") or []))
    delays: list[float] = []
    n_words = 0
    for _, final in _of(events, "utterance"):
        for word in _words(final):
            n_words += 1
            heard = partials.get(final["utterance_id"], [])
            first = next((t for t, ws in heard if any(same_word(word, w) for w in ws)), None)
            if first is not None:
                delays.append((first - spoken_time(word["end_ms"])) * 1000.0)
    return delays, n_words


def _confirmed_eagers(events: Timed) -> Iterator[tuple[float, float, Event]]:
    """(eager arrival, final arrival, final) of each eager result its final confirmed.

    Confirmed: not withdrawn by ``resumed``, and the final has the eager result's fields
    (``latency_ms``, ``lag_ms`` and ``type`` aside).
    """
    pending: dict[str, tuple[float, Event]] = {}
    for t, e in events:
        kind = e.get("type")
        if kind == "eager":
            pending[e["utterance_id"]] = (t, e)
        elif kind == "resumed":
            pending.pop(e["utterance_id"], None)
        elif kind == "utterance" and e["utterance_id"] in pending:
            t_eager, eager = pending.pop(e["utterance_id"])
            if _without(eager, _NOT_RESULTS) == _without(e, _NOT_RESULTS):
                yield t_eager, t, e


def _speech_ms(event: Event) -> float:
    return float(event["end_ms"]) - float(event["start_ms"])


def eager_advances(events: Timed) -> list[tuple[float, float]]:
    """(ms the eager result came before its final, speech ms) of each confirmed eager result."""
    return [((t - t_eager) * 1000.0, _speech_ms(e)) for t_eager, t, e in _confirmed_eagers(events)]


def eager_leads_over_today(off: LiveStream, on: LiveStream) -> list[tuple[float, float]]:
    """(ms a confirmed eager result came before today's final, speech ms) per utterance.

    Today's final: the same utterance's ``utterance`` event in the run without partials and
    eager results (same stream, same ``seq``, same results). Both runs send the same samples at
    the same pace, so each arrival is taken relative to the moment its stream sent the
    utterance's last speech frame, and the lead is the difference of the two.
    """
    today = {e["seq"]: (t, e) for t, e in _of(off.events, "utterance")}
    out: list[tuple[float, float]] = []
    for t_eager, _, e in _confirmed_eagers(on.events):
        t_off, final = today.get(e["seq"], (0.0, {}))
        if _without(final, _IGNORED) == _without(e, _IGNORED):
            end = float(e["end_ms"])
            lead = (t_off - off.sent_time(end)) - (t_eager - on.sent_time(end))
            out.append((lead * 1000.0, _speech_ms(e)))
    return out


def _one_second(speech_ms: float) -> bool:
    return ONE_SECOND_MS[0] <= speech_ms <= ONE_SECOND_MS[1]


def _without(event: Event, keys: Sequence[str]) -> Event:
    return {k: v for k, v in event.items() if k not in keys}


def _counts(streams: Sequence[LiveStream]) -> dict[str, int]:
    kinds = Counter(e.get("type") for s in streams for _, e in s.events)
    return {k: kinds[k] for k in ("partial", "eager", "resumed", "utterance")}


def _finals(streams: Sequence[LiveStream]) -> Iterator[Event]:
    return (e for s in streams for _, e in _of(s.events, "utterance"))


def measure(off: Sequence[LiveStream], on: Sequence[LiveStream]) -> dict[str, Any]:
    """Every figure of the comparison that the events give (engine time aside)."""
    n_stable = n_words = n_stable_first = 0
    contradicted: list[str] = []
    delays: list[float] = []
    advances: list[tuple[float, float]] = []
    leads = [lead for a, b in zip(off, on, strict=True) for lead in eager_leads_over_today(a, b)]
    for s in on:
        n, bad = stable_contradictions(s.events)
        d, w = first_appearances(s.events, s.spoken_time)
        n_stable, n_words = n_stable + n, n_words + w
        contradicted += bad
        n_stable_first += stable_before_final(s.events)
        delays += d
        advances += eager_advances(s.events)

    def emit(streams: Sequence[LiveStream]) -> dict[str, float | None]:
        return _stats([e["latency_ms"]["end_of_speech_to_emit"] for e in _finals(streams)])

    return {
        "finals": compare_finals(off, on),
        "stable_words": n_stable,
        "stable_contradicted": len(contradicted),
        "stable_contradicted_examples": contradicted[:CONTRADICTED_EXAMPLES],
        "first_appearance_ms": _stats(delays),
        "final_words": n_words,
        "final_words_seen_in_partial": len(delays),
        "final_words_stable_first": n_stable_first,
        "eager_advance_ms": _stats([a for a, _ in advances]),
        "eager_advance_ms_commands": _stats([a for a, ms in advances if ms <= COMMAND_MAX_MS]),
        "eager_confirmed": len(advances),
        "eager_lead_over_today_ms": _stats([a for a, _ in leads]),
        "eager_lead_over_today_ms_commands": _stats([a for a, ms in leads if ms <= COMMAND_MAX_MS]),
        "eager_lead_over_today_commands": sum(ms <= COMMAND_MAX_MS for _, ms in leads),
        "eager_lead_over_today_ms_one_second": _stats([a for a, ms in leads if _one_second(ms)]),
        "eager_lead_over_today_one_second": sum(_one_second(ms) for _, ms in leads),
        "eager_confirmed_commands": sum(ms <= COMMAND_MAX_MS for _, ms in advances),
        "emit_ms": {"off": emit(off), "on": emit(on)},
        "counts": {arm: _counts(streams) for arm, streams in (("off", off), ("on", on))},
    }


def report(
    args: argparse.Namespace, played: dict[str, LivePlayer], runs: dict[str, dict[str, Any]]
) -> int:
    """Print the tables (and write ``--json``) from both runs' players and summaries.

    Returns the exit code: 1 if an utterance was lost or a final differs.
    """
    result = measure(played["off"].played, played["on"].played)
    config = load_config(path=args.config, env=os.environ)
    on = runs["on"]
    busy = (on.get("daemon_batches") or {}).get("partials_busy_s")
    share = busy / (on["wall_s"] * config.engine.workers) if busy is not None else None
    result["engine_share"] = share  # of the streaming wall time of all workers
    result["engine_share_max"] = config.partials.engine_share
    result["runs"] = runs
    print(format_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    finals = result["finals"]
    lost = sum(r["utterances_sent"] - r["results_received"] for r in runs.values())
    return 1 if lost or finals["identical"] != finals["matched"] or finals["only_on"] else 0


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    """p50 and p95 of ``values`` (None when empty), rounded to 0.1."""
    if not values:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(np.asarray(values), [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1)}

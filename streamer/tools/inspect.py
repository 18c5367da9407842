"""``streamer inspect FILE --png OUT``: one picture of how the daemon cuts and reads a file.

The file goes through the daemon's own :class:`~streamer.streams.pipeline.StreamPipeline` (the path
every source takes), with an observer on the segmenter that records each VAD frame's score. The
picture stacks, on one time axis: the waveform with the utterances shaded, the per-frame VAD
score against the segmenter's start/keep/edge thresholds, and each utterance's results
(transcript, intent, latency). Tune endpointing with ``[segmenter]`` settings (``--config`` or
``STREAMER_SEGMENTER_*``) and look again.

matplotlib is an optional extra (``pip install 'streamer[plot]'``), imported only here and only
when a picture is drawn; the daemon never loads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from streamer import protocol as proto
from streamer.config import Config
from streamer.errors import StreamerError
from streamer.segmenter_config import SegmenterConfig
from streamer.streams.feed import file_stream_name, run_file
from streamer.streams.pipeline import StreamPipeline
from streamer.streams.sources import read_audio_file
from streamer.vad import VadThresholds

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

#: Columns of the waveform envelope (min/max per column): enough for a sharp 14-inch plot.
ENVELOPE_COLUMNS = 2400
_LEVELS = 4  # rows of result labels, so that neighbours do not overlap
_CHARS_ACROSS = 190  # 8-point characters across the plot at the figure size (with a margin)


@dataclass
class Trace:
    """What the pipeline did with one file: audio, per-frame VAD scores, utterances, errors."""

    name: str
    samples: npt.NDArray[np.float32]
    rate_hz: int
    models: tuple[str, ...]
    segmenter: SegmenterConfig
    thresholds: VadThresholds
    frame_s: float
    frame_starts_s: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    utterances: list[proto.Utterance] = field(default_factory=list)
    errors: list[proto.Error] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """Length of the file in seconds."""
        return len(self.samples) / self.rate_hz


async def trace_file(config: Config, models: dict[str, Path], path: Path) -> Trace:
    """Run ``path`` through a stream pipeline and record what it did.

    Raises:
        AudioFormatError: the file cannot be read.
        ModelError: a bundle cannot be loaded.
    """
    from streamer.app import build_services

    audio = read_audio_file(path)
    services = build_services(config, models)
    traces: list[Trace] = []

    def on_event(event: proto.ServerEvent) -> None:
        if isinstance(event, proto.Utterance):
            traces[0].utterances.append(event)
        elif isinstance(event, proto.Error):
            traces[0].errors.append(event)

    def on_pipeline(pipeline: StreamPipeline) -> None:
        segmenter = pipeline.segmenter
        traces.append(
            Trace(
                name=path.name,
                samples=audio.samples,
                rate_hz=audio.rate_hz,
                models=pipeline.models,
                segmenter=segmenter.config,
                thresholds=segmenter.thresholds,
                frame_s=segmenter.frame_samples / pipeline.rate_hz,
            )
        )
        origin, rate_hz = pipeline.origin_samples, pipeline.rate_hz  # the segmenter's clock

        def on_frame(start_sample: int, score: float) -> None:
            traces[0].frame_starts_s.append((start_sample - origin) / rate_hz)
            traces[0].scores.append(score)

        segmenter.on_frame = on_frame

    try:
        await run_file(
            services,
            audio.samples,
            rate_hz=audio.rate_hz,
            claim=services.streams.admit(file_stream_name(path)),
            emit=on_event,
            on_pipeline=on_pipeline,
        )
    finally:
        services.runner.close()
    return traces[0]


async def inspect_file(config: Config, models: dict[str, Path], path: Path, *, png: Path) -> int:
    """``streamer inspect``: trace ``path``, draw the picture into ``png``; return 0.

    Raises:
        StreamerError: matplotlib is missing, or the file, a bundle or the PNG cannot be used.
    """
    _require_matplotlib()
    trace = await trace_file(config, models, path)
    await asyncio.to_thread(draw, trace, png)  # a second of drawing: keep the loop free
    print(f"{png}: {len(trace.utterances)} utterance(s), {len(trace.errors)} error(s)")
    return 0


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise StreamerError(
            "streamer inspect draws with matplotlib, which is not installed: "
            "pip install 'streamer[plot]'"
        ) from None


def draw(trace: Trace, png: Path) -> None:
    """Draw ``trace`` (waveform, VAD scores, utterances and results) into the PNG ``png``.

    Raises:
        StreamerError: the PNG cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    wave, vad, results = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [3.0, 1.6, 1.6]}
    )
    _waveform(wave, trace)
    _vad(vad, trace)
    _results(results, trace)
    results.set_xlabel("time (s)")
    results.set_xlim(0, max(trace.duration_s, 1e-3))
    seg = trace.segmenter
    fig.suptitle(
        f"{trace.name}: {trace.duration_s:.1f} s, {len(trace.utterances)} utterance(s) "
        f"through {' + '.join(trace.models)}\n"
        f"segmenter: vad={seg.vad} mode={seg.vad_mode} frame={seg.frame_ms} ms, "
        f"min_speech={seg.min_speech_ms} ms, min_silence={seg.min_silence_ms} ms "
        f"(+{seg.extra_silence_ms} ms over {seg.extra_silence_after_s:g} s), "
        f"pre/post roll={seg.pre_roll_ms}/{seg.post_roll_ms} ms, "
        f"max_utterance={seg.max_utterance_s:g} s",
        fontsize=11,
    )
    try:
        fig.savefig(png, format="png")
    except OSError as exc:
        raise StreamerError(f"cannot write {png}: {exc}") from None


def _spans(ax: Axes, trace: Trace) -> None:
    for u in trace.utterances:
        ax.axvspan(u.start_ms / 1000, u.end_ms / 1000, color="tab:green", alpha=0.15, lw=0)


def _waveform(ax: Axes, trace: Trace) -> None:
    samples = trace.samples
    columns = max(1, min(ENVELOPE_COLUMNS, len(samples)))
    edges = np.linspace(0, len(samples), columns + 1).astype(int)
    lows = np.minimum.reduceat(samples, edges[:-1]) if len(samples) else np.zeros(1)
    highs = np.maximum.reduceat(samples, edges[:-1]) if len(samples) else np.zeros(1)
    t = edges[:-1] / trace.rate_hz
    ax.fill_between(t, lows, highs, step="post", color="tab:blue", lw=0.3)
    _spans(ax, trace)
    peak = float(np.max(np.abs(samples))) if len(samples) else 1.0
    ax.set_ylim(-max(peak, 1e-3) * 1.05, max(peak, 1e-3) * 1.05)
    ax.set_ylabel("waveform")
    ax.set_title("audio (utterances shaded: speech start → end as sent)", loc="left", fontsize=10)


def _vad(ax: Axes, trace: Trace) -> None:
    starts = np.asarray(trace.frame_starts_s)
    scores = np.asarray(trace.scores)
    if starts.size:
        ax.step(starts, scores, where="post", color="black", lw=0.8, label="frame score")
        th = trace.thresholds
        confident = scores >= th.start
        ax.fill_between(
            starts,
            0,
            1,
            where=confident,
            step="post",
            color="tab:orange",
            alpha=0.35,
            lw=0,
            label="confident speech",
        )
        for value, label, style in (
            (th.start, "start", "--"),
            (th.keep, "keep", ":"),
            (th.edge, "edge", "-."),
        ):
            ax.axhline(
                value, color="tab:red", ls=style, lw=0.9, label=f"{label} threshold {value:g}"
            )
    _spans(ax, trace)
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("VAD score")
    ax.set_title(
        f"VAD decision per {trace.frame_s * 1000:.0f} ms frame (orange: at or above start)",
        loc="left",
        fontsize=10,
    )
    if starts.size:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=5, fontsize=8, frameon=False)


def _results(ax: Axes, trace: Trace) -> None:
    ax.set_ylim(0, _LEVELS)
    ax.set_yticks([])
    ax.set_ylabel("results")
    ax.set_title("utterances: transcript, intent, end of speech → result", loc="left", fontsize=10)
    levels = _levels(trace.utterances, seconds_per_char=trace.duration_s / _CHARS_ACROSS)
    for u, level in zip(trace.utterances, levels, strict=True):
        start, end = u.start_ms / 1000, u.end_ms / 1000
        y = _LEVELS - 1 - level
        ax.broken_barh([(start, end - start)], (y + 0.1, 0.8), color="tab:green", alpha=0.3)
        ax.text(start, y + 0.5, _label(u), va="center", ha="left", fontsize=8, clip_on=True)
    for i, err in enumerate(trace.errors):
        ax.text(
            0.01,
            0.9 - 0.12 * i,
            f"error {err.code}: {err.message}",
            transform=ax.transAxes,
            color="tab:red",
            fontsize=8,
            va="top",
        )


def _levels(utterances: Sequence[proto.Utterance], *, seconds_per_char: float) -> list[int]:
    """A row per label: the first whose previous label ends before this one starts."""
    ends = [-np.inf] * _LEVELS
    rows = []
    for u in utterances:
        start = u.start_ms / 1000
        width = max(map(len, _label(u).splitlines())) * seconds_per_char
        row = next((i for i, end in enumerate(ends) if end <= start), int(np.argmin(ends)))
        ends[row] = start + width
        rows.append(row)
    return rows


def _label(u: proto.Utterance) -> str:
    parts = [f"#{u.seq}"]
    if u.transcript is not None:
        parts.append(_shorten(repr(u.transcript.text), 40))
    line2: list[str] = []
    if u.intent is not None:
        mark = "?" if u.intent.abstain else ""
        line2.append(f"{u.intent.name}{mark} {u.intent.confidence:.2f}")
    line2.extend(f"{label.name} {label.confidence:.2f}" for label in u.labels or ())
    line2.append(f"{u.latency_ms.end_of_speech_to_emit:.0f} ms")
    return " ".join(parts) + "\n" + " · ".join(line2)


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def utterance_spans_s(trace: Trace) -> Sequence[tuple[float, float]]:
    """The utterances' (start, end) in seconds, as drawn (for tests and reports)."""
    return [(u.start_ms / 1000, u.end_ms / 1000) for u in trace.utterances]

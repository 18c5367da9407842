"""Baselines for ``streamer bench --compare``: the same utterances without the daemon.

The utterances are cut from the benchmark's files by the daemon's own segmenter (same settings)
and then timed, interleaved so that load from other processes hits every contender alike:

- **raw onnxruntime**: each bundle's session with the daemon's engine settings, batch 1;
- **PyTorch eager**: the checkpoint a bundle was exported from (``manifest.source.path``), run
  as transformers runs it (feature extractor + model, ``torch.inference_mode``), with as many
  torch threads as onnxruntime has intra-op threads. Skipped, with the reason, when torch or the
  checkpoint is not there. torch is imported here lazily and only for this.

Each utterance is timed ``repeats`` times and its fastest run kept (load from other processes
only ever adds time). Decoded results of each bundle are compared with PyTorch's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.audio import AudioConverter, AudioFormat
from streamer.config import Config, load_config
from streamer.decoding import OutputDecoder
from streamer.engine.bundles import resolve_models
from streamer.engine.encoder import Encoder, Outputs
from streamer.manifest import Manifest
from streamer.segmenter import Segmenter, UtteranceReady
from streamer.segmenter_config import SegmenterConfig
from streamer.streams.sources import read_audio_file

Audio = npt.NDArray[np.float32]
Run = Callable[[Audio], Outputs]


def cut_utterances(path: Path, config: SegmenterConfig, *, rate_hz: int) -> list[Audio]:
    """Cut ``path`` into utterances as the daemon's pipeline would (resampled, segmented)."""
    audio = read_audio_file(path)
    converter = AudioConverter(AudioFormat(audio.rate_hz, "pcm_f32le", 1), target_rate_hz=rate_hz)
    samples = np.concatenate([converter.resample(audio.samples), converter.finish()])
    segmenter = Segmenter(config)
    events = [*segmenter.feed(samples), *segmenter.flush()]
    return [e.audio for e in events if isinstance(e, UtteranceReady)]


def torch_runner(manifest: Manifest, *, threads: int) -> tuple[Run | None, str]:
    """PyTorch eager for the checkpoint behind ``manifest``, or None and the reason."""
    source = Path(manifest.source.path)
    if not (source / "config.json").is_file():
        return None, f"checkpoint {source} is not here"
    try:
        import torch

        from streamer_export.checkpoint import open_checkpoint
        from streamer_export.models import load_pipeline
        from streamer_export.spec import plan_export
    except ImportError as exc:
        return None, f"the export extra is not installed ({exc.name})"
    torch.set_num_threads(threads)
    checkpoint = open_checkpoint(str(source))
    pipeline = load_pipeline(checkpoint, plan_export(checkpoint.config, task=manifest.task))
    names = [o.name for o in pipeline.outputs]

    def run(audio: Audio) -> Outputs:
        values = pipeline.reference(audio[np.newaxis, :])
        return dict(zip(names, values, strict=True))

    return run, f"{pipeline.description} from {source}"


@dataclasses.dataclass
class _Contender:
    """One runtime to time: how to run it, how to decode it, and its PyTorch reference."""

    run: Run
    decoder: OutputDecoder
    reference: str | None = None
    wall_s: list[float] = dataclasses.field(default_factory=list)
    cpu_s: list[float] = dataclasses.field(default_factory=list)
    results: list[str] = dataclasses.field(default_factory=list)


def _time_all(contenders: dict[str, _Contender], utterances: Sequence[Audio], repeats: int) -> None:
    """Time every contender on every utterance, interleaved; keep each utterance's fastest run."""
    for c in contenders.values():
        c.run(utterances[0])  # warm-up: first runs allocate arenas and pick kernels
        c.wall_s = [np.inf] * len(utterances)
        c.cpu_s = [np.inf] * len(utterances)
    for repeat in range(repeats):
        for i, audio in enumerate(utterances):
            for c in contenders.values():
                cpu0, wall0 = time.process_time(), time.perf_counter()
                outputs = c.run(audio)
                c.wall_s[i] = min(c.wall_s[i], time.perf_counter() - wall0)
                c.cpu_s[i] = min(c.cpu_s[i], time.process_time() - cpu0)
                if repeat == 0:
                    c.results.append(_decoded(c.decoder, outputs))


def compare(
    args: argparse.Namespace,
    result: dict[str, Any],
    *,
    daemon_models: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Time raw onnxruntime and PyTorch on the benchmark's utterances; see the module docstring.

    ``daemon_models`` are the models each benchmark stream ran (default: every ``--model``);
    the daemon's CPU is compared with raw onnxruntime's for those.
    """
    config: Config = load_config(path=args.config, env=os.environ)
    engine = dataclasses.replace(config.engine, provider=args.provider or config.engine.provider)
    bundles = resolve_models(args.model)
    encoders = {name: Encoder.load(name, path, config=engine) for name, path in bundles.items()}
    rate = next(iter(encoders.values())).manifest.sample_rate
    segmenter = dataclasses.replace(
        config.segmenter,
        min_utterance_samples=max(
            config.segmenter.min_utterance_samples,
            *(e.manifest.min_samples for e in encoders.values()),
        ),
    )
    played = {stream["file"] for stream in result["per_stream"]}
    files = sorted({f for f in args.files if str(f) in played})
    cuts = {f: cut_utterances(f, segmenter, rate_hz=rate) for f in files}
    utterances = [u for us in cuts.values() for u in us]
    if not utterances:
        return {"skipped": "the segmenter found no utterance in the files"}
    threads = engine.intra_op_threads or (os.cpu_count() or 1)
    contenders, torch_notes = _contenders(encoders, threads=threads)
    _time_all(contenders, utterances, max(1, getattr(args, "repeats", 3)))
    audio_s = len(np.concatenate(utterances)) / rate
    return {
        "utterances": len(utterances),
        "utterance_audio_s": round(audio_s, 2),
        "threads": threads,
        "torch": "; ".join(torch_notes),
        "models": _rows(contenders, audio_s),
        "daemon_cpu_vs_raw_ort": _overhead(
            contenders, list(daemon_models or encoders), cuts, result
        ),
    }


def _contenders(
    encoders: dict[str, Encoder], *, threads: int
) -> tuple[dict[str, _Contender], list[str]]:
    """Every bundle, plus one PyTorch contender per distinct source checkpoint when it loads."""
    contenders: dict[str, _Contender] = {}
    notes: list[str] = []
    torch_of: dict[str, str | None] = {}  # checkpoint path -> its torch contender
    for name, enc in encoders.items():
        decoder = OutputDecoder(enc.manifest, bundle_dir=enc.bundle_dir)
        contenders[name] = _Contender(enc.run, decoder)
        source = enc.manifest.source.path
        if source not in torch_of:
            key = "torch eager" if not torch_of else f"torch eager ({Path(source).name})"
            run, note = torch_runner(enc.manifest, threads=threads)
            notes.append(f"{key}: {note}")
            torch_of[source] = None
            if run is not None:
                contenders[key] = _Contender(run, decoder)
                torch_of[source] = key
        contenders[name].reference = torch_of[source]
    return contenders, notes


def _rows(contenders: dict[str, _Contender], audio_s: float) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, c in contenders.items():
        ref = contenders[c.reference] if c.reference else None
        rows[name] = {
            "ms_per_utterance_p50": round(float(np.median(c.wall_s)) * 1000.0, 1),
            "total_s": round(float(np.sum(c.wall_s)), 3),
            "cpu_s_per_audio_s": round(float(np.sum(c.cpu_s)) / audio_s, 4),
            "speedup_vs_torch": None
            if ref is None
            else round(float(np.sum(ref.wall_s) / np.sum(c.wall_s)), 2),
            "same_result_as_torch": None
            if ref is None
            else f"{sum(a == b for a, b in zip(c.results, ref.results, strict=True))}"
            f"/{len(ref.results)}",
        }
    return rows


def _overhead(
    contenders: dict[str, _Contender],
    models: list[str],
    cuts: dict[Path, list[Audio]],
    result: dict[str, Any],
) -> float | None:
    """Daemon CPU over raw onnxruntime CPU for the same work (every stream, every model)."""
    per_audio_s = result.get("cpu_s_per_audio_s")
    if per_audio_s is None:
        return None
    spans: dict[str, tuple[Path, int, int]] = {}
    pos = 0
    for f, us in cuts.items():
        spans[str(f)] = (f, pos, pos + len(us))
        pos += len(us)
    raw_cpu_s = 0.0
    for stream in result["per_stream"]:
        f, lo, hi = spans[stream["file"]]
        loops = stream["audio_s"] / max(_duration_s(f), 1e-9)
        raw_cpu_s += loops * sum(float(np.sum(contenders[m].cpu_s[lo:hi])) for m in models)
    daemon_cpu_s = per_audio_s * result["audio_s"]
    return round(daemon_cpu_s / raw_cpu_s, 3) if raw_cpu_s else None


def _duration_s(path: Path) -> float:
    audio = read_audio_file(path)
    return audio.samples.size / audio.rate_hz


def _decoded(decoder: OutputDecoder, outputs: Outputs) -> str:
    """The decoded text or intent of one result, for comparisons."""
    found = decoder.decode({k: v[0] for k, v in outputs.items()})
    if found.transcript is not None:
        return found.transcript.text
    if found.intent is not None:
        return found.intent.name
    return ""


def format_compare(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table."""
    if "skipped" in report:
        return f"compare: skipped ({report['skipped']})"
    lines = [
        f"{report['utterances']} utterances, {report['utterance_audio_s']} s of speech, "
        f"{report['threads']} threads; torch: {report['torch']}",
        "",
        "| runtime | ms / utterance p50 | total s | CPU s / audio s | vs torch eager "
        "| same result as torch |",
        "|" + " --- |" * 6,
    ]
    for name, row in report["models"].items():
        speedup = row["speedup_vs_torch"]
        lines.append(
            f"| {name} | {row['ms_per_utterance_p50']} | {row['total_s']} "
            f"| {row['cpu_s_per_audio_s']} | {'n/a' if speedup is None else f'{speedup}x'} "
            f"| {row['same_result_as_torch'] or 'n/a'} |"
        )
    overhead = report.get("daemon_cpu_vs_raw_ort")
    if overhead is not None:
        lines += ["", f"daemon CPU / raw onnxruntime CPU for the same utterances: {overhead}x"]
    return "\n".join(lines)

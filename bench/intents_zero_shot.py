"""Intents defined by example sentences, matched in a sentence-embedding space, zero-shot.

Usage: ``.venv/bin/python bench/intents_zero_shot.py [--part validation|test] [--limit N]
[--seed 0] [--systems ours,whisper,reference] [--speech-model PATH] [--text-embedder PATH]
[--threshold-from FILE] [--threshold-out FILE] [--beam 5] [--no-startup] [--json OUT]``

Choose on validation, then report test once at the validation threshold::

    bench/intents_zero_shot.py --part validation      # writes data/demo/intents_thresholds.json
    bench/intents_zero_shot.py --part test --threshold-from data/demo/intents_thresholds.json

- **Clips**: ``data/demo/embed_{validation,test}.npz`` (:mod:`streamer_training.embed_data`):
  held-out CLINC150 and SLURP intents (whole intents no training run saw), spoken by held-out
  espeak-ng variants (validation and test voices disjoint), and CLINC's out-of-scope sentences
  (``clinc:oos``). Three groups: ``clinc`` and ``slurp`` (in scope) and ``oos``; ``--limit N``
  keeps at most N clips of each, chosen by a seeded hash (``--seed``). Every system reads
  exactly the same clips.
- **Intents**: the part's intents of ``data/demo/embed_intents.json``, each defined by its 5
  example sentences (text only, never spoken), CLINC and SLURP in one intents file; a name
  ``clinc:x`` is written ``clinc.x`` (protocol names have no colon). Every clip, out-of-scope
  ones too, is matched against all of them by :class:`streamer.intent_matching.IntentMatcher` (an
  intent scores the cosine of its closest example).
- **ours** (speech embedding): the speech bundle with an ``embedding`` output (``--speech-model``,
  default ``exported/commands-embed``) through the daemon's own pipeline, in process:
  ``build_services`` with the ``[intents]`` section pointing at the intents file (written as TOML
  to a temporary folder; examples embedded by ``--text-embedder``) and ``run_file``, as ``streamer
  transcribe`` reads a file (the file's quiet lead-in, then 100 ms chunks; the segmenter cuts the
  clip). Engine: CPU provider, 1 intra-op thread. A clip's prediction is the intent of its
  **first** utterance; a clip with no utterance is wrong when in scope and rejected when out of
  scope. Measuring only: the encoder's ``run_batch`` and the decoder's matcher are wrapped to read
  the thread CPU time of each call (and the vector matched); results unchanged.
- **whisper** (the cascade): faster-whisper base through ``bench/real_voices.py``'s own helpers
  (pinned payload checked by SHA-256; int8, 1 thread, beam ``--beam``, ``language="en"``), the
  transcript embedded by the same text embedder (1 thread) and matched by the same matcher. An
  empty transcript is no prediction. Optional: without faster-whisper or the payload, one line
  says so.
- **reference**: the clip's true sentence through the text embedder and the matcher: the upper
  bound, a perfect transcript. Needs no speech model.

Figures per system, per dataset (``clinc``, ``slurp``, ``all`` = both in-scope groups):

- ``top-1``: in-scope clips whose nearest intent is the spoken one (threshold ignored).
- ``threshold``: chosen on **validation only**, per system, on ``all``: the cosine that maximises
  the mean of in-scope accuracy with abstention and OOS rejection (candidates: midpoints between
  consecutive best cosines). ``--part validation`` writes it (``--threshold-out``;
  by default ``data/demo/intents_thresholds.json``, not with ``--limit``);
  ``--part test --threshold-from FILE`` reads it. Without a threshold, its columns are ``-``.
- ``acc@t``: in-scope clips with the right nearest intent *and* best cosine >= threshold (an
  abstention counts wrong). ``OOS rej@t``: out-of-scope clips whose best cosine is below it
  (or that gave no prediction).
- ``t90`` / ``OOS rej@t90``: for reference, the cosine that keeps 90% of this part's in-scope
  clips (a quantile of their best cosines) and the OOS rejection there.
- ``no pred``: clips of the row (out-of-scope ones included in ``clinc`` and ``all``) with no
  prediction (ours: no utterance; whisper: empty transcript).
- CPU in ms per clip, mean and median, after one warm-up clip: ``speech model`` = thread CPU
  of the ONNX runs (ours: every utterance of the clip; the encoder's own thread) or process
  CPU of Whisper's ``transcribe``; ``text embed`` = process CPU of embedding the one transcript
  or sentence (1 thread); ``matcher`` = thread CPU of the ``IntentMatcher.match`` calls for the
  clip where they really run (ours: inside the daemon's decoder, every utterance; the others:
  right after the text embedding), caches as cold as the pipeline leaves them; ``matcher,
  warm loop`` = the same call timed in a loop over the vectors the system produced (0.2 s at
  least), warm caches: a lower bound. ``extra CPU for intents`` = (text embed + matcher) /
  speech model: what understanding by intents adds on top of running the speech model.
- **Start-up**: ``streamer.streams.intents_setup.setup_intents`` end to end (read the TOML, load the
  text embedder, embed, build the matcher) on a 50-intent, 250-sentence file (the first 50
  CLINC intents by name, their first 5 ``train`` sentences), text embedder on 1 thread and on
  all cores (``threads = 0``): the median wall and CPU seconds of 3 runs after one warm-up.
  It reads the speech bundle's manifest (to pick the model to match on), so it needs one.

Prints Markdown tables; ``--json OUT`` writes the figures and every clip's prediction: best
intent, cosine (ours: as the daemon sends it, rounded to 4 decimals), n-best (5), abstained (at
the intents file's threshold: the system's from ``--threshold-from``, else 0.5), utterances,
transcript and CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer import protocol as proto  # noqa: E402
from streamer.app import build_services  # noqa: E402
from streamer.config import load_config  # noqa: E402
from streamer.engine.text_embed import TextEmbedder, load_text_embedder  # noqa: E402
from streamer.intent_matching import IntentMatch, IntentMatcher  # noqa: E402
from streamer.intents import DEFAULT_THRESHOLD, Intent, IntentsFile  # noqa: E402
from streamer.serving_config import IntentsConfig  # noqa: E402
from streamer.streams.feed import run_file  # noqa: E402
from streamer.streams.intents_setup import build_matcher, setup_intents  # noqa: E402
from streamer.streams.services import Services  # noqa: E402
from streamer_training.data import Corpus  # noqa: E402
from streamer_training.embed_data import CLINC, EXAMPLES_PER_INTENT  # noqa: E402

RATE_HZ = 16_000
EMBED_DIR = ROOT / "data" / "demo"  # bin/train_demo --stage embed-data writes here
THRESHOLDS_FILE = EMBED_DIR / "intents_thresholds.json"
"""Where ``--part validation`` (without ``--limit``) writes the thresholds it chose."""
GROUPS = ("clinc", "slurp", "oos")
"""Clip groups (``--limit`` applies to each); ``oos`` = CLINC out-of-scope."""
DATASETS = {"clinc": ("clinc",), "slurp": ("slurp",), "all": ("clinc", "slurp")}
"""Report rows: name -> in-scope groups. Out-of-scope clips count in rows with CLINC."""
OOS_LABEL = "clinc:oos"
TOP_K = 5
"""n-best length recorded per clip."""
KEEP_IN_SCOPE = 0.90
"""Share of in-scope clips the reference threshold ``t90`` keeps."""
MATCH_LOOP_MIN_S = 0.2
"""CPU seconds the matcher is timed for, at least (its single calls take microseconds)."""
STARTUP_INTENTS = 50
STARTUP_REPEATS = 3
SYSTEMS = ("ours", "whisper", "reference")
TITLES = {
    "ours": "speech embedding",
    "reference": "reference text -> text embedder",
}


@dataclass(frozen=True)
class Clip:
    """One spoken sentence: its true intent label (``clinc:x``, ``slurp:x`` or ``clinc:oos``)."""

    index: int
    text: str
    label: str
    group: str
    voice: str
    audio: npt.NDArray[np.float32]


@dataclass
class Prediction:
    """What one system made of one clip; ``best`` is a label, None with no prediction."""

    best: str | None = None
    cosine: float = -math.inf
    abstain: bool = True
    nbest: list[tuple[str, float]] = field(default_factory=list)
    n_utterances: int = 0
    speech_cpu_ms: float = 0.0
    text_cpu_ms: float = 0.0
    match_cpu_ms: float = 0.0
    transcript: str | None = None


@dataclass
class SystemRun:
    """A system's predictions, the vectors it matched and the matcher it matched them with."""

    name: str
    title: str
    predictions: list[Prediction]
    matcher: IntentMatcher
    vectors: list[npt.NDArray[np.float32]]


# ---- clips and intents -----------------------------------------------------------------------


def load_clips(part: str, *, limit: int | None, seed: int) -> list[Clip]:
    """The part's clips, at most ``limit`` per group (seeded hash subset, original order)."""
    items = Corpus.load(EMBED_DIR / f"embed_{part}.npz").items
    clips = [
        Clip(i, u.text, u.intent, _group(u.intent), u.source, u.audio) for i, u in enumerate(items)
    ]
    if limit is None:
        return clips
    kept: list[Clip] = []
    for group in GROUPS:
        members = [c for c in clips if c.group == group]
        members.sort(key=lambda c: hashlib.sha1(f"{seed}:{c.index}:{c.text}".encode()).digest())
        kept += members[:limit]
    return sorted(kept, key=lambda c: c.index)


def _group(label: str) -> str:
    return "oos" if label == OOS_LABEL else label.partition(":")[0]


def name_of(label: str) -> str:
    """The intent name in an intents file for a data label (``clinc:x`` -> ``clinc.x``)."""
    return label.replace(":", ".", 1)


def part_intents(part: str, *, threshold: float, top_k: int = TOP_K) -> IntentsFile:
    """The part's intents from ``embed_intents.json``, as a checked-in-code intents file."""
    examples: dict[str, list[str]] = json.loads(
        (EMBED_DIR / "embed_intents.json").read_text(encoding="utf-8")
    )[part]
    return intents_file(examples, path=Path(f"{part}.toml"), threshold=threshold, top_k=top_k)


def intents_file(
    examples: dict[str, list[str]], *, path: Path, threshold: float, top_k: int
) -> IntentsFile:
    """An :class:`IntentsFile` from {label: sentences} (whitespace collapsed, as files are)."""
    intents = tuple(
        Intent(name_of(label), tuple(" ".join(s.split()) for s in sentences), None)
        for label, sentences in examples.items()
    )
    return IntentsFile(path, intents, threshold, top_k)


def write_toml(intents: IntentsFile, path: Path) -> Path:
    """Write ``intents`` as an intents file (JSON strings are valid TOML basic strings)."""
    lines = [f"threshold = {intents.threshold!r}", f"top_k = {intents.top_k}"]
    for intent in intents.intents:
        quoted = ", ".join(json.dumps(s, ensure_ascii=False) for s in intent.examples)
        lines += ["", f"[intents.{json.dumps(intent.name)}]", f"examples = [{quoted}]"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def label_of(name: str) -> str:
    """The data label of an intent name (``clinc.x`` -> ``clinc:x``; the inverse of name_of)."""
    return name.replace(".", ":", 1)


def prediction_of(match: IntentMatch) -> Prediction:
    """A matcher's result as a prediction (labels, not intent names)."""
    if not match.nbest:  # a zero or non-finite vector: nothing to compare
        return Prediction()
    nbest = [(label_of(n), round(c, 6)) for n, c in match.nbest]
    return Prediction(nbest[0][0], match.score, match.abstain, nbest)


# ---- systems ---------------------------------------------------------------------------------


class _TimedMatcher:
    """Stands in for the decoder's matcher: the same results, plus each call's thread CPU."""

    def __init__(self, inner: IntentMatcher) -> None:
        self.inner = inner
        self.cpu_s: list[float] = []
        self.vectors: list[npt.NDArray[np.float32]] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    def match(self, vector: npt.ArrayLike) -> IntentMatch:
        started = time.thread_time()
        found = self.inner.match(vector)
        self.cpu_s.append(time.thread_time() - started)
        self.vectors.append(np.asarray(vector, dtype=np.float32))
        return found


def _time_encoder(services: Services) -> list[float]:
    """Wrap every encoder's ``run_batch`` to append its thread CPU seconds to the list returned."""
    spent: list[float] = []
    for encoder in services.runner.encoders.values():
        run = encoder.run_batch

        def timed(batch: Any, options: Any = None, run: Callable[..., Any] = run) -> Any:
            started = time.thread_time()
            try:
                return run(batch, options)
            finally:
                spent.append(time.thread_time() - started)

        encoder.run_batch = timed  # type: ignore[method-assign]
    return spent


async def _daemon_clip(services: Services, audio: npt.NDArray[np.float32]) -> list[proto.Utterance]:
    """One clip through ``run_file``, as ``streamer transcribe`` reads a file."""
    events: list[proto.ServerEvent] = []
    await run_file(
        services, audio, rate_hz=RATE_HZ, claim=services.streams.admit("clip"), emit=events.append
    )
    return [e for e in events if isinstance(e, proto.Utterance)]


def _event_prediction(utts: list[proto.Utterance]) -> Prediction:
    found = utts[0].intent if utts else None
    if found is None:
        return Prediction(n_utterances=len(utts))
    nbest = [(found.name, found.confidence)] + [(a.name, a.confidence) for a in found.alternatives]
    nbest = [(label_of(n), c) for n, c in nbest]
    return Prediction(nbest[0][0], found.confidence, found.abstain, nbest, len(utts))


def _daemon_services(intents: IntentsFile, args: argparse.Namespace) -> Services:
    """``build_services`` with ``intents`` as the config's intents file (read at start only)."""
    with tempfile.TemporaryDirectory(prefix="intents-zero-shot-") as tmp:
        path = write_toml(intents, Path(tmp) / f"{intents.path.stem}.toml")
        section = {"file": str(path), "text_embedder": str(args.text_embedder), "threads": 1}
        config = load_config(
            env=os.environ,
            overrides={"engine": {"provider": "cpu", "intra_op_threads": 1}, "intents": section},
        )
        return build_services(config, {args.speech_model.name: args.speech_model})


def run_ours(clips: list[Clip], intents: IntentsFile, args: argparse.Namespace) -> SystemRun:
    """The speech bundle through the daemon's own pipeline, the intents file in its config."""
    services = _daemon_services(intents, args)
    decoder = next(d for d in services.decoders.values() if d.matcher is not None)
    assert decoder.matcher is not None
    if decoder.matcher.names != tuple(i.name for i in intents.intents):
        raise RuntimeError("the daemon's matcher does not have the intents file's intents")
    timed = _TimedMatcher(decoder.matcher)
    decoder.matcher = timed  # type: ignore[assignment]
    encoder_s = _time_encoder(services)

    async def run_all() -> list[Prediction]:
        await _daemon_clip(services, clips[0].audio)  # warm-up
        encoder_s.clear()
        timed.cpu_s.clear()
        timed.vectors.clear()
        out = []
        for clip in clips:
            before, matched = len(encoder_s), len(timed.cpu_s)
            prediction = _event_prediction(await _daemon_clip(services, clip.audio))
            prediction.speech_cpu_ms = 1000.0 * sum(encoder_s[before:])
            prediction.match_cpu_ms = 1000.0 * sum(timed.cpu_s[matched:])
            out.append(prediction)
        return out

    try:
        predictions = asyncio.run(run_all())
    finally:
        services.runner.close()
    title = f"{TITLES['ours']} ({args.speech_model.name})"
    return SystemRun("ours", title, predictions, timed.inner, timed.vectors)


def match_texts(
    texts: Sequence[str], matcher: IntentMatcher, embedder: TextEmbedder
) -> tuple[list[Prediction], list[npt.NDArray[np.float32]]]:
    """Embed each text alone (timed) and match it; an empty text is no prediction."""
    predictions: list[Prediction] = []
    vectors: list[npt.NDArray[np.float32]] = []
    for text in texts:
        if not text.strip():
            predictions.append(Prediction(transcript=text))
            continue
        started = time.process_time()
        vector = embedder.embed([text])[0]
        spent_ms = 1000.0 * (time.process_time() - started)
        started = time.thread_time()
        match = matcher.match(vector)
        match_ms = 1000.0 * (time.thread_time() - started)
        prediction = prediction_of(match)
        prediction.text_cpu_ms, prediction.match_cpu_ms = spent_ms, match_ms
        prediction.transcript = text
        prediction.n_utterances = 1
        predictions.append(prediction)
        vectors.append(vector)
    return predictions, vectors


def run_reference(clips: list[Clip], matcher: IntentMatcher, embedder: TextEmbedder) -> SystemRun:
    """Each clip's true sentence embedded and matched: the perfect-transcript upper bound."""
    predictions, vectors = match_texts([c.text for c in clips], matcher, embedder)
    return SystemRun("reference", TITLES["reference"], predictions, matcher, vectors)


def _real_voices() -> ModuleType:
    """``bench/real_voices.py`` as a module (its pinned Whisper helpers)."""
    name = "bench_real_voices"
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "real_voices.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_whisper(
    clips: list[Clip],
    matcher: IntentMatcher,
    embedder: TextEmbedder,
    *,
    beam: int,
) -> SystemRun | None:
    """Whisper base transcripts (real_voices' pinned faster-whisper setup), then as reference."""
    if importlib.util.find_spec("faster_whisper") is None:
        print("Whisper rows skipped: faster-whisper is not installed (make baselines).")
        return None
    rv = _real_voices()
    with tempfile.TemporaryDirectory(prefix="intents-whisper-") as tmp:
        folder, why = next((f, w) for n, f, w in rv.whisper_dirs(Path(tmp)) if n == "base")
        if folder is None:
            print(f"Whisper rows skipped: {why}.")
            return None
        records = []
        for clip in clips:
            wav = Path(tmp) / f"{clip.index:05d}.wav"
            sf.write(str(wav), clip.audio, RATE_HZ, subtype="PCM_16")  # lossless: int16 corpus
            records.append(rv.Record(wav, clip.text, None, "synthetic", "intent", "test"))
        results = rv.whisper_system(folder, beam=beam)(records)
    predictions, vectors = match_texts([r.text for r in results], matcher, embedder)
    for prediction, result in zip(predictions, results, strict=True):
        prediction.speech_cpu_ms = 1000.0 * result.cpu_s
    return SystemRun(
        "whisper",
        f"Whisper base (int8, beam {beam}) -> text embedder",
        predictions,
        matcher,
        vectors,
    )


# ---- metrics ---------------------------------------------------------------------------------


def _outcomes(
    run: SystemRun, clips: list[Clip], groups: Sequence[str]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """(nearest intent right, best cosine; -inf without a prediction) of the clips in groups."""
    pairs = [(p.best == c.label, p.cosine) for c, p in zip(clips, run.predictions, strict=True)]
    chosen = [pair for c, pair in zip(clips, pairs, strict=True) if c.group in groups]
    right = np.array([r for r, _ in chosen], dtype=bool)
    return right, np.array([s for _, s in chosen], dtype=np.float64)


def choose_threshold(
    right: npt.NDArray[np.bool_], cosine: npt.NDArray[np.float64], oos: npt.NDArray[np.float64]
) -> float:
    """The cosine maximising (in-scope accuracy with abstention + OOS rejection) / 2.

    Candidates lie midway between consecutive distinct best cosines (and just outside them);
    of equally good ones the lowest wins.
    """
    both = np.concatenate([cosine, oos])
    seen = np.unique(both[np.isfinite(both)])
    if not seen.size:
        return 0.0
    mids = (seen[1:] + seen[:-1]) / 2.0
    candidates = np.concatenate([[seen[0] - 1e-6], mids, [seen[-1] + 1e-6]])
    accuracy = (right[:, None] & (cosine[:, None] >= candidates[None, :])).mean(axis=0)
    if not oos.size:
        return float(candidates[int(np.argmax(accuracy))])
    rejection = (oos[:, None] < candidates[None, :]).mean(axis=0)
    return float(candidates[int(np.argmax((accuracy + rejection) / 2.0))])


def keep_quantile(cosine: npt.NDArray[np.float64], keep: float) -> float:
    """The highest cosine that ``keep`` of the clips reach (-inf if fewer have a prediction)."""
    ordered = np.sort(cosine)[::-1]
    return float(ordered[max(1, math.ceil(keep * len(ordered))) - 1]) if len(ordered) else 0.0


def dataset_scores(
    run: SystemRun, clips: list[Clip], groups: Sequence[str], threshold: float | None
) -> dict[str, Any]:
    """One report row: counts as [right, of]; thresholds and rates as numbers (None: n/a)."""
    right, cosine = _outcomes(run, clips, groups)
    _, oos = _outcomes(run, clips, ("oos",) if "clinc" in groups else ())
    t90 = keep_quantile(cosine, KEEP_IN_SCOPE)
    row: dict[str, Any] = {
        "in_scope": len(right),
        "top1": [int(right.sum()), len(right)],
        "no_prediction": int(np.isinf(cosine).sum()) + int(np.isinf(oos).sum()),
        "threshold": threshold,
        "t90": t90 if math.isfinite(t90) else None,
        "oos_rejected_at_t90": [int((oos < t90).sum()), len(oos)],
        "accuracy_at_t90": [int((right & (cosine >= t90)).sum()), len(right)],
    }
    if threshold is not None:
        row["accuracy_at_t"] = [int((right & (cosine >= threshold)).sum()), len(right)]
        row["oos_rejected_at_t"] = [int((oos < threshold).sum()), len(oos)]
    return row


def matcher_cpu_ms(matcher: IntentMatcher, vectors: Sequence[npt.NDArray[np.float32]]) -> float:
    """Process CPU ms of one ``match`` call, timed over ``vectors`` for MATCH_LOOP_MIN_S or more."""
    if not vectors:
        return math.nan
    calls, started = 0, time.process_time()
    while (spent := time.process_time() - started) < MATCH_LOOP_MIN_S:
        for vector in vectors:
            matcher.match(vector)
        calls += len(vectors)
    return 1000.0 * spent / calls


def cpu_scores(run: SystemRun) -> dict[str, Any]:
    """CPU per clip: speech model, text embedding, matcher; the share intents add."""

    def stats(values: list[float]) -> dict[str, float] | None:
        if not any(values):
            return None
        return {"mean_ms": statistics.fmean(values), "median_ms": statistics.median(values)}

    speech = stats([p.speech_cpu_ms for p in run.predictions])
    text = stats([p.text_cpu_ms for p in run.predictions])
    matcher = stats([p.match_cpu_ms for p in run.predictions])
    warm_ms = matcher_cpu_ms(run.matcher, run.vectors)
    extra = (matcher["mean_ms"] if matcher else 0.0) + (text["mean_ms"] if text else 0.0)
    return {
        "speech_model": speech,
        "text_embed": text,
        "matcher": matcher,
        "matcher_warm_loop_ms": warm_ms if math.isfinite(warm_ms) else None,
        "extra_for_intents": extra / speech["mean_ms"] if speech and math.isfinite(extra) else None,
    }


# ---- start-up --------------------------------------------------------------------------------


def startup_times(speech_model: Path, text_embedder: Path, folder: Path) -> list[dict[str, Any]]:
    """``setup_intents`` on a 50-intent, 250-sentence CLINC file: 1 thread, then all cores."""
    by_intent: dict[str, list[str]] = {}
    for sentence, intent in json.loads(CLINC.read_text(encoding="utf-8"))["train"]:
        by_intent.setdefault(intent, []).append(sentence)
    chosen = sorted(by_intent)[:STARTUP_INTENTS]
    examples = {f"clinc:{i}": by_intent[i][:EXAMPLES_PER_INTENT] for i in chosen}
    intents = intents_file(
        examples, path=Path("startup.toml"), threshold=DEFAULT_THRESHOLD, top_k=TOP_K
    )
    path = write_toml(intents, folder / "startup.toml")
    models = {speech_model.name: speech_model}
    rows = []
    for threads in (1, 0):
        config = IntentsConfig(file=str(path), text_embedder=str(text_embedder), threads=threads)
        setup_intents(config, models)  # warm-up: files into the page cache
        walls, cpus = [], []
        for _ in range(STARTUP_REPEATS):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            setup_intents(config, models)
            walls.append(time.perf_counter() - wall0)
            cpus.append(time.process_time() - cpu0)
        rows.append(
            {
                "threads": threads or os.cpu_count(),
                "intents": len(intents.intents),
                "sentences": len(intents.sentences()),
                "wall_s": statistics.median(walls),
                "cpu_s": statistics.median(cpus),
            }
        )
    return rows


# ---- report ----------------------------------------------------------------------------------


def _pct(pair: list[int] | None) -> str:
    if pair is None or not pair[1]:
        return "-"
    return f"{100.0 * pair[0] / pair[1]:.1f}% ({pair[0]}/{pair[1]})"


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


def print_report(report: dict[str, Any]) -> None:
    """The Markdown tables of ``report`` (the --json layout)."""
    _print_accuracy(report["systems"])
    _print_cpu(report["systems"])
    if report.get("startup"):
        print("\n| start-up (setup_intents) | intents | sentences | wall s | CPU s |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for s in report["startup"]:
            print(
                f"| text embedder on {s['threads']} thread(s) | {s['intents']} "
                f"| {s['sentences']} | {s['wall_s']:.2f} | {s['cpu_s']:.2f} |"
            )


def _print_accuracy(systems: dict[str, Any]) -> None:
    print(
        "\n| system | dataset | in-scope clips | top-1 | no pred | threshold | acc@t "
        "| OOS rej@t | t90 | OOS rej@t90 |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in systems.values():
        for dataset, r in run["datasets"].items():
            print(
                f"| {run['title']} | {dataset} | {r['in_scope']} | {_pct(r['top1'])} "
                f"| {r['no_prediction']} | {_num(r['threshold'])} "
                f"| {_pct(r.get('accuracy_at_t'))} | {_pct(r.get('oos_rejected_at_t'))} "
                f"| {_num(r['t90'])} | {_pct(r['oos_rejected_at_t90'])} |"
            )


def _ms(stats: dict[str, float] | None) -> str:
    return "-" if stats is None else f"{stats['mean_ms']:.2f} / {stats['median_ms']:.2f}"


def _print_cpu(systems: dict[str, Any]) -> None:
    print(
        "\n| system (CPU ms per clip, mean / median) | speech model | text embed | matcher "
        "| matcher, warm loop | extra CPU for intents |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for run in systems.values():
        c = run["cpu"]
        extra = c["extra_for_intents"]
        print(
            f"| {run['title']} | {_ms(c['speech_model'])} | {_ms(c['text_embed'])} "
            f"| {_ms(c['matcher'])} | {_num(c['matcher_warm_loop_ms'], '.4f')} "
            f"| {'-' if extra is None else f'{100.0 * extra:.2f}% of the speech model'} |"
        )


def _describe(clips: list[Clip], args: argparse.Namespace, n_intents: int) -> dict[str, Any]:
    counts = {g: sum(c.group == g for c in clips) for g in GROUPS}
    voices = sorted({c.voice for c in clips})
    line = ", ".join(f"{g} {n}" for g, n in counts.items())
    limit = f"at most {args.limit} per group, hash subset seed {args.seed}" if args.limit else "all"
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs. Part {args.part}: {line} clips "
        f"({limit}); {n_intents} intents x {EXAMPLES_PER_INTENT} examples; voices: "
        f"{', '.join(voices)}."
    )
    return {
        "part": args.part,
        "limit": args.limit,
        "seed": args.seed,
        "clips": counts,
        "voices": voices,
        "intents": n_intents,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "speech_model": str(args.speech_model),
        "text_embedder": str(args.text_embedder),
    }


def clip_rows(run: SystemRun, clips: list[Clip]) -> list[dict[str, Any]]:
    """Every clip's prediction, for --json."""
    return [
        {
            "index": c.index,
            "group": c.group,
            "label": c.label,
            "voice": c.voice,
            "text": c.text,
            "best": p.best,
            "cosine": p.cosine if math.isfinite(p.cosine) else None,
            "abstain": p.abstain,
            "nbest": p.nbest,
            "n_utterances": p.n_utterances,
            "transcript": p.transcript,
            "speech_cpu_ms": round(p.speech_cpu_ms, 3),
            "text_cpu_ms": round(p.text_cpu_ms, 3),
            "match_cpu_ms": round(p.match_cpu_ms, 4),
        }
        for c, p in zip(clips, run.predictions, strict=True)
    ]


# ---- main ------------------------------------------------------------------------------------


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--part", choices=("validation", "test"), default="validation")
    parser.add_argument("--limit", type=int, help="at most N clips per group (clinc, slurp, oos)")
    parser.add_argument("--seed", type=int, default=0, help="of the --limit subset")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--speech-model", type=Path, default=ROOT / "exported" / "commands-embed")
    parser.add_argument("--text-embedder", type=Path, default=ROOT / "exported" / "text-minilm-l6")
    parser.add_argument("--threshold-from", type=Path, help="thresholds chosen on validation")
    parser.add_argument(
        "--threshold-out",
        type=Path,
        help="where --part validation writes the thresholds it chose (default: "
        f"{THRESHOLDS_FILE.relative_to(ROOT)} without --limit; with --limit, nowhere)",
    )
    parser.add_argument("--beam", type=int, default=5, help="Whisper beam size")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up timing")
    parser.add_argument("--json", type=Path, help="write every figure and prediction here")
    args = parser.parse_args()
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    return args


def _known_thresholds(args: argparse.Namespace) -> dict[str, float] | None:
    """Thresholds from --threshold-from; None: choose them here (validation) or report none."""
    if args.threshold_from is None:
        if args.part == "test":
            print("No --threshold-from: the columns at the validation threshold are left out.")
        return None
    data = json.loads(args.threshold_from.read_text(encoding="utf-8"))
    if data.get("part") != "validation" or data.get("limit") is not None:
        print(
            f"Note: {args.threshold_from} was chosen on part {data.get('part')} with "
            f"--limit {data.get('limit')}, not on all of validation."
        )
    if data.get("speech_model") != str(args.speech_model) and "ours" in data["thresholds"]:
        print(f"Note: the speech threshold was chosen for {data.get('speech_model')}.")
    return {k: float(v) for k, v in data["thresholds"].items()}


def _systems(
    args: argparse.Namespace, clips: list[Clip], known: dict[str, float] | None
) -> list[SystemRun]:
    def intents(name: str) -> IntentsFile:
        return part_intents(args.part, threshold=(known or {}).get(name, DEFAULT_THRESHOLD))

    runs: list[SystemRun] = []
    if "ours" in args.systems:
        if (args.speech_model / "manifest.json").is_file():
            runs.append(run_ours(clips, intents("ours"), args))
        else:
            print(f"Speech-embedding rows skipped: no bundle at {args.speech_model}.")
    if "whisper" in args.systems or "reference" in args.systems:
        embedder = load_text_embedder(args.text_embedder, threads=1, provider="cpu")
        if "whisper" in args.systems:
            matcher = build_matcher(intents("whisper"), embedder)
            runs += filter(None, [run_whisper(clips, matcher, embedder, beam=args.beam)])
        if "reference" in args.systems:
            runs.append(
                run_reference(clips, build_matcher(intents("reference"), embedder), embedder)
            )
    return runs


def _score(
    runs: list[SystemRun], clips: list[Clip], known: dict[str, float] | None, part: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for run in runs:
        threshold = (known or {}).get(run.name)
        if known is None and part == "validation":
            threshold = choose_threshold(
                *_outcomes(run, clips, DATASETS["all"]), _outcomes(run, clips, ("oos",))[1]
            )
        datasets = {d: dataset_scores(run, clips, g, threshold) for d, g in DATASETS.items()}
        out[run.name] = {
            "title": run.title,
            "threshold": threshold,
            "datasets": datasets,
            "cpu": cpu_scores(run),
            "clips": clip_rows(run, clips),
        }
    return out


def _startup(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    if args.no_startup:
        return None
    if not (args.speech_model / "manifest.json").is_file():
        print(f"Start-up skipped: setup_intents needs a speech bundle ({args.speech_model}).")
        return None
    with tempfile.TemporaryDirectory(prefix="intents-startup-") as tmp:
        return startup_times(args.speech_model, args.text_embedder, Path(tmp))


def _write_thresholds(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Write the thresholds chosen here (validation only; with --limit only if asked)."""
    out = args.threshold_out or (None if args.limit else THRESHOLDS_FILE)
    if out is None or args.threshold_from is not None or args.part != "validation":
        return
    chosen = {n: s["threshold"] for n, s in report["systems"].items()}
    keep = {k: report[k] for k in ("part", "limit", "seed", "speech_model", "text_embedder")}
    out.write_text(json.dumps({**keep, "thresholds": chosen}, indent=1) + "\n")
    print(f"\nThresholds chosen on validation written to {out}.")


def main() -> int:
    args = _args()
    clips = load_clips(args.part, limit=args.limit, seed=args.seed)
    n_intents = len(part_intents(args.part, threshold=DEFAULT_THRESHOLD).intents)
    report = _describe(clips, args, n_intents)
    known = _known_thresholds(args)
    started = time.perf_counter()
    report["systems"] = _score(_systems(args, clips, known), clips, known, args.part)
    print(f"({time.perf_counter() - started:.0f} s wall for the systems)", file=sys.stderr)
    report["startup"] = _startup(args)
    print_report(report)
    _write_thresholds(args, report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

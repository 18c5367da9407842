"""Segmentation quality and cost on real speech, with the tuning and scoring parts kept apart.

Usage: ``python bench/segmentation.py [--part tuning|scoring|both] [--set NAME ...]
[--max-clips 400] [--set-knob KNOB=VALUE ...] [--no-silero] [--file]``.

Every knob and threshold of the segmenter is chosen on the **tuning** part only; the README and
bench/RESULTS.md quote the **scoring** part. The split (``SPLIT`` below), by speaker or stream:

- AN4 speakers: the 46 speakers of ``datasets/streams`` are scoring speakers, the other 28 are
  tuning speakers (``an4`` utterances and the ``built`` streams follow the same split);
- truth streams: ``audio`` (the three ``../shared/audio`` streams, tuned on before) = tuning;
  ``an4-streams`` (``datasets/streams``) = scoring; ``built``: streams made like
  ``datasets/streams`` (its README's recipe) from each part's own AN4 speakers and noise clips;
- FSDD: ``george`` = tuning, ``jackson`` + ``lucas`` = scoring; Speech Commands words and noise
  clips: sha1 of the speaker id (the file name for noise) even = tuning, odd = scoring;
  wake words (speaker unknown): even file index = tuning.

Sets and what each row reports:

- truth streams (``audio``, ``an4-streams``, ``built``): ``F1`` = pooled boundary F1 (200 ms,
  starts and ends matched one-to-one), ``worst`` = the lowest per-stream F1, ``noise utt`` =
  utterances that start inside a long noise-only stretch;
- trimmed words (``fsdd``, ``sc-words``) and words with natural silence (``an4``, ``wake``):
  ``one+word`` = share of clips giving exactly one utterance whose audio contains the word's
  energy extent (the streams README's trim rule), ``none`` = share giving none;
- noise-only files (``sc-noise``, ``nonspeech``): ``noise utt`` = utterances (must be 0);
- ``cpu``: process CPU ms per audio second, audio fed in 20 ms chunks, all detectors measured
  in the same run.
- ``--file``: the segmenter rows read each clip as ``streamer transcribe`` reads a file: when the
  clip starts inside a sound, the segmenter first hears ``segmenter.file_lead_in_ms`` of the
  quietest 150 ms of its first 1.5 s (:func:`streamer.streams.feed.file_lead_in`); without
  ``--file``, as a live stream hears it.

Sets with more clips than ``--max-clips`` are sampled (seeded, stated).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import webrtcvad

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.errors import ConfigError  # noqa: E402
from streamer.scoring import boundary_hits, f1_from_hits  # noqa: E402
from streamer.segmenter import Segmenter, UtteranceReady  # noqa: E402
from streamer.segmenter_config import SegmenterConfig  # noqa: E402
from streamer.streams.feed import file_lead_in  # noqa: E402
from streamer_training.evaluate import load_audio  # noqa: E402
from streamer_training.train_vad import manifest, speech_extent, tuning_key  # noqa: E402

RATE_HZ = 16_000
SHARED = ROOT.parent / "shared"
DATASETS = SHARED / "datasets"
Audio = npt.NDArray[np.float32]
Segments = list[tuple[float, float]]
#: One detector run: samples -> (speech spans, audio spans) in seconds.
Detector = Callable[[Audio], tuple[Segments, Segments]]
PARTS = ("tuning", "scoring")
FSDD_TUNING_SPEAKERS = ("george",)
BUILT_STREAMS_PER_PART = 4


@dataclass
class Clip:
    """One file: samples, true speech spans (streams), noise-only stretches, and its kind."""

    name: str
    samples: Audio
    truth: Segments = field(default_factory=list)
    noise_only: Segments = field(default_factory=list)


@dataclass
class EvalSet:
    """A named set of clips of one kind ("stream", "word" or "noise") in one part."""

    name: str
    kind: str
    part: str
    clips: list[Clip]
    note: str = ""


def _clip(folder: str, name: str) -> Clip:
    """A dataset file as a clip without truth."""
    return Clip("", load_audio(DATASETS / folder / name))


def word_extent_s(x: Audio) -> tuple[float, float]:
    """The streams README's trim rule: the speech extent of a single-utterance clip (s).

    The rule the learned detector was trained on (one implementation for both).
    """
    a, b = speech_extent(x)
    return a / RATE_HZ, b / RATE_HZ


def an4_split() -> dict[str, str]:
    """AN4 speaker -> part: the speakers of datasets/streams score, the others tune."""
    streams = json.loads((DATASETS / "streams" / "streams.json").read_text())["streams"]
    scoring = {i["speaker"] for s in streams.values() for i in s["segment_info"]}
    return {
        r["speaker"]: "scoring" if r["speaker"] in scoring else "tuning" for r in manifest("an4")
    }


def build_stream(
    utts: list[Audio], noise: list[Audio], rng: np.random.Generator, snr: float
) -> Clip:
    """A stream made like datasets/streams (its README's recipe) from trimmed utterances."""
    noise_db = -26.0 - snr
    pieces: list[Audio] = []
    truth: Segments = []
    stretches: Segments = []
    t = round(rng.uniform(1, 2) * RATE_HZ)
    pieces.append(np.zeros(t, np.float32))
    stretch_after = sorted(rng.uniform(15, 75, 2))
    for x in utts:
        a, b = word_extent_s(x)
        seg = x[round(a * RATE_HZ) : round(b * RATE_HZ)].astype(np.float64)
        seg -= seg.mean()
        fade = np.linspace(0, 1, 80)
        seg[:80] *= fade
        seg[-80:] *= fade[::-1]
        frames = seg[: seg.size // 160 * 160].reshape(-1, 160)
        p = (frames**2).mean(axis=1)
        active = p[p > p.max() * 1e-4].mean()
        level = noise_db + float(np.clip(snr + rng.uniform(-3, 3), 5, 25))
        seg *= np.sqrt(10 ** (level / 10) / active)
        truth.append((t / RATE_HZ, (t + seg.size) / RATE_HZ))
        pieces.append(seg.astype(np.float32))
        t += seg.size
        gap = round(rng.uniform(0.4, 2.5) * RATE_HZ)
        if stretch_after and t / RATE_HZ > stretch_after[0]:
            stretch_after.pop(0)
            gap = round(rng.uniform(3, 8) * RATE_HZ)
            stretches.append((t / RATE_HZ + 0.2, (t + gap) / RATE_HZ - 0.2))
        pieces.append(np.zeros(gap, np.float32))
        t += gap
        if t / RATE_HZ > 88:
            break
    speech = np.concatenate(pieces)
    speech = speech[: round(truth[-1][1] * RATE_HZ)]
    speech = np.concatenate([speech, np.zeros(round(rng.uniform(1, 2) * RATE_HZ), np.float32)])
    bed = np.zeros(0, np.float32)
    ramp = np.sqrt(np.linspace(0, 1, 400, dtype=np.float32))
    while bed.size < speech.size:
        clip = noise[int(rng.integers(len(noise)))]
        clip = clip / (np.sqrt((clip.astype(np.float64) ** 2).mean()) + 1e-9)
        if bed.size:
            bed[-400:] = bed[-400:] * ramp[::-1] + clip[:400] * ramp
            clip = clip[400:]
        bed = np.concatenate([bed, clip.astype(np.float32)])
    mix = speech + bed[: speech.size] * np.float32(10 ** (noise_db / 20))
    mix /= max(1.0, float(np.abs(mix).max()) / 0.99)
    return Clip("", mix.astype(np.float32), truth, stretches)


def load_sets(names: set[str], max_clips: int) -> list[EvalSet]:
    """Every evaluation set of ``names`` in both parts, sampled to ``max_clips`` clips each."""
    out: list[EvalSet] = []
    rng = np.random.default_rng(0)
    split = an4_split()

    def add(name: str, kind: str, part: str, paths: list[tuple[str, Callable[[], Clip]]]) -> None:
        if name not in names:
            return
        note = ""
        if len(paths) > max_clips:
            note = f"{max_clips} of {len(paths)}"
            paths = [paths[i] for i in sorted(rng.choice(len(paths), max_clips, replace=False))]
        clips = []
        for clip_name, load in paths:
            clip = load()
            clip.name = clip_name
            clips.append(clip)
        out.append(EvalSet(name, kind, part, clips, note))

    audio = json.loads((SHARED / "audio" / "streams.json").read_text())
    add(
        "audio",
        "stream",
        "tuning",
        [
            (
                p.name,
                lambda p=p: Clip(
                    "", load_audio(p), [(s["start"], s["end"]) for s in audio[p.name]["segments"]]
                ),
            )
            for p in sorted((SHARED / "audio").glob("stream_*.wav"))
        ],
    )
    streams = json.loads((DATASETS / "streams" / "streams.json").read_text())["streams"]
    add(
        "an4-streams",
        "stream",
        "scoring",
        [
            (
                k,
                lambda k=k, v=v: Clip(
                    "",
                    load_audio(DATASETS / "streams" / k),
                    [(s[0], s[1]) for s in v["segments"]],
                    [tuple(n) for n in v["noise_only"]],
                ),
            )
            for k, v in sorted(streams.items())
        ],
    )
    an4 = manifest("an4")
    used = {i["source"] for s in streams.values() for i in s["segment_info"]}
    noise_rows = [r for r in manifest("speech_commands") if r["kind"] == "noise"]
    for part in PARTS:
        parts_noise = [r for r in noise_rows if tuning_key(r["file"]) == (part == "tuning")]
        if "built" in names:
            bed = [load_audio(DATASETS / "speech_commands" / r["file"]) for r in parts_noise]
            bed = [
                x for x in bed if 10 * np.log10((x.astype(np.float64) ** 2).mean() + 1e-20) >= -60
            ]
            pool = [
                r for r in an4 if split[r["speaker"]] == part and f"an4/{r['file']}" not in used
            ]
            order = np.random.default_rng(7 if part == "tuning" else 11).permutation(len(pool))
            brng = np.random.default_rng(17 if part == "tuning" else 23)
            built = []
            for k in range(BUILT_STREAMS_PER_PART):
                files = [pool[i]["file"] for i in order[k::BUILT_STREAMS_PER_PART]][:40]
                snr = brng.uniform(5 + 20 * (k % 3) / 3, 5 + 20 * (k % 3 + 1) / 3)
                clip = build_stream(
                    [load_audio(DATASETS / "an4" / f) for f in files], bed, brng, snr
                )
                built.append((f"built_{part}_{k} {snr:4.1f}dB", lambda c=clip: c))
            add("built", "stream", part, built)
        fsdd = sorted((DATASETS / "fsdd").glob("*.wav"))
        add(
            "fsdd",
            "word",
            part,
            [
                (p.name, lambda p=p: Clip("", load_audio(p)))
                for p in fsdd
                if (p.name.split("_")[1] in FSDD_TUNING_SPEAKERS) == (part == "tuning")
            ],
        )
        sc = manifest("speech_commands")
        add(
            "sc-words",
            "word",
            part,
            [
                (
                    r["file"],
                    lambda r=r: _clip("speech_commands", r["file"]),
                )
                for r in sc
                if r["kind"] != "noise" and tuning_key(r["speaker"]) == (part == "tuning")
            ],
        )
        add(
            "an4",
            "word",
            part,
            [
                (r["file"], lambda r=r: _clip("an4", r["file"]))
                for r in an4
                if split[r["speaker"]] == part
            ],
        )
        wake = manifest("wake_words")
        add(
            "wake",
            "word",
            part,
            [
                (r["file"], lambda r=r: _clip("wake_words", r["file"]))
                for i, r in enumerate(wake)
                if (i % 2 == 0) == (part == "tuning")
            ],
        )
        add(
            "sc-noise",
            "noise",
            part,
            [
                (
                    r["file"],
                    lambda r=r: _clip("speech_commands", r["file"]),
                )
                for r in parts_noise
            ],
        )
    add(
        "nonspeech",
        "noise",
        "tuning",
        [
            (p.name, lambda p=p: Clip("", load_audio(p)))
            for p in sorted((SHARED / "audio").glob("nonspeech_*.wav"))
        ],
    )
    return out


def segmenter_detector(
    config: SegmenterConfig, chunk: int = 320, *, file: bool = False
) -> Detector:
    """Run a fresh Segmenter over the samples in ``chunk``-sample pieces, then flush.

    ``file``: as ``streamer transcribe`` reads a file, the segmenter first hears the file's
    ``file_lead_in`` and the file's length (``file_tail_ms``), and its utterances keep
    ``file_post_roll_ms``; times still count from the file's start.
    """

    if file:  # as streamer.streams.feed.run_file
        config = replace(config, post_roll_ms=config.file_post_roll_ms)

    def detect(samples: Audio) -> tuple[Segments, Segments]:
        seg = Segmenter(config)
        if file:
            lead_in = file_lead_in(samples, rate_hz=RATE_HZ, config=config)
            seg.hear_lead_in(lead_in, stream_samples=samples.size)
        lead = seg.samples_seen / RATE_HZ
        events = []
        for i in range(0, samples.size, chunk):
            events += seg.feed(samples[i : i + chunk])
        events += seg.flush()
        utts = [e for e in events if isinstance(e, UtteranceReady)]

        def span(a: int, b: int) -> tuple[float, float]:
            return max(0.0, a / RATE_HZ - lead), b / RATE_HZ - lead

        speech = [span(u.speech_start_sample, u.speech_end_sample) for u in utts]
        audio = [span(u.audio_start_sample, u.audio_end_sample) for u in utts]
        return speech, audio

    return detect


def webrtc_merge_detector(mode: int, *, frame_ms: int = 30, gap_s: float = 0.3) -> Detector:
    """Plain webrtcvad: speech frames, runs closer than ``gap_s`` merged (the baseline)."""
    n = RATE_HZ * frame_ms // 1000

    def detect(samples: Audio) -> tuple[Segments, Segments]:
        vad = webrtcvad.Vad(mode)
        pcm = np.clip(samples * 32768.0, -32768, 32767).astype(np.int16)
        segs: Segments = []
        for i in range(samples.size // n):
            if vad.is_speech(pcm[i * n : (i + 1) * n].tobytes(), RATE_HZ):
                start, end = i * n / RATE_HZ, (i + 1) * n / RATE_HZ
                if segs and start - segs[-1][1] < gap_s:
                    segs[-1] = (segs[-1][0], end)
                else:
                    segs.append((start, end))
        return segs, segs

    return detect


def evaluate(detect: Detector, evalset: EvalSet) -> dict[str, float]:
    """Run one detector over one set; return the row's figures."""
    hits = n_pred = n_true = noise_utts = one_word = none = 0
    worst = 1.0
    cpu = audio_s = 0.0
    for clip in evalset.clips:
        t0 = time.process_time()
        speech, audio = detect(clip.samples)
        cpu += time.process_time() - t0
        audio_s += clip.samples.size / RATE_HZ
        if evalset.kind == "stream":
            h = boundary_hits(speech, clip.truth)
            hits, n_pred, n_true = hits + h, n_pred + len(speech), n_true + len(clip.truth)
            worst = min(worst, f1_from_hits(h, len(speech), len(clip.truth)))
            noise_utts += sum(any(a <= s < b for a, b in clip.noise_only) for s, _ in speech)
        elif evalset.kind == "word":
            a, b = word_extent_s(clip.samples)
            none += not speech
            one_word += len(audio) == 1 and audio[0][0] <= a + 0.01 and audio[0][1] >= b - 0.01
        else:
            noise_utts += len(speech)
    n = len(evalset.clips)
    return {
        "n": n,
        "f1": f1_from_hits(hits, n_pred, n_true) if evalset.kind == "stream" else float("nan"),
        "worst": worst if evalset.kind == "stream" else float("nan"),
        "one": one_word / n if evalset.kind == "word" else float("nan"),
        "none": none / n if evalset.kind == "word" else float("nan"),
        "noise_utts": noise_utts,
        "cpu": cpu * 1000 / audio_s,
    }


HEADER = "| detector | set | files | F1 | worst | one+word | none | noise utt | cpu ms/s |"


def _row(name: str, evalset: EvalSet, r: dict[str, float]) -> str:
    def num(v: float, fmt: str) -> str:
        return "-" if np.isnan(v) else format(v, fmt)

    files = f"{r['n']:.0f}" + (f" ({evalset.note})" if evalset.note else "")
    noise = "-" if evalset.kind == "word" else f"{r['noise_utts']:.0f}"
    return (
        f"| {name} | {evalset.name} | {files} | {num(r['f1'], '.3f')} | {num(r['worst'], '.3f')} "
        f"| {num(r['one'] * 100, '.1f')}% | {num(r['none'] * 100, '.1f')}% | {noise} "
        f"| {r['cpu']:.2f} |".replace("| nan% ", "| - ").replace("| -% ", "| - ")
    )


def detectors(
    config: SegmenterConfig, silero: bool, *, file: bool = False
) -> Iterator[tuple[str, Detector]]:
    """The segmenter with ``config``, then with each other frame detector, then the baseline.

    ``file``: the segmenter rows read each clip as ``streamer transcribe`` reads a file.
    """
    how = " (file)" if file else ""
    yield f"segmenter {config.vad}{how}", segmenter_detector(config, file=file)
    for vad in ("learned", "webrtc", "silero"):
        if vad == config.vad or (vad == "silero" and not silero):
            continue
        try:
            other = replace(config, vad=vad)
            Segmenter(other)
            yield f"segmenter {vad}{how}", segmenter_detector(other, file=file)
        except ConfigError as exc:
            print(f"({vad} rows skipped: {exc})")
    yield "webrtcvad m3 + merge", webrtc_merge_detector(3)


ALL_SETS = (
    "audio",
    "an4-streams",
    "built",
    "fsdd",
    "sc-words",
    "an4",
    "wake",
    "sc-noise",
    "nonspeech",
)


def knob(text: str) -> tuple[str, float | str]:
    """``NAME=VALUE`` -> (name, number, or the text when it is not one)."""
    name, _, value = text.partition("=")
    try:
        return name, float(value) if "." in value else int(value)
    except ValueError:
        return name, value


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--part", choices=(*PARTS, "both"), default="both")
    parser.add_argument("--set", dest="sets", action="append", choices=ALL_SETS)
    parser.add_argument("--max-clips", type=int, default=400, help="sample larger sets (seeded)")
    parser.add_argument("--set-knob", type=knob, action="append", default=[], metavar="KNOB=VALUE")
    parser.add_argument("--no-silero", action="store_true")
    parser.add_argument(
        "--file",
        action="store_true",
        help="read every clip as `streamer transcribe` reads a file (segmenter.file_lead_in_ms)",
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--only", action="store_true", help="only the segmenter with the given knobs (sweeps)"
    )
    args = parser.parse_args()
    config = SegmenterConfig(**dict(args.set_knob))
    sets = load_sets(set(args.sets or ALL_SETS), args.max_clips)
    dets = list(detectors(config, not args.no_silero, file=args.file))
    if args.no_baseline:
        dets = dets[:-1]
    if args.only:
        dets = dets[:1]
    for part in PARTS if args.part == "both" else (args.part,):
        print(f"\n{part} part\n\n{HEADER}\n" + "".join(c if c == "|" else "-" for c in HEADER))
        for evalset in (s for s in sets if s.part == part):
            for name, detect in dets:
                print(_row(name, evalset, evaluate(detect, evalset)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

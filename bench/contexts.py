"""Contexts on unseen voices in noise: command acceptance, false acceptance, CPU, compile time.

Usage: ``.venv/bin/python bench/contexts.py [--per-voice 30] [--ooc 100] [--seed 3]
[--context contexts/home.yaml] [--exclude-scenario NAME ...] [--whisper] [--json OUT]``

- **In-context speech**: sentences drawn at random from the context (``--context``, default
  ``contexts/home.yaml``; a random path
  through a random expression, slot values at random), their truth being what
  :meth:`Context.parse` reads from the text (intent and every slot), spoken by espeak-ng voices
  that neither the training data nor the model card's held-out set used
  (``streamer_training/synth.py`` lists those). The voices are split in two: **validation**
  (the rejection threshold is chosen there) and **test** (reported once, at that threshold).
  No second Piper voice is installed here (the ``train`` extra's en_US-joe-medium is a training
  voice), so no Piper voice is tested.
- **Out-of-context speech**: SLURP sentences (``datasets/slurp_text``, spoken by the same split
  voices; those the context parses, and those of the ``--exclude-scenario`` scenarios, left
  out), LibriSpeech utterances and wake words (``datasets/librispeech_sentences``,
  ``datasets/wake_words``: real speech, split in halves for validation and test).
- **Noise**: every clip clean and at 24..6 dB SNR in 3 dB steps: a random excerpt of the clip's
  length from the noise pool (``audio/nonspeech_*``, ``speech_commands/_silence_``), scaled so
  that the loudest 2048-sample frame of speech over the loudest of the noise gives the SNR, the
  mix then peak-normalised to 0.5.
- **Decision**: exactly the daemon's (``streamer.contexts.Context.understand`` on the
  ``commands-ctc`` logits, with ``--blank-penalty``, default the daemon's
  ``decoder.context_blank_penalty``). A command is accepted when it is understood with the right
  intent and every slot right; out-of-context speech is falsely accepted when it is understood
  at all.
- **Threshold**: the largest ``max_gap_per_frame`` on a grid whose validation false acceptance
  (all out-of-context clips, all SNRs) is at most ``--fa-target``.
- **CPU**: thread CPU time per utterance of the encoder (one onnxruntime thread) and of the
  context search, and the compile time of home.yaml and of a generated 100-expression context.
- ``--whisper``: in the same run, the speech-to-text-then-NLU pipeline on the test half at the
  SNRs of ``--whisper-snr`` (default clean and 9 dB): Whisper base (``bench/real_voices.py``'s
  faster-whisper setup: int8, 1 thread, beam 5, English, hash-checked payload from ``make
  baselines``) transcribes the same mixed audio, its text is normalised as ``real_voices.py``
  scores Whisper (numerals in words, "%" read "percent", punctuation dropped) and
  :meth:`Context.parse` reads the intent and slots from it: a command is accepted when the
  parse is right, out-of-context speech falsely accepted when it parses at all (a transcript
  has no score to reject on). CPU: process time per clip.

Prints Markdown tables (the figures in bench/RESULTS.md come from it).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from streamer.config import EngineConfig  # noqa: E402
from streamer.context_syntax import Group, MacroRef, Phrase, SlotRef, Term, Word  # noqa: E402
from streamer.contexts import (  # noqa: E402
    DEFAULT_BLANK_PENALTY,
    Alphabet,
    Context,
    compile_context,
    load_context,
)
from streamer.engine.encoder import Encoder  # noqa: E402
from streamer_training.evaluate import load_audio  # noqa: E402
from streamer_training.synth import Voice, synthesize  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from real_voices import normalise, whisper_dirs, whisper_transcriber  # noqa: E402

RATE_HZ = 16000
SNRS_DB = (None, 24, 21, 18, 15, 12, 9, 6)  # None: clean
FRAME = 2048
# espeak-ng voices in neither streamer_training/synth.py's training nor its held-out lists
VALIDATION_VOICES = ("en-gb-scotland+Alex", "en-us+Annie", "en-gb-x-gbcwmd+Lee", "en-gb+adam")
TEST_VOICES = (
    "en-gb-scotland+Mike",
    "en-us+Andrea",
    "en-gb-x-gbcwmd+iven",
    "en-us+boris",
    "en-029+norbert",
    "en-gb+grandma",
)
GRID = tuple(round(x, 3) for x in np.arange(0.05, 2.01, 0.025))


@dataclass
class Clip:
    """One utterance of the benchmark and what it should give (intent None: out of context)."""

    audio: np.ndarray
    split: str  # "val" or "test"
    source: str
    intent: str | None = None
    slots: dict[str, str] | None = None


def _expand(context: Context, terms: Phrase, rng: random.Random) -> list[str]:
    words: list[str] = []
    for term in terms:
        words += _expand_term(context, term, rng)
    return words


def _expand_term(context: Context, term: Term, rng: random.Random) -> list[str]:
    spec = context.spec
    if isinstance(term, Word):
        return [term.text]
    if isinstance(term, SlotRef):
        return list(rng.choice(spec.slots[term.slot_type].phrases)[1])
    if isinstance(term, MacroRef):
        return _expand(context, rng.choice(spec.macros[term.name].phrases), rng)
    assert isinstance(term, Group)
    if term.optional and rng.random() < 0.5:
        return []
    return _expand(context, rng.choice(term.alternatives), rng)


def in_context_sentences(context: Context, n: int, rng: random.Random) -> list[str]:
    """``n`` distinct random sentences of ``context``, expressions drawn uniformly.

    Raises:
        SystemExit: the context has too few distinct sentences (100 draws per sentence failed).
    """
    out: dict[str, None] = {}  # insertion-ordered set
    for _ in range(100 * n):
        if len(out) == n:
            return list(out)
        out[" ".join(_expand(context, rng.choice(context.spec.expressions).terms, rng))] = None
    if len(out) == n:
        return list(out)
    raise SystemExit(f"contexts: {context.name} gave only {len(out)} distinct sentences of {n}")


def _voice(name: str, rng: random.Random) -> Voice:
    accent, variant = name.split("+")
    return Voice(accent, variant, speed_wpm=rng.randint(140, 200), pitch=rng.randint(30, 70))


def noise_pool() -> list[np.ndarray]:
    """Background noise recordings (no speech), each at least 2 s long."""
    files = sorted((SHARED / "audio").glob("nonspeech_*.wav"))
    silence = sorted((SHARED / "datasets/speech_commands/audio/_silence_").glob("*.flac"))
    pool = [load_audio(f) for f in files]
    # the _silence_ clips are short: joined in runs of 8, so an excerpt can span a sentence
    pool.extend(
        np.concatenate([load_audio(f) for f in silence[i : i + 8]])
        for i in range(0, len(silence), 8)
    )
    return [p for p in pool if len(p) >= 2 * RATE_HZ and np.abs(p).max() > 0]


def _peak_frame_power(x: np.ndarray) -> float:
    n = max(1, len(x) // FRAME)
    frames = np.resize(x, n * FRAME).reshape(n, FRAME) if len(x) >= FRAME else x[None, :]
    return float((frames.astype(np.float64) ** 2).mean(axis=1).max())


def mix(speech: np.ndarray, snr_db: float | None, pool: list[np.ndarray], rng: random.Random):
    """``speech`` with noise at ``snr_db`` (None: clean), peak-normalised to 0.5."""
    out = speech.astype(np.float64)
    if snr_db is not None:
        noise = rng.choice([p for p in pool if len(p) >= len(speech)] or pool)
        if len(noise) < len(speech):
            noise = np.resize(noise, len(speech))
        start = rng.randrange(len(noise) - len(speech) + 1)
        excerpt = noise[start : start + len(speech)].astype(np.float64)
        gain = np.sqrt(
            _peak_frame_power(speech) / (_peak_frame_power(excerpt) * 10 ** (snr_db / 10))
        )
        out = out + gain * excerpt
    peak = np.abs(out).max()
    return (out * (0.5 / peak) if peak > 0 else out).astype(np.float32)


def build_clips(home: Context, args: argparse.Namespace, rng: random.Random) -> list[Clip]:
    """The in-context and out-of-context clips, each tagged with its split."""
    clips: list[Clip] = []
    slurp_rows = [json.loads(line) for line in (SHARED / "datasets/slurp_text/devel.jsonl")
                  .read_text().splitlines()]  # fmt: skip
    slurp = [
        r["sentence"]
        for r in slurp_rows
        if r["scenario"] not in args.exclude_scenario and home.parse(r["sentence"]) is None
    ]
    rng.shuffle(slurp)
    per_voice_ooc = max(1, args.ooc // len(VALIDATION_VOICES + TEST_VOICES))
    for split, voices in (("val", VALIDATION_VOICES), ("test", TEST_VOICES)):
        for name in voices:
            for text in in_context_sentences(home, args.per_voice, rng):
                parsed = home.parse(text)
                assert parsed is not None, text
                audio = synthesize(text, _voice(name, rng))
                clips.append(Clip(audio, split, f"{home.name}:{name}", parsed[0], parsed[1]))
            for _ in range(per_voice_ooc):
                audio = synthesize(slurp.pop(), _voice(name, rng))
                clips.append(Clip(audio, split, "slurp"))
    for dataset, limit in (("librispeech_sentences", args.ooc), ("wake_words", args.ooc)):
        with (SHARED / "datasets" / dataset / "manifest.csv").open() as f:
            rows = list(csv.DictReader(f))
        rng.shuffle(rows)
        for i, row in enumerate(rows[:limit]):
            audio = load_audio(SHARED / "datasets" / dataset / row["file"])[: 15 * RATE_HZ]
            clips.append(Clip(audio, "val" if i % 2 == 0 else "test", dataset.split("_")[0]))
    return clips


def hundred_expression_context() -> str:
    """The text of a generated context of 100 expressions (as in tests/test_contexts.py)."""
    ones = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    ones += ["eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"]
    ones += ["eighteen", "nineteen"]
    tens = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    spell = [ones[n] if n < 20 else f"{tens[n // 10]} {ones[n % 10]}" for n in range(100)]
    verbs = ["open", "close", "start", "stop", "check", "show", "play", "pause", "lock", "unlock"]
    lines = ["context:", "  expressions:"]
    for i in range(20):
        lines.append(f"    intent{i}:")
        lines += [
            f'      - "@please [{verbs[(i + j) % 10]}, {verbs[(i + j + 1) % 10]}] (the) device '
            f'(in the $room:room) (at $number:level) number {spell[i]} {spell[j]}"'
            for j in range(5)
        ]
    lines += [
        "  slots:",
        f"    room: [{', '.join(f'room {s}' for s in spell[:30])}]",
        f"    number: [{', '.join(spell)}]",
        "  macros:",
        "    please: [please, could you, would you please, kindly]",
    ]
    return "\n".join(lines) + "\n"


Row = tuple[int, "float | None", float, bool, float, float]
WhisperRow = tuple[int, "float | None", bool, bool, float]
#: Whisper base's audio -> text, and the SNRs (None: clean) it runs at.
Whisper = tuple[Callable[[np.ndarray], str], "set[int | None]"]


def _pct(n_d: tuple[int, int]) -> str:
    return f"{100 * n_d[0] / max(1, n_d[1]):.1f}% ({n_d[0]}/{n_d[1]})"


def accepted(rows: list[Row], clips: list[Clip], split: str, t: float, snr: object = "all"):
    """(accepted commands, commands) of ``split`` at threshold ``t`` (one SNR or all)."""
    sel = [
        r
        for r in rows
        if clips[r[0]].split == split
        and clips[r[0]].intent is not None
        and (snr == "all" or r[1] == snr)
    ]
    return sum(r[3] and r[2] <= t for r in sel), len(sel)


def false_accepted(
    rows: list[Row],
    clips: list[Clip],
    split: str,
    t: float,
    source: str = "all",
    snr: object = "all",
):
    """(understood, clips) of the out-of-context clips of ``split`` at threshold ``t``."""
    sel = [
        r
        for r in rows
        if clips[r[0]].split == split
        and clips[r[0]].intent is None
        and source in ("all", clips[r[0]].source)
        and (snr == "all" or r[1] == snr)
    ]
    return sum(r[2] <= t for r in sel), len(sel)


def report(rows: list[Row], clips: list[Clip], *, fa_target: float, name: str) -> float:
    """Choose the threshold on validation, print the tables; return the threshold."""
    fa = {t: false_accepted(rows, clips, "val", t) for t in GRID}
    ok = [t for t in GRID if fa[t][0] <= fa_target * fa[t][1]]
    t = max(ok) if ok else GRID[0]
    print(
        f"\nThreshold chosen on validation: max_gap_per_frame = {t} (validation FA "
        f"{_pct(fa[t])}, validation acceptance {_pct(accepted(rows, clips, 'val', t))})\n"
    )
    print("| SNR | command acceptance, test voices | same, validation voices |")
    print("|---|---:|---:|")
    for snr in SNRS_DB:
        label = "clean" if snr is None else f"{snr} dB"
        test, val = (accepted(rows, clips, split, t, snr) for split in ("test", "val"))
        print(f"| {label} | {_pct(test)} | {_pct(val)} |")
    print("\n| out-of-context source (test half) | clean | 9 dB | all SNRs |")
    print("|---|---:|---:|---:|")
    for source in ("slurp", "librispeech", "wake", "all"):
        cells = [_pct(false_accepted(rows, clips, "test", t, source, s)) for s in (None, 9, "all")]
        print(f"| {source} | {' | '.join(cells)} |")
    enc = [r[4] * 1000 for r in rows]
    search = [r[5] * 1000 for r in rows]
    print("\n| CPU per utterance (thread time, 1 thread) | mean ms | median ms |")
    print("|---|---:|---:|")
    for label, ms in (("encoder (commands-ctc)", enc), (f"context search ({name})", search)):
        print(f"| {label} | {statistics.mean(ms):.1f} | {statistics.median(ms):.1f} |")
    print(f"\ncontext search / encoder CPU, all utterances: {sum(search) / sum(enc):.1%}")
    return t


def measure(
    encoder: Encoder,
    home: Context,
    clips: list[Clip],
    pool: list[np.ndarray],
    rng: random.Random,
    whisper: Whisper | None = None,
    *,
    blank_penalty: float = DEFAULT_BLANK_PENALTY,
) -> tuple[list[Row], list[WhisperRow]]:
    """Every clip at every SNR: (clip index, SNR, gap, right parse, encoder s, search s); and
    Whisper's (clip index, SNR, right parse, parsed at all, CPU s) where ``whisper`` runs."""
    rows: list[Row] = []
    whisper_rows: list[WhisperRow] = []
    for i, clip in enumerate(clips):
        for snr in SNRS_DB:
            audio = mix(clip.audio, snr, pool, rng)
            if whisper is not None and clip.split == "test" and snr in whisper[1]:
                cpu0 = time.process_time()
                parsed = home.parse(whisper_text(whisper[0](audio)))
                cpu = time.process_time() - cpu0
                right = clip.intent is not None and parsed == (clip.intent, clip.slots)
                whisper_rows.append((i, snr, right, parsed is not None, cpu))
            t0 = time.thread_time()
            logits = encoder.run(audio)["logits"][0]
            t1 = time.thread_time()
            found = home.understand(
                logits, max_gap_per_frame=float("inf"), blank_penalty=blank_penalty
            )
            t2 = time.thread_time()
            right = clip.intent is not None and (found.intent, dict(found.slots)) == (
                clip.intent,
                clip.slots,
            )
            rows.append((i, snr, found.gap_per_frame, right, t1 - t0, t2 - t1))
        if i % 50 == 0:
            print(f"{i}/{len(clips)}", file=sys.stderr)
    return rows, whisper_rows


def whisper_text(text: str) -> str:
    """A Whisper transcript in the context's words (see the module docstring)."""
    return " ".join(normalise(text.replace("%", " percent ").replace("°", " degrees ")))


def load_whisper(tmp: Path) -> Callable[[np.ndarray], str] | None:
    """Whisper base as ``bench/real_voices.py`` runs it, or None (one line says why)."""
    if importlib.util.find_spec("faster_whisper") is None:
        print("Whisper comparison skipped: faster-whisper is not installed (make baselines).")
        return None
    for name, folder, why in whisper_dirs(tmp):
        if name == "base":
            if folder is None:
                print(f"Whisper comparison skipped: {why}.")
                return None
            return whisper_transcriber(folder, beam=5)
    return None


def whisper_report(rows: list[Row], whisper_rows: list[WhisperRow], clips: list[Clip], t: float):
    """The daemon (at threshold ``t``) and Whisper base + the context, on the same test clips."""
    snrs = sorted({r[1] for r in whisper_rows}, key=lambda x: (x is not None, -(x or 0)))
    names = ["clean" if x is None else f"{x} dB" for x in snrs]
    print("\n| test half, same clips | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(snrs))
    lines: list[tuple[str, Callable[[object], tuple[int, int]]]] = [
        ("command acceptance, context search", lambda x: accepted(rows, clips, "test", t, x)),
        ("command acceptance, Whisper base + context", lambda x: _count(whisper_rows, clips, x)),
        (
            "false acceptance, context search",
            lambda x: false_accepted(rows, clips, "test", t, snr=x),
        ),
        (
            "false acceptance, Whisper base + context",
            lambda x: _count(whisper_rows, clips, x, oc=1),
        ),
    ]
    for label, pick in lines:
        print(f"| {label} | " + " | ".join(_pct(pick(snr)) for snr in snrs) + " |")
    ours = statistics.mean(
        r[4] + r[5] for r in rows if clips[r[0]].split == "test" and r[1] in snrs
    )
    theirs = statistics.mean(r[4] for r in whisper_rows)
    print(
        f"\nCPU per clip: encoder + context search {ours * 1000:.1f} ms (thread time), "
        f"Whisper base {theirs * 1000:.0f} ms (process time)"
    )


def _count(whisper_rows: list[WhisperRow], clips: list[Clip], snr: object, *, oc: int = 0):
    """Whisper's (right parses, in-context clips) or, ``oc``, (any parse, out-of-context clips)."""
    sel = [r for r in whisper_rows if r[1] == snr and (clips[r[0]].intent is None) == bool(oc)]
    return sum(r[3] if oc else r[2] for r in sel), len(sel)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-voice", type=int, default=30, help="in-context sentences a voice")
    parser.add_argument("--ooc", type=int, default=100, help="out-of-context clips per source")
    parser.add_argument("--fa-target", type=float, default=0.01, help="validation FA at most")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--whisper", action="store_true", help="compare with Whisper base")
    parser.add_argument("--context", type=Path, default=ROOT / "contexts/home.yaml")
    parser.add_argument(
        "--blank-penalty",
        type=float,
        default=DEFAULT_BLANK_PENALTY,
        help="nats off the blank before the context reads (decoder.context_blank_penalty)",
    )
    parser.add_argument(
        "--exclude-scenario",
        nargs="+",
        default=[],
        help="SLURP scenarios left out of the out-of-context sentences",
    )
    parser.add_argument(
        "--whisper-snr",
        type=lambda v: None if v == "clean" else int(v),
        nargs="+",
        default=[None, 9],
        help="SNRs it runs at: dB or clean (default: clean 9)",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    encoder = Encoder.load(
        "commands-ctc",
        ROOT / "exported/commands-ctc",
        config=EngineConfig(provider="cpu", intra_op_threads=1),
    )
    alphabet = Alphabet.of(encoder.manifest)
    started = time.perf_counter()
    home = load_context(args.context, alphabet)
    compile_home_s = time.perf_counter() - started
    started = time.perf_counter()
    compile_context(hundred_expression_context(), alphabet, source="generated")
    compile_100_s = time.perf_counter() - started

    pool = noise_pool()
    clips = build_clips(home, args, rng)
    print(f"{len(clips)} clips, {len(pool)} noise recordings", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        whisper = load_whisper(Path(tmp)) if args.whisper else None
        snrs = set(args.whisper_snr)
        rows, whisper_rows = measure(
            encoder,
            home,
            clips,
            pool,
            rng,
            (whisper, snrs) if whisper else None,
            blank_penalty=args.blank_penalty,
        )
    threshold = report(rows, clips, fa_target=args.fa_target, name=home.name)
    if whisper_rows:
        whisper_report(rows, whisper_rows, clips, threshold)
    print(
        f"\ncompile: {args.context.name} {compile_home_s * 1000:.0f} ms; "
        f"generated 100-expression context {compile_100_s * 1000:.0f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps({
            "threshold": threshold,
            "rows": [[clips[r[0]].split, clips[r[0]].source, clips[r[0]].intent is not None,
                      r[1], r[2], r[3], r[4], r[5]] for r in rows],
        }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

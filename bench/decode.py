"""CTC decoding time of the shipped commands-ctc bundle: greedy, beam search with its LM, word list.

Usage: ``.venv/bin/python bench/decode.py [--repeats 5] [--audio DIR]``

Each clip of real speech (``../shared/audio``, plus that clip repeated to 30 s, the segmenter's
longest utterance) runs through the encoder once; then the same logits are decoded by the
daemon's own decoders (``streamer.decoding``): greedy, the LM-fused beam search at the default
width and at 16, and the search held to the bundle's digits word list (what the daemon runs when
the intent model says ``digits``). Times are medians over ``--repeats``, in one process, one
thread. Prints a Markdown table (time, and the transcripts beside the reference).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.config import EngineConfig  # noqa: E402
from streamer.decoding import Decoded, OutputDecoder  # noqa: E402
from streamer.engine.encoder import Encoder  # noqa: E402
from streamer.protocol import Intent  # noqa: E402

CLIPS = {
    "fsdd/7_lucas_0.wav": "seven",
    "cmd_living_room_light.wav": "turn on the living room light",
    "digits_tidigits_2934z.wav": "two nine three four zero",
    "long_digits_vosk_test.wav": "one zero zero zero one nine oh two one oh zero one eight"
    " zero three",
}
LONGEST_S = 30.0


def _load(path: Path, rate_hz: int) -> np.ndarray:
    audio, native_hz = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if native_hz != rate_hz:
        mono = soxr.resample(mono, native_hz, rate_hz)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    """Print the table; exit 1 if a bundle or clip is missing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--audio", type=Path, default=ROOT.parent / "shared" / "audio")
    args = parser.parse_args()
    bundle = ROOT / "exported" / "commands-ctc"
    encoder = Encoder.load("ctc", bundle, config=EngineConfig(provider="cpu", intra_op_threads=1))
    beam = OutputDecoder(encoder.manifest, bundle_dir=bundle, beam_width=64)
    beam16 = OutputDecoder(encoder.manifest, bundle_dir=bundle, beam_width=16)
    greedy = OutputDecoder(encoder.manifest, bundle_dir=bundle, ctc="greedy")
    digits = Intent("digits", 1.0)
    decoders: dict[str, Callable[[np.ndarray], Decoded]] = {
        "greedy": lambda x: greedy.decode({"logits": x}),
        "beam 64 + LM": lambda x: beam.decode({"logits": x}),
        "beam 16 + LM": lambda x: beam16.decode({"logits": x}),
        "digits word list": lambda x: beam.decode({"logits": x}, intent=digits),
    }
    print(f"| clip | audio s | {' | '.join(f'{name} ms' for name in decoders)} |")
    print("|---|---:|" + "---:|" * len(decoders))
    texts = []
    for name, reference in CLIPS.items():
        path = args.audio / name
        if not path.is_file():
            print(f"missing {path}", file=sys.stderr)
            return 1
        clip = _load(path, encoder.manifest.sample_rate)
        reps = int(np.ceil(LONGEST_S * encoder.manifest.sample_rate / len(clip)))
        for label, audio in ((name, clip), (f"{name} x{reps}", np.tile(clip, reps))):
            logits = encoder.run(audio)["logits"][0]
            row = {}
            for dec_name, dec in decoders.items():
                row[dec_name] = _median_ms(lambda d=dec, x=logits: d(x), args.repeats)
                if audio is clip:
                    found = dec(logits).transcript
                    texts.append((name, dec_name, found.text if found else "", reference))
            seconds = len(audio) / encoder.manifest.sample_rate
            cells = " | ".join(f"{row[d]:.1f}" for d in decoders)
            print(f"| {label} | {seconds:.1f} | {cells} |")
    print()
    print("| clip | decoder | transcript | reference |")
    print("|---|---|---|---|")
    for name, dec_name, text, reference in texts:
        print(f"| {name} | {dec_name} | {text} | {reference} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the learned frame detector (:mod:`streamer.vad_learned`) on real speech in real noise.

Examples are 12 s mixtures made like the shared segmentation streams: utterances cut to their
speech extent (the streams README's trim rule, so the truth convention is the one the benchmark
scores), or left with their own recorded silence, placed with gaps of 0.15-6 s over a bed of
recorded noise at 0-55 dB SNR (or near digital silence), at levels from -45 to -12 dBFS. One in
five examples starts inside or right at the start of speech (trimmed clips), one in five holds
noise only (at -75 to -8 dBFS). Labels: each 30 ms frame is speech when most of it lies inside an
utterance's extent.

Material (the split of ``bench/segmentation.py``: nothing of its scoring part is used):
AN4 speakers that are not in ``datasets/streams`` (of those, the speakers whose sha1 ends in a
multiple of 4 are held out for checkpoint choice), Speech Commands speakers and noise clips of the
tuning parity, wake-word files of even index, FSDD ``george``, every LibriSpeech sentence (used
nowhere else in the benchmark), the noise files of ``../shared/audio`` and synthetic coloured
noise and hum. Checkpoint: the lowest frame error on the held-out examples.

Run: ``python -m streamer_training.train_vad --out streamer/models/vad_gru.npz`` (about 15 min on
2 cores, data included).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streamer.vad_learned import FRAME_SAMPLES, N_FEATURES, frame_features, webrtc_verdicts
from streamer_training.evaluate import load_audio
from streamer_training.workspace import REPO

log = logging.getLogger("train_vad")
RATE = 16_000
DATASETS = REPO.parent / "shared" / "datasets"
AUDIO = REPO.parent / "shared" / "audio"
EXAMPLE_S = 12.0
Audio = npt.NDArray[np.float32]


def tuning_key(key: str) -> bool:
    """Whether a Speech Commands speaker (or noise file) is in the segmentation tuning part.

    The last byte of the key's sha1 is even; ``bench/segmentation.py`` splits by the same rule.
    """
    return hashlib.sha1(key.encode()).digest()[-1] % 2 == 0


def manifest(folder: str) -> list[dict[str, str]]:
    """Rows of ``datasets/FOLDER/manifest.csv``."""
    with open(DATASETS / folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def speech_extent(x: Audio) -> tuple[int, int]:
    """The shared streams' trim rule (see their README), in samples."""
    n = x.size // 160
    p = (x[: n * 160].astype(np.float64).reshape(n, 160) ** 2).mean(axis=1)
    p = np.convolve(p, np.ones(3) / 3, mode="same")
    e = 10 * np.log10(p + 1e-12)
    noise, top = np.percentile(e, 10), e.max()
    on = min(max(noise + 15, top - 20), top - 6)
    off = min(max(noise + 15, top - 40), top - 6)
    a = int(np.argmax(e > on))
    b = int(n - 1 - np.argmax(e[::-1] > off))
    while a > 0 and e[a - 1] > noise + 8:
        a -= 1
    while b < n - 1 and e[b + 1] > noise + 8:
        b += 1
    return max(0, a - 2) * 160, min(n, b + 3) * 160


@dataclass
class Pools:
    """Utterances (samples, extent) by source, and noise clips."""

    speech: dict[str, list[tuple[Audio, tuple[int, int]]]]
    noise: list[Audio]


def load_pools(part: str) -> Pools:
    """``part`` "train" or "heldout" (AN4 speakers only differ; the rest goes to train)."""
    streams = json.loads((DATASETS / "streams" / "streams.json").read_text())["streams"]
    scoring = {i["speaker"] for s in streams.values() for i in s["segment_info"]}

    def an4_part(speaker: str) -> str:
        return "heldout" if hashlib.sha1(speaker.encode()).digest()[-1] % 4 == 0 else "train"

    rows: dict[str, list[Path]] = {"an4": [], "sc": [], "wake": [], "fsdd": [], "libri": []}
    for r in manifest("an4"):
        if r["speaker"] not in scoring and an4_part(r["speaker"]) == part:
            rows["an4"].append(DATASETS / "an4" / r["file"])
    noise: list[Audio] = []
    if part == "train":
        for r in manifest("speech_commands"):
            if r["kind"] == "noise":
                continue
            if tuning_key(r["speaker"]):
                rows["sc"].append(DATASETS / "speech_commands" / r["file"])
        for i, r in enumerate(manifest("wake_words")):
            if i % 2 == 0:
                rows["wake"].append(DATASETS / "wake_words" / r["file"])
        rows["fsdd"] = sorted((DATASETS / "fsdd").glob("*_george_*.wav"))
        rows["libri"] = [
            DATASETS / "librispeech_sentences" / r["file"]
            for r in manifest("librispeech_sentences")
        ]
    for r in manifest("speech_commands"):
        if r["kind"] == "noise" and tuning_key(r["file"]):
            x = load_audio(DATASETS / "speech_commands" / r["file"])
            if 10 * np.log10((x.astype(np.float64) ** 2).mean() + 1e-20) >= -60:
                noise.append(x)
    noise += [load_audio(p) for p in sorted(AUDIO.glob("nonspeech_*.wav"))]
    speech = {}
    for name, paths in rows.items():
        clips = []
        for p in paths:
            x = load_audio(p)
            if x.size >= 4800:
                clips.append((x, speech_extent(x)))
        speech[name] = clips
        log.info("%s %s: %d utterances", part, name, len(clips))
    return Pools(speech, noise)


def _synthetic_noise(rng: np.random.Generator, n: int) -> Audio:
    kind = rng.integers(4)
    white = rng.standard_normal(n)
    if kind == 0:
        x = white
    elif kind in (1, 2):  # pink-ish / brown-ish by spectral tilt
        spec = np.fft.rfft(white)
        f = np.maximum(np.fft.rfftfreq(n, 1 / RATE), 20.0)
        spec /= f ** (0.5 if kind == 1 else 1.0)
        x = np.fft.irfft(spec, n)
    else:  # mains hum with harmonics over faint white noise
        t = np.arange(n) / RATE
        base = rng.choice([50.0, 60.0])
        x = sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
        x = x + 0.05 * white
    out: Audio = np.asarray(x / (np.sqrt((x**2).mean()) + 1e-12), dtype=np.float32)
    return out


def _bed(pools: Pools, rng: np.random.Generator, n: int) -> Audio:
    if rng.random() < 0.2:
        return _synthetic_noise(rng, n)
    out = np.zeros(0, np.float32)
    while out.size < n:
        clip = pools.noise[int(rng.integers(len(pools.noise)))]
        start = int(rng.integers(max(1, clip.size - RATE // 4)))
        piece = clip[start:].astype(np.float64)
        piece = piece / (np.sqrt((piece**2).mean()) + 1e-12)
        out = np.concatenate((out, piece.astype(np.float32)))
    return out[:n]


def _active_power(x: npt.NDArray[np.float64]) -> float:
    frames = x[: x.size // 160 * 160].reshape(-1, 160)
    p = (frames**2).mean(axis=1)
    return float(p[p > p.max() * 1e-4].mean()) if p.size else 1e-12


SOURCE_WEIGHTS = {"an4": 0.35, "sc": 0.2, "libri": 0.2, "wake": 0.1, "fsdd": 0.15}


#: A pause inside an utterance at least this long (s) and this far under its peak (dB) is
#: labelled non-speech. Without it the whole extent was speech, and the network learnt that
#: quiet after speech is still speech: it bridged a lecture's pauses into 30 s utterances.
PAUSE_MIN_S = 0.6
PAUSE_DB = 35.0


def inner_pauses(seg: npt.NDArray[np.float64], lab: Audio) -> Audio:
    """``lab`` (per-sample 0/1) with the long pauses of ``seg`` set to 0.

    10 ms frames smoothed over 3; a pause is a run of frames ``PAUSE_DB`` under the loudest for
    at least ``PAUSE_MIN_S``; its first and last 50 ms stay speech (fades, releases).
    """
    frames = seg[: seg.size // 160 * 160].reshape(-1, 160)
    e = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    e = np.convolve(e, np.ones(3) / 3, mode="same")
    quiet = e < e.max() - PAUSE_DB
    out = lab.copy()
    run = 0
    for i, q in enumerate(np.append(quiet, False)):
        if q:
            run += 1
            continue
        if run >= PAUSE_MIN_S * 100:
            out[(i - run + 5) * 160 : (i - 5) * 160] = 0
        run = 0
    return out


def make_example(pools: Pools, rng: np.random.Generator) -> tuple[Audio, Audio]:
    """One ``EXAMPLE_S`` mixture and its per-sample speech truth (0/1)."""
    n = int(EXAMPLE_S * RATE)
    speech = np.zeros(n, np.float64)
    truth = np.zeros(n, np.float32)
    level_db = rng.uniform(-45, -12)
    sources = [s for s in SOURCE_WEIGHTS if pools.speech.get(s)]
    weights = np.array([SOURCE_WEIGHTS[s] for s in sources])
    mode = rng.random()
    t = 0 if 0.2 <= mode < 0.4 else int(rng.uniform(0.2, 2.0) * RATE)
    first = True
    while mode >= 0.2 and t < n:
        src = sources[int(rng.choice(len(sources), p=weights / weights.sum()))]
        x, (a, b) = pools.speech[src][int(rng.integers(len(pools.speech[src])))]
        if rng.random() < 0.7 or (first and mode < 0.4):
            seg = x[a:b].astype(np.float64)
            seg -= seg.mean()
            fade = np.linspace(0, 1, 80)
            seg[:80] *= fade
            seg[-80:] *= fade[::-1]
            lab = np.ones(seg.size, np.float32)
        else:
            seg = x.astype(np.float64) - x.mean()
            lab = np.zeros(seg.size, np.float32)
            lab[a:b] = 1
        seg *= np.sqrt(10 ** ((level_db + rng.uniform(-3, 3)) / 10) / _active_power(seg[lab > 0]))
        lab = inner_pauses(seg, lab)
        if first and mode < 0.4 and rng.random() < 0.5:  # start inside the utterance
            cut = int(rng.integers(seg.size // 2 + 1))
            seg, lab = seg[cut:], lab[cut:]
        first = False
        m = min(seg.size, n - t)
        speech[t : t + m] += seg[:m]
        truth[t : t + m] = np.maximum(truth[t : t + m], lab[:m])
        gap = rng.uniform(0.15, 2.5) if rng.random() < 0.85 else rng.uniform(3, 6)
        t += seg.size + int(gap * RATE)
    if mode < 0.2:  # noise only, at any level a microphone gives (loud steady noise included)
        speech += _bed(pools, rng, n) * 10 ** (rng.uniform(-75, -8) / 20)
    elif rng.random() < 0.85:
        snr = rng.uniform(0, 55)
        speech += _bed(pools, rng, n) * 10 ** ((level_db - snr) / 20)
    else:
        speech += rng.standard_normal(n) * 10 ** ((level_db - 70) / 20)
    peak = np.abs(speech).max()
    if peak > 0.99:
        speech *= 0.99 / peak
    return speech.astype(np.float32), truth


def featurize(x: Audio, truth: Audio) -> tuple[Audio, Audio]:
    """Raw features (frames, N_FEATURES) and frame labels of one example."""
    n = x.size // FRAME_SAMPLES
    frames = x[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
    feats = frame_features(frames, webrtc_verdicts(frames))
    labels = (truth[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES).mean(axis=1) > 0.5).astype(
        np.float32
    )
    return feats, labels


def build(pools: Pools, count: int, seed: int) -> tuple[Audio, Audio]:
    """``count`` examples: features (count, frames, N_FEATURES), labels (count, frames)."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for i in range(count):
        f, y = featurize(*make_example(pools, rng))
        feats.append(f)
        labels.append(y)
        if (i + 1) % 2000 == 0:
            log.info("examples %d / %d", i + 1, count)
    return np.stack(feats), np.stack(labels)


def train(args: argparse.Namespace) -> None:
    """Build the data, train, keep the best held-out checkpoint, write the ``.npz``."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    x_tr, y_tr = build(load_pools("train"), args.examples, seed=1)
    x_va, y_va = build(load_pools("heldout"), args.heldout_examples, seed=2)
    log.info("data built in %.0f s", time.time() - t0)
    mean = x_tr.reshape(-1, N_FEATURES).mean(axis=0)
    std = x_tr.reshape(-1, N_FEATURES).std(axis=0) + 1e-3

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = torch.nn.Linear(N_FEATURES, args.hidden)
            self.gru = torch.nn.GRU(args.hidden, args.hidden, batch_first=True)
            self.out = torch.nn.Linear(args.hidden, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.gru(torch.relu(self.inp(x)))
            return self.out(h).squeeze(-1)  # type: ignore[no-any-return]

    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    xt = torch.from_numpy((x_tr - mean) / std)
    yt = torch.from_numpy(y_tr)
    xv = torch.from_numpy((x_va - mean) / std)
    yv = torch.from_numpy(y_va)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    steps_per_epoch = len(xt) // args.batch
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total)
    best, best_state = 1.0, None
    gen = torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(xt), generator=gen)
        for s in range(steps_per_epoch):
            idx = order[s * args.batch : (s + 1) * args.batch]
            # random crops: the state must work from any start, not only a silent one
            crop = int(torch.randint(0, xt.shape[1] // 3, (1,), generator=gen))
            loss = loss_fn(net(xt[idx, crop:]), yt[idx, crop:])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            err = float(((net(xv) > 0).float() != yv).float().mean())
        log.info(
            "epoch %d loss %.4f held-out frame error %.4f", epoch + 1, float(loss.detach()), err
        )
        if err < best:
            best = err
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    assert best_state is not None
    arrays = {k: v.numpy().astype(np.float32) for k, v in best_state.items()}
    arrays["norm_mean"] = mean.astype(np.float32)
    arrays["norm_std"] = std.astype(np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    log.info("best held-out frame error %.4f; wrote %s (%.0f s)", best, args.out, time.time() - t0)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m streamer_training.train_vad [--out FILE] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "streamer" / "models" / "vad_gru.npz")
    parser.add_argument("--examples", type=int, default=16000)
    parser.add_argument("--heldout-examples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=48)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

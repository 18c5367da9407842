"""The ``real`` stage on a machine with a CUDA GPU: same data and loss, far more steps.

``python -m streamer_training.real_gpu --pack DIR --out DIR --minutes M`` trains from a pack
(:mod:`streamer_training.pack`; built here by ``bin/train_demo --stage pack``) for a wall-clock
budget: worker processes draw and augment batches exactly as :class:`real_voices.RealMixture`
does, the GPU runs the steps under bfloat16 autocast, and the learning rate follows warm-up
then cosine over the *time* budget (the step count is whatever the budget allows, recorded in
``curve.json``). Every ``--eval-every-s`` seconds the greedy WER over the pack's validation
sets is measured; ``best.pt`` keeps the lowest mean.

``--layers`` above the starting point's depth grows the encoder by stacking (Gong et al.,
ICML 2019: each trained layer is copied into two neighbouring layers of the deeper model), so
a deeper student starts from the trained one instead of from scratch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from streamer_training import data, loop, pack, real_voices
from streamer_training.train_ctc import CtcRecipe, build_model, encode_batch, greedy_decode

log = logging.getLogger(__name__)

LAYER_PREFIX = "sew_d.encoder.encoder.layer."


def stack_layers(state: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """Map a trained state dict onto a model ``n_layers`` deep (a multiple of the trained depth).

    Layer ``j`` of the deep model starts as layer ``j * old // n_layers`` of the trained one;
    everything outside the layers is copied as is.

    Raises:
        ValueError: ``n_layers`` is not a multiple of the trained depth.
    """
    old = 1 + max(
        int(k[len(LAYER_PREFIX) :].split(".", 1)[0]) for k in state if k.startswith(LAYER_PREFIX)
    )
    if n_layers % old:
        raise ValueError(f"{n_layers} layers is not a multiple of the trained {old}")
    out = {k: v for k, v in state.items() if not k.startswith(LAYER_PREFIX)}
    for key, value in state.items():
        if not key.startswith(LAYER_PREFIX):
            continue
        index, rest = key[len(LAYER_PREFIX) :].split(".", 1)
        for j in range(n_layers):
            if j * old // n_layers == int(index):
                out[f"{LAYER_PREFIX}{j}.{rest}"] = value.clone()
    return out


def batches(mixture: real_voices.RealMixture, batch_size: int, seed: int) -> Iterator[Any]:
    """Endless padded batches ``(values, mask, labels)`` drawn with a seeded generator."""
    import torch

    rng = np.random.default_rng(seed)
    while True:
        batch = loop.draw_batch(mixture.draw, batch_size, rng, length=lambda u: len(u.audio))
        values, mask, _ = loop.pad_batch([u.audio for u in batch])
        labels = encode_batch([u.text for u in batch])
        yield torch.from_numpy(values), torch.from_numpy(mask), torch.from_numpy(labels)


def _loader(mixture: real_voices.RealMixture, batch_size: int, seed: int, workers: int) -> Any:
    """A DataLoader of ``workers`` processes, each drawing its own seeded batch stream."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class Stream(IterableDataset[Any]):
        def __iter__(self) -> Iterator[Any]:
            info = get_worker_info()
            worker = info.id if info is not None else 0
            torch.set_num_threads(1)
            return batches(mixture, batch_size, seed * 1000 + worker)

    return DataLoader(
        Stream(),
        batch_size=None,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=8 if workers else None,
        persistent_workers=workers > 0,
    )


def greedy_wer(model: Any, items: list[pack.Clip], device: str, batch_size: int = 32) -> float:
    """Greedy WER of ``model`` over ``items`` (batched, padded frames cut per clip)."""
    import torch

    from streamer_training.evaluate import word_error_rate

    order = sorted(range(len(items)), key=lambda i: len(items[i].audio))
    by_index: dict[int, str] = {}
    model.eval()
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            values, mask, lengths = loop.pad_batch([items[i].audio for i in chunk])
            logits = model(
                torch.from_numpy(values).to(device),
                attention_mask=torch.from_numpy(mask).to(device),
            ).logits.float()
            frames = model._get_feat_extract_output_lengths(torch.from_numpy(lengths)).tolist()
            ids = logits.argmax(-1).cpu().numpy()
            for row, i in enumerate(chunk):
                by_index[i] = greedy_decode(ids[row, : int(frames[row])])
    model.train()
    hyps = [by_index[i] for i in range(len(items))]
    return word_error_rate([c.text for c in items], hyps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=7.0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--init",
        type=Path,
        help="start from this state dict (a best.pt of a run) instead of the pack's",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--peak-lr", type=float, default=5e-4)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--eval-every-s", type=float, default=45.0)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.manual_seed(args.seed)
    t0 = time.monotonic()
    groups = pack.by_group(pack.read(args.pack))
    missing = [g for g in ("synthetic", "background") if g not in groups]
    if missing or not any(g.startswith("val:") for g in groups):
        raise SystemExit(
            f"real_gpu: {args.pack} lacks {missing or 'validation'} clips (not a pack?)"
        )
    recipe = real_voices.RealRecipe()
    real = {
        name: [real_voices._Item(c.audio, c.text) for c in clips]
        for name, clips in groups.items()
        if not name.startswith("val:") and name not in ("synthetic", "background")
    }
    synthetic = data.Corpus(
        [data.Utterance(c.audio, c.text, "", "none", "synthetic") for c in groups["synthetic"]]
    )
    noises = [c.audio / (np.sqrt(np.mean(c.audio**2)) + 1e-9) for c in groups["background"]]
    evalsets = {k[4:]: v for k, v in groups.items() if k.startswith("val:")}
    mixture = real_voices.RealMixture(real, synthetic, noises, recipe)
    log.info(
        "pack read in %.0f s: %s", time.monotonic() - t0, {k: len(v) for k, v in groups.items()}
    )

    model = build_model(replace(CtcRecipe(), n_layers=args.layers))
    init = torch.load(args.init or args.pack / pack.INIT, map_location="cpu", weights_only=True)
    init = init.get("model", init)  # a run's best.pt holds the state under "model"
    model.load_state_dict(stack_layers(init, args.layers))
    model.to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.peak_lr, weight_decay=0.01)
    args.out.mkdir(parents=True, exist_ok=True)
    curve: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "evals": []}
    best = math.inf

    def evaluate(step: int) -> None:
        nonlocal best
        row: dict[str, float] = {"step": step, "s": round(time.monotonic() - start, 1)}
        for name, items in evalsets.items():
            row[f"{name}_wer"] = round(greedy_wer(model, items, args.device), 4)
        row["mean_wer"] = float(np.mean([v for k, v in row.items() if k.endswith("_wer")]))
        curve["evals"].append(row)
        log.info("eval %s", row)
        if row["mean_wer"] < best:
            best = row["mean_wer"]
            state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
            torch.save({"model": state, "step": step, "layers": args.layers}, args.out / "best.pt")
        (args.out / "curve.json").write_text(json.dumps(curve, indent=1))

    budget_s = args.minutes * 60.0
    start = time.monotonic()
    evaluate(0)
    start = time.monotonic()  # the budget is for training: the first evaluation is not in it
    last_eval, step = time.monotonic(), 0
    for values, mask, labels in _loader(mixture, args.batch_size, args.seed, args.workers):
        elapsed = time.monotonic() - start
        if elapsed >= budget_s:
            break
        warm = min(1.0, (step + 1) / args.warmup_steps)
        lr = args.peak_lr * warm * loop.cosine_floor(elapsed / budget_s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(args.device, dtype=torch.bfloat16):
            out = model(
                values.to(args.device, non_blocking=True),
                attention_mask=mask.to(args.device, non_blocking=True),
                labels=labels.to(args.device, non_blocking=True),
            )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        if step % 200 == 0:  # reading the loss waits for the GPU: only when it is logged
            log.info("step %d %.0fs loss %.3f lr %.2e", step, elapsed, float(out.loss), lr)
        if time.monotonic() - last_eval >= args.eval_every_s:
            evaluate(step)
            last_eval = time.monotonic()
    evaluate(step)
    curve["steps"] = step
    (args.out / "curve.json").write_text(json.dumps(curve, indent=1))
    log.info("done: %d steps in %.0f s, best mean WER %.4f", step, time.monotonic() - start, best)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Micro-batching: the batched-equals-alone invariant, scheduling order, and length alignment."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from onnx_graphs import write_bundle

from streamer.audio import AudioFormat
from streamer.buckets import LengthBuckets, is_priority, stream_buckets
from streamer.config import Config, EngineConfig
from streamer.decoding import OutputDecoder
from streamer.engine.encoder import Encoder
from streamer.engine.runner import Runner
from streamer.errors import ConfigError, ModelError
from streamer.protocol import Utterance
from streamer.segmenter import UtteranceReady
from streamer.streams.pipeline import StreamPipeline, stream_segmenter_config
from streamer.streams.sources import chunks, read_audio_file

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
ATOL = 1e-4
CLIPS = (
    "sent_harvard_spk1_snt1.wav",
    "sent_harvard_spk1_snt2.wav",
    "cmd_goforward.wav",
    "cmd_living_room_light.wav",
)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batcher-bundles")
    return {
        "ctc": write_bundle(root / "ctc"),
        "intent": write_bundle(root / "intent", task="classify", labels=(("on", "off"),)),
    }


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Four real-speech clips cut to one length (1 s), 16 kHz float32."""
    out = []
    for name in CLIPS:
        audio = read_audio_file(AUDIO / name)
        assert audio.rate_hz == 16000
        out.append(audio.samples[8000 : 8000 + 16000].copy())
    return out


def make_runner(paths: dict[str, Path], **engine: Any) -> Runner:
    config = EngineConfig(provider="cpu", intra_op_threads=1, **engine)
    encoders = {name: Encoder.load(name, p, config=config) for name, p in paths.items()}
    return Runner(encoders, config=config)


@pytest.fixture
def hold() -> Iterator[threading.Event]:
    """An event that releases a job parked on the runner's only worker."""
    event = threading.Event()
    yield event
    event.set()


class Blocker:
    """Stands in for an encoder whose run holds the worker until ``release`` is set."""

    manifest = SimpleNamespace(quantization="int8")  # runs alone, so it starts at once

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def run_batch(self, batch: np.ndarray, options: Any = None) -> dict[str, np.ndarray]:
        self.release.wait(30)
        return {"logits": np.zeros((batch.shape[0], 1, 1), np.float32)}


async def park_worker(runner: Runner, release: threading.Event) -> asyncio.Task[Any]:
    """Occupy the runner's single inference thread until ``release`` is set."""
    blocker: Any = Blocker(release)
    task = asyncio.create_task(runner.batcher.submit(blocker, np.zeros(1, np.float32)))
    await asyncio.sleep(0)
    assert runner.batcher._busy == 1
    return task


async def batched_and_alone(runner: Runner, model: str, inputs: list[np.ndarray]) -> list[Any]:
    """Run ``inputs`` concurrently (one batch) and each alone; return pairs of outputs."""
    together = await asyncio.gather(*(runner.infer(model, x) for x in inputs))
    assert [r.batch_size for r in together] == [len(inputs)] * len(inputs)
    alone = [runner.encoders[model].run(x) for x in inputs]
    return list(zip(together, alone, strict=True))


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


async def test_batched_equals_alone_on_tiny_graphs(
    bundles: dict[str, Path], clips: list[np.ndarray]
) -> None:
    """Equal-length utterances run as one batch give the outputs and decodings they get alone."""
    runner = make_runner(bundles)
    try:
        for model in ("ctc", "intent"):
            decoder = OutputDecoder(runner.encoders[model].manifest)
            for together, alone in await batched_and_alone(runner, model, clips):
                assert max_diff(together.outputs, alone) <= ATOL
                row = {k: v[0] for k, v in together.outputs.items()}
                solo = {k: v[0] for k, v in alone.items()}
                assert decoder.decode(row) == decoder.decode(solo)
    finally:
        runner.close()


@pytest.mark.export
async def test_batched_equals_alone_on_exported_sewd(
    tiny_ctc_bundle: Path, clips: list[np.ndarray]
) -> None:
    """On a really exported SEW-D bundle a batch of real speech matches each clip run alone."""
    runner = make_runner({"sewd": tiny_ctc_bundle})
    try:
        decoder = OutputDecoder(runner.encoders["sewd"].manifest)
        pairs = await batched_and_alone(runner, "sewd", clips)
        for together, alone in pairs:
            assert max_diff(together.outputs, alone) <= ATOL
            text = decoder.decode({"logits": together.outputs["logits"][0]}).transcript
            solo = decoder.decode({"logits": alone["logits"][0]}).transcript
            assert text is not None
            assert solo is not None
            assert text.text == solo.text
    finally:
        runner.close()


@pytest.mark.export
async def test_padding_would_break_the_invariant(
    tiny_ctc_bundle: Path, clips: list[np.ndarray]
) -> None:
    """Zero-padding changes SEW-D outputs beyond the tolerance (why lengths must match)."""
    encoder = make_runner({"sewd": tiny_ctc_bundle}).encoders["sewd"]
    clip = clips[0]
    exact = encoder.run(clip)["logits"]
    padded = encoder.run(np.pad(clip, (0, 1600)))["logits"][:, : exact.shape[1]]
    assert float(np.abs(exact - padded).max()) > ATOL


async def run_pipelines(
    bundles: dict[str, Path], n_streams: int
) -> tuple[list[list[Utterance]], Runner]:
    """Feed 14 s of real speech to ``n_streams`` pipelines in lockstep; return their utterances."""
    from streamer.app import build_services

    speech = read_audio_file(AUDIO / "stream_clean.wav").samples[: 16000 * 14]
    config = Config(engine=EngineConfig(provider="cpu", intra_op_threads=1, max_batch_s=30))
    services = build_services(config, bundles)
    models = tuple(bundles)
    events: list[list[Utterance]] = [[] for _ in range(n_streams)]
    pipes = [
        StreamPipeline(
            services,
            stream=f"s{i}",
            fmt=AudioFormat(16000, "pcm_f32le", 1),
            models=models,
            segmenter=stream_segmenter_config(services, models, {}),
            emit=lambda e, i=i: events[i].append(e) if isinstance(e, Utterance) else None,
        )
        for i in range(n_streams)
    ]
    for chunk in chunks(speech, 1600):
        for pipe in pipes:
            pipe.feed_samples(chunk)
        await asyncio.sleep(0)
    await asyncio.gather(*(p.finish() for p in pipes))
    services.runner.close()
    return events, services.runner


def summary(utterances: list[Utterance]) -> list[tuple[Any, ...]]:
    return [
        (
            u.start_ms,
            u.end_ms,
            u.transcript.text if u.transcript else None,
            u.intent.name if u.intent else None,
        )
        for u in utterances
    ]


async def test_pipelines_give_the_same_results_batched_or_alone(bundles: dict[str, Path]) -> None:
    """Four streams of real speech fed together (batched) emit what one stream emits alone."""
    solo, _ = await run_pipelines(bundles, 1)
    many, runner = await run_pipelines(bundles, 4)
    assert len(solo[0]) >= 2
    assert runner.batcher.stats.mean_batch > 1.0
    for stream in many:
        assert [(u.transcript, u.intent) for u in stream] == [
            (u.transcript, u.intent) for u in solo[0]
        ]
        assert summary(stream) == summary(solo[0])


@pytest.mark.export
async def test_sewd_pipelines_give_the_same_text_batched_or_alone(tiny_ctc_bundle: Path) -> None:
    """Through the pipeline, an exported SEW-D gives each batched stream the solo transcripts."""
    solo, _ = await run_pipelines({"sewd": tiny_ctc_bundle}, 1)
    many, runner = await run_pipelines({"sewd": tiny_ctc_bundle}, 3)
    assert len(solo[0]) >= 2
    assert runner.batcher.stats.mean_batch > 1.0
    for stream in many:
        assert summary(stream) == summary(solo[0])


async def test_priority_work_runs_first_when_saturated(
    bundles: dict[str, Path], hold: threading.Event
) -> None:
    """With the engine busy, an intent-bound utterance queued last runs before caption work."""
    runner = make_runner(bundles, max_batch=1)
    order: list[str] = []

    async def job(name: str, n: int, *, priority: bool) -> None:
        await runner.infer("ctc", np.full(n, 0.1, np.float32), priority=priority)
        order.append(name)

    try:
        parked = await park_worker(runner, hold)
        tasks = [
            asyncio.create_task(job(f"caption{i}", 16000 + i, priority=False)) for i in range(3)
        ]
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(job("intent", 16000, priority=True)))
        await asyncio.sleep(0.01)
        assert not any(task.done() for task in tasks)  # all four wait for the one worker
        hold.set()
        await parked
        await asyncio.gather(*tasks)
    finally:
        runner.close()
    assert order == ["intent", "caption0", "caption1", "caption2"]


async def test_old_caption_work_is_not_starved(
    bundles: dict[str, Path], hold: threading.Event
) -> None:
    """Caption work that waited longer than the boost runs before fresh intent work."""
    runner = make_runner(bundles, max_batch=1, priority_boost_ms=20.0)
    order: list[str] = []

    async def job(name: str, *, priority: bool) -> None:
        await runner.infer("ctc", np.full(8000, 0.1, np.float32), priority=priority)
        order.append(name)

    try:
        parked = await park_worker(runner, hold)
        old = asyncio.create_task(job("caption", priority=False))
        await asyncio.sleep(0.1)
        fresh = asyncio.create_task(job("intent", priority=True))
        await asyncio.sleep(0.01)
        hold.set()
        await parked
        await asyncio.gather(old, fresh)
    finally:
        runner.close()
    assert order == ["caption", "intent"]


async def test_busy_engine_gathers_queued_requests(
    bundles: dict[str, Path], hold: threading.Event
) -> None:
    """While the only worker is busy, equal-length requests gather and then run as one batch."""
    runner = make_runner(bundles, batch_wait_ms=0.0)
    try:
        parked = await park_worker(runner, hold)
        tasks = [
            asyncio.create_task(runner.infer("ctc", np.full(8000, 0.1 * k, np.float32)))
            for k in range(1, 6)
        ]
        await asyncio.sleep(0.01)
        hold.set()
        await parked
        results = await asyncio.gather(*tasks)
    finally:
        runner.close()
    assert [r.batch_size for r in results] == [5] * 5


async def test_batches_respect_size_and_audio_limits(bundles: dict[str, Path]) -> None:
    """max_batch caps a batch's members and max_batch_s its audio; long utterances run alone."""
    runner = make_runner(bundles, max_batch=3, max_batch_s=2.0)
    try:
        short = await asyncio.gather(
            *(runner.infer("ctc", np.full(8000, 0.1, np.float32)) for _ in range(4))
        )
        long = await asyncio.gather(
            *(runner.infer("ctc", np.full(24000, 0.1, np.float32)) for _ in range(2))
        )
    finally:
        runner.close()
    assert sorted(r.batch_size for r in short) == [1, 3, 3, 3]
    assert [r.batch_size for r in long] == [1, 1]


async def test_different_lengths_and_models_never_share_a_run(bundles: dict[str, Path]) -> None:
    """Requests of different lengths, or for different models, run separately."""
    runner = make_runner(bundles)
    try:
        results = await asyncio.gather(
            runner.infer("ctc", np.full(16000, 0.1, np.float32)),
            runner.infer("ctc", np.full(16320, 0.1, np.float32)),
            runner.infer("intent", np.full(16000, 0.1, np.float32)),
        )
    finally:
        runner.close()
    assert [r.batch_size for r in results] == [1, 1, 1]


async def test_int8_bundles_always_run_alone(bundles: dict[str, Path]) -> None:
    """A dynamically quantized bundle is never batched (its activation scale spans the batch)."""
    runner = make_runner(bundles)
    encoder = runner.encoders["ctc"]
    encoder.manifest = dataclasses.replace(encoder.manifest, quantization="int8")
    try:
        results = await asyncio.gather(
            *(runner.infer("ctc", np.full(8000, 0.1, np.float32)) for _ in range(3))
        )
    finally:
        runner.close()
    assert [r.batch_size for r in results] == [1, 1, 1]


async def test_cancelled_request_leaves_the_queue(
    bundles: dict[str, Path], hold: threading.Event
) -> None:
    """A queued request whose caller gave up is removed; the others still run."""
    runner = make_runner(bundles)
    try:
        parked = await park_worker(runner, hold)
        gone = asyncio.create_task(runner.infer("ctc", np.full(8000, 0.1, np.float32)))
        kept = asyncio.create_task(runner.infer("ctc", np.full(9600, 0.1, np.float32)))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        hold.set()
        await parked
        assert (await kept).outputs["logits"].shape[0] == 1
        stats = runner.batcher.stats
        assert (stats.runs, stats.requests) == (2, 2)  # the parked run and `kept`: `gone` never ran
    finally:
        runner.close()


async def test_close_fails_queued_requests(bundles: dict[str, Path], hold: threading.Event) -> None:
    """Closing the runner fails what is still queued with ModelError instead of hanging."""
    runner = make_runner(bundles)
    parked = await park_worker(runner, hold)
    queued = asyncio.create_task(runner.infer("ctc", np.full(8000, 0.1, np.float32)))
    await asyncio.sleep(0.01)
    runner.close()
    with pytest.raises(ModelError, match="shutting down"):
        await queued
    with pytest.raises(ModelError, match="shutting down"):
        await runner.infer("ctc", np.full(8000, 0.1, np.float32))
    hold.set()
    await parked


async def test_bad_input_fails_alone(bundles: dict[str, Path]) -> None:
    """An invalid utterance is refused before it can join (and fail) a batch."""
    runner = make_runner(bundles)
    bad = np.full(16000, 0.1, np.float32)
    bad[3] = np.inf
    try:
        results = await asyncio.gather(
            runner.infer("ctc", bad),
            runner.infer("ctc", np.full(16000, 0.1, np.float32)),
            return_exceptions=True,
        )
    finally:
        runner.close()
    assert isinstance(results[0], ModelError)
    assert not isinstance(results[1], BaseException)


def utterance(audio: np.ndarray, start: int, speech_end: int, *, forced: bool = False) -> Any:
    return UtteranceReady(
        audio=audio,
        speech_start_sample=start,
        speech_end_sample=speech_end,
        audio_start_sample=start,
        forced_cut=forced,
    )


def test_buckets_pad_with_zeros_up_to_the_bucket() -> None:
    """An utterance grows to the next bucket multiple with zeros after its own audio."""
    audio = np.arange(1, 10101, dtype=np.float32)
    buckets = LengthBuckets(bucket_samples=1000)
    original = utterance(audio, 2000, 11800)
    padded = buckets.align(original)
    assert padded.audio.shape[0] == 11000
    np.testing.assert_array_equal(padded.audio[:10100], audio)
    assert not padded.audio[10100:].any()
    assert (padded.speech_start_sample, padded.speech_end_sample) == (2000, 11800)
    assert original.audio.shape[0] == 10100  # a padded copy: the utterance itself is unchanged


def test_buckets_keep_forced_cuts_exact_multiples_and_bucket_zero() -> None:
    """A cut at the length limit, a length on the bucket, and bucket 0 leave audio as it is."""
    buckets = LengthBuckets(bucket_samples=1000)
    forced = utterance(np.ones(10100, np.float32), 0, 10100, forced=True)
    assert buckets.align(forced) is forced
    exact = utterance(np.ones(10000, np.float32), 0, 9000)
    assert buckets.align(exact) is exact
    short = utterance(np.ones(10100, np.float32), 0, 10000)
    assert LengthBuckets(bucket_samples=0).align(short) is short


def test_stream_buckets_and_priority_follow_config(bundles: dict[str, Path]) -> None:
    """Buckets come from engine.bucket_ms; a stream with a classify model is priority work."""
    assert stream_buckets(EngineConfig(bucket_ms=120), rate_hz=16000).bucket_samples == 1920
    ctc = Encoder.load("c", bundles["ctc"], config=EngineConfig()).manifest
    intent = Encoder.load("i", bundles["intent"], config=EngineConfig()).manifest
    assert not is_priority([ctc])
    assert is_priority([ctc, intent])


def test_engine_batch_settings_are_validated() -> None:
    """Non-positive batch limits and negative waits are configuration errors."""
    with pytest.raises(ConfigError, match="max_batch"):
        EngineConfig(max_batch=0)
    with pytest.raises(ConfigError, match="batch_wait_ms"):
        EngineConfig(batch_wait_ms=-1)

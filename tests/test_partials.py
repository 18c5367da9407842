"""Partial transcripts and eager results: the stable prefix, the eager cut, and the invariant that
the final ``utterance`` events are the same with them on or off (real bundles, real speech)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings, strategies as st
from live_server import collect, config, read_until, running, send_audio, start_msg, subscribe_msg
from scripted_vad import ScriptedVad, scripted_frames
from websockets.asyncio.client import connect

from streamer import overload, protocol as proto
from streamer.app import build_services
from streamer.audio import AudioFormat
from streamer.config import Config
from streamer.engine.bundles import resolve_models
from streamer.errors import ConfigError, PreemptedError
from streamer.partials import PartialsConfig, StableWords, partial_window
from streamer.results import Word
from streamer.segmenter import Segmenter, UtteranceReady
from streamer.segmenter_config import SegmenterConfig
from streamer.streams.live import same_cut
from streamer.streams.pipeline import StreamPipeline, stream_segmenter_config
from streamer.streams.services import Services, admit_partial
from streamer.streams.sources import read_audio_file
from streamer.vad import VadThresholds

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
EXPORTED = Path(__file__).resolve().parents[1] / "exported"

# ---------------------------------------------------------------- the stable prefix


def _word(text: str, start: float, end: float) -> Word:
    return Word(text, start, end, 0.9)


def test_two_agreeing_hypotheses_make_words_stable_but_not_the_guarded_tail() -> None:
    words = StableWords(guard_ms=300)
    first = words.update([_word("turn", 0, 200), _word("on", 250, 400)], window_end_ms=1000)
    assert not any(w.stable for w in first)  # one hypothesis agrees with nothing
    second = words.update(
        [_word("turn", 0, 210), _word("on", 250, 420), _word("the", 800, 900)],
        window_end_ms=1500,
    )
    assert [(w.word, w.stable) for w in second] == [("turn", True), ("on", True), ("the", False)]
    # "the" ends within guard_ms of the window's end: not stable though both agree on it
    third = words.update(
        [_word("turn", 0, 210), _word("on", 250, 420), _word("the", 800, 1300)],
        window_end_ms=1500,
    )
    assert [w.word for w in third if w.stable] == ["turn", "on"]
    assert words.revision == 3


def test_three_agreeing_confident_hypotheses_when_so_configured() -> None:
    words = StableWords(guard_ms=0, agree=3, min_confidence=0.65)
    hyp = [_word("turn", 0, 200), Word("of", 250, 400, 0.5), _word("lights", 500, 800)]
    assert not any(w.stable for w in words.update(hyp, window_end_ms=1000))
    assert not any(w.stable for w in words.update(hyp, window_end_ms=1500))  # two agree: not yet
    third = words.update(hyp, window_end_ms=2000)
    # "of" is too unsure to be stable, and what follows it waits for it
    assert [(w.word, w.stable) for w in third] == [("turn", True), ("of", False), ("lights", False)]
    sure = [_word("turn", 0, 200), _word("on", 250, 400), _word("lights", 500, 800)]
    words.update(sure, window_end_ms=2500)
    words.update(sure, window_end_ms=3000)
    assert [w.word for w in words.stable] == ["turn"]  # only two sure ones since "of"
    assert [w.word for w in words.update(sure, window_end_ms=3500) if w.stable] == [
        "turn",
        "on",
        "lights",
    ]


def test_short_words_wait_for_the_final_and_so_do_the_words_after_them() -> None:
    words = StableWords(guard_ms=0, agree=2, min_chars=2)
    hyp = [_word("erase", 0, 300), _word("g", 400, 500), _word("eight", 600, 900)]
    words.update(hyp, window_end_ms=1000)
    out = words.update(hyp, window_end_ms=1500)
    assert [(w.word, w.stable) for w in out] == [("erase", True), ("g", False), ("eight", False)]
    assert [w.word for w in words.update(hyp, window_end_ms=2000) if w.stable] == ["erase"]


def test_windows_that_differ_later_on_make_nothing_stable_when_so_configured() -> None:
    """Two windows agree on "cat" but read what follows differently: the model is unsure of
    this stretch, so "cat" waits (whole-window agreement); the words-alone rule takes it."""
    first = [_word("cat", 0, 300), _word("make", 400, 700), _word("it", 800, 900)]
    second = [_word("cat", 0, 300), _word("o", 400, 450), _word("it", 800, 900)]
    whole = StableWords(guard_ms=0, agree=2, min_chars=2, whole_window=True)
    words_alone = StableWords(guard_ms=0, agree=2, min_chars=2)
    for rule in (whole, words_alone):
        rule.update(first, window_end_ms=1000)
    assert not any(w.stable for w in whole.update(second, window_end_ms=1500))
    assert [w.word for w in words_alone.update(second, window_end_ms=1500) if w.stable] == ["cat"]
    # once the windows read the stretch alike, it is stable; a word only the newest window
    # heard ("now") need not agree yet
    whole.update(first, window_end_ms=1500)
    out = whole.update([*first, _word("now", 1300, 1500)], window_end_ms=2000)
    assert [(w.word, w.stable) for w in out] == [
        ("cat", True),
        ("make", True),
        ("it", True),
        ("now", False),
    ]


def test_words_the_acoustics_alone_do_not_read_wait_when_so_configured() -> None:
    """The windows agree on "alexa", but their greedy readings hold letters there: the language
    model pulled unknown speech onto a word it knows, so "alexa" waits (``stable_greedy``)."""
    hyp = [_word("alexa", 0, 400), _word("stop", 500, 800)]
    letters = [_word("i", 0, 100), _word("xtnl", 150, 400), _word("stop", 520, 790)]
    sure = [_word("alexa", 10, 390), _word("stop", 520, 790)]
    checked = StableWords(guard_ms=0, agree=2, greedy=True)
    unchecked = StableWords(guard_ms=0, agree=2)
    for rule in (checked, unchecked):
        rule.update(hyp, window_end_ms=1000, greedy_words=letters)
        rule.update(hyp, window_end_ms=1500, greedy_words=letters)
    assert checked.stable == []  # and "stop" waits for the word before it
    assert [w.word for w in unchecked.stable] == ["alexa", "stop"]
    # both windows read by the acoustics alone too: stable
    checked.update(hyp, window_end_ms=2000, greedy_words=sure)
    again = checked.update(hyp, window_end_ms=2500, greedy_words=sure)
    assert [w.word for w in again if w.stable] == [
        "alexa",
        "stop",
    ]


def test_a_window_that_rereads_stable_words_does_not_repeat_them() -> None:
    words = StableWords(guard_ms=0)
    words.update([_word("one", 0, 300), _word("two", 400, 700)], window_end_ms=2000)
    words.update([_word("one", 0, 300), _word("two", 400, 700)], window_end_ms=2000)
    assert [w.word for w in words.stable] == ["one", "two"]
    # the next window starts inside "two": it hears it again (slightly shifted), then "three"
    out = words.update([_word("two", 420, 690), _word("three", 900, 1200)], window_end_ms=2500)
    assert [w.word for w in out] == ["one", "two", "three"]


def test_partial_window_is_bounded_and_starts_before_the_last_stable_word() -> None:
    cfg = PartialsConfig(lookback_ms=1000, max_window_s=4.0)
    assert partial_window(now_ms=1500, stable_end_ms=None, config=cfg) == 0
    assert partial_window(now_ms=9000, stable_end_ms=None, config=cfg) == 5000
    assert partial_window(now_ms=9000, stable_end_ms=8500, config=cfg) == 7500


@pytest.mark.parametrize(
    "field",
    [
        {"interval_ms": 0},
        {"engine_share": 0},
        {"engine_share": 1.5},
        {"guard_ms": -1},
        {"agree": 1},
        {"stable_confidence": 1.5},
        {"stable_min_chars": 0},
    ],
)
def test_bad_partials_settings_are_refused_by_name(field: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="partials"):
        PartialsConfig(**field)


_VOCAB = ("a", "b", "c", "d")


@st.composite
def _hypotheses(draw: st.DrawFn) -> list[tuple[list[Word], float]]:
    """Successive windows over one utterance, each with a noisy hypothesis of its words."""
    out = []
    now = 0.0
    for _ in range(draw(st.integers(1, 12))):
        now += draw(st.sampled_from([100.0, 300.0, 500.0, 700.0]))
        start = max(0.0, now - draw(st.sampled_from([800.0, 1500.0, 4000.0])))
        t = start
        hyp = []
        while True:
            t += draw(st.integers(0, 300))
            length = draw(st.integers(50, 500))
            if t + length > now:
                break
            hyp.append(_word(draw(st.sampled_from(_VOCAB)), t, t + length))
            t += length
        out.append((hyp, now))
    return out


@settings(max_examples=300, deadline=None)
@given(_hypotheses(), st.sampled_from([0.0, 300.0]), st.sampled_from([2, 3]), st.booleans())
def test_stable_words_only_ever_grow(
    hyps: list[tuple[list[Word], float]], guard: float, agree: int, whole_window: bool
) -> None:
    """Property: whatever the hypotheses, a stable word is never changed nor withdrawn, each
    partial's stable words start with the previous partial's, and no stable word ends within the
    guard of the window that made it stable."""
    words = StableWords(guard_ms=guard, agree=agree, whole_window=whole_window)
    before: list[tuple[str, float, float]] = []
    for hyp, now in hyps:
        out = words.update(hyp, window_end_ms=now)
        stable = [(w.word, w.start_ms, w.end_ms) for w in out if w.stable]
        assert stable[: len(before)] == before
        assert all(w.stable for w in out[: len(stable)])  # stable words come first
        for w in stable[len(before) :]:
            assert w[2] <= now - guard
        before = stable


# ---------------------------------------------------------------- the eager cut


_THRESHOLDS = VadThresholds(start=0.7, keep=0.5, edge=0.3)


_SEG = SegmenterConfig(
    vad="webrtc",
    frame_ms=20,
    min_speech_ms=60,
    min_silence_ms=200,
    extra_silence_ms=200,
    extra_silence_after_s=1.0,
    max_unconfident_ms=600,
    pre_roll_ms=100,
    post_roll_ms=100,
    edge_extension_ms=100,
    max_utterance_s=3.0,
    min_utterance_samples=320,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.2, 0.4, 0.6, 0.9]), min_size=5, max_size=250),
    st.sampled_from([20, 100, 200]),
)
def test_the_eager_cut_is_what_silence_cuts(scores: list[float], silence_ms: int) -> None:
    """Property: whenever eager_cut returns an utterance, feeding silence from there (or
    flushing) yields exactly that utterance, audio included."""
    seg = Segmenter(_SEG, vad=ScriptedVad(_THRESHOLDS))
    n_eager = 0
    for score in scores:
        seg.feed(scripted_frames([score]))
        cut = seg.eager_cut(silence_ms)
        if cut is None:
            continue
        n_eager += 1
        for finish in ("silence", "flush"):
            twin = copy.deepcopy(seg)
            got = twin.flush() if finish == "flush" else []
            for _ in range(400):
                if got:
                    break
                got = twin.feed(scripted_frames([0.0]))
            assert len(got) == 1, finish
            assert isinstance(got[0], UtteranceReady), finish
            assert same_cut(got[0], cut), finish


def test_no_eager_cut_while_the_end_can_move_or_too_early() -> None:
    seg = Segmenter(_SEG, vad=ScriptedVad(_THRESHOLDS))
    seg.feed(scripted_frames([0.0] * 5 + [0.9] * 20))
    assert seg.eager_cut(100) is None  # still speaking
    seg.feed(scripted_frames([0.4] * 3))  # a weak tail (edge) that may still grow
    assert seg.eager_cut(20) is None
    seg.feed(scripted_frames([0.0] * 4))  # silence, but the post-roll (100 ms) is not heard yet
    assert seg.eager_cut(20) is None
    seg.feed(scripted_frames([0.0] * 2))
    cut = seg.eager_cut(100)
    assert cut is not None
    assert cut.speech_end_sample == (5 + 20 + 3) * 320


# ---------------------------------------------------------------- the pipeline, real bundles


def _shipped() -> dict[str, Path]:
    return resolve_models([], models_dir=EXPORTED)


def _services(**partials: Any) -> Services:
    config = Config(partials=PartialsConfig(**partials))
    return build_services(config, _shipped())


def _clip(name: str) -> npt.NDArray[np.float32]:
    path = AUDIO / name
    if not path.is_file():
        pytest.fail(f"shared speech recording missing: {path}")
    audio = read_audio_file(path)
    assert audio.rate_hz == 16000
    return audio.samples


async def _run(
    services: Services,
    stream: str,
    samples: npt.NDArray[np.float32],
    want: Sequence[str],
    *,
    chunk_ms: int = 20,
    pace_s: float = 0.001,
    rng: random.Random | None = None,
) -> tuple[list[proto.ServerEvent], StreamPipeline]:
    names = tuple(services.runner.encoders)
    events: list[proto.ServerEvent] = []
    pipe = StreamPipeline(
        services,
        stream=stream,
        fmt=AudioFormat(16000, "pcm_f32le", 1),
        models=names,
        segmenter=stream_segmenter_config(services, names, {}),
        emit=events.append,
        want=want,
    )
    step = 16 * chunk_ms
    for k in range(0, samples.size, step):
        pipe.feed_samples(samples[k : k + step])
        await asyncio.sleep(pace_s)
        if rng is not None and pipe.live is not None and rng.random() < 0.05:
            task = pipe.live._partial  # cancel a partial run at a random point
            if task is not None:
                task.cancel()
    await pipe.finish()
    return events, pipe


async def _replay(services: Services, samples: npt.NDArray[np.float32]) -> StreamPipeline:
    """Feed as bench/partials_rule.py does: each partial run awaited before more audio."""
    names = tuple(services.runner.encoders)
    pipe = StreamPipeline(
        services,
        stream="replay",
        fmt=AudioFormat(16000, "pcm_f32le", 1),
        models=names,
        segmenter=stream_segmenter_config(services, names, {}),
        want=("partial",),
    )
    assert pipe.live is not None
    for k in range(0, samples.size, 320):
        pipe.feed_samples(samples[k : k + 320])
        await pipe.live.partial_done()
    await pipe.finish()
    return pipe


async def test_a_replay_that_waits_for_each_partial_run_skips_none() -> None:
    services = _services(interval_ms=200, engine_share=1.0)
    try:
        pipe = await _replay(services, _clip("sent_harvard_spk1_snt1.wav"))
    finally:
        services.runner.close()
    assert pipe.live is not None
    counters = pipe.live.counters
    assert counters.partial_runs >= 5
    assert counters.partials_sent == counters.partial_runs
    assert counters.partials_skipped == counters.partials_preempted == 0
    assert counters.partials_dropped == 0


def _finals(events: Sequence[proto.ServerEvent]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        if isinstance(e, proto.Utterance | proto.Error):
            row = dataclasses.asdict(e)
            for timing in ("utterance_id", "latency_ms", "lag_ms"):
                row.pop(timing, None)
            out.append(row)
    return out


CLIPS = ("cmd_living_room_light.wav", "sent_harvard_spk1_snt1.wav", "digits_tidigits_2934z.wav")


async def test_finals_are_identical_with_live_results_on_or_off_under_contention() -> None:
    """The core invariant: several streams at once on one engine worker, partial runs cancelled
    at random points, eager results reused; every final equals the run without live results."""
    services = _services(interval_ms=100)
    try:
        streams = [(f"s{i}", _clip(name)) for i, name in enumerate(CLIPS * 2)]
        off = await asyncio.gather(*(_run(services, s, x, ()) for s, x in streams))
        rng = random.Random(7)
        on = await asyncio.gather(
            *(_run(services, s, x, ("partial", "eager"), rng=rng) for s, x in streams)
        )
    finally:
        services.runner.close()
    n_partials = n_reused = 0
    for (events_off, _), (events_on, pipe) in zip(off, on, strict=True):
        assert _finals(events_on) == _finals(events_off)
        assert _finals(events_off)  # every clip gives at least one result
        assert pipe.live is not None
        n_partials += pipe.live.counters.partials_sent
        n_reused += pipe.live.counters.eager_reused
    assert n_partials > 0
    assert n_reused > 0


async def test_live_events_keep_their_promises() -> None:
    """Per utterance: partial revisions rise, stable text only grows, no partial after the final,
    an eager result equals its final (timings aside), and every event names an open utterance."""
    services = _services(interval_ms=200)
    try:
        audio = np.concatenate([_clip(c) for c in CLIPS])
        events, pipe = await _run(services, "s", audio, ("partial", "eager"), pace_s=0.01)
    finally:
        services.runner.close()
    assert pipe.live is not None
    assert pipe.live.counters.partials_sent >= 3
    started: set[str] = set()
    finals: set[str] = set()
    last: dict[str, proto.Partial] = {}
    eager: dict[str, proto.Eager] = {}
    for e in events:
        if isinstance(e, proto.SpeechStarted):
            started.add(e.utterance_id)
        elif isinstance(e, proto.Partial):
            assert e.utterance_id in started
            assert e.utterance_id not in finals
            prev = last.get(e.utterance_id)
            if prev is not None:
                assert e.revision > prev.revision
                assert e.stable_text.startswith(prev.stable_text)
            assert e.text.startswith(e.stable_text)
            last[e.utterance_id] = e
        elif isinstance(e, proto.Eager):
            assert e.utterance_id not in finals
            eager[e.utterance_id] = e
        elif isinstance(e, proto.Utterance):
            finals.add(e.utterance_id)
            if e.utterance_id in eager:
                got = dataclasses.asdict(eager[e.utterance_id])
                want = dataclasses.asdict(e)
                for row in (got, want):
                    row.pop("latency_ms")
                    row.pop("lag_ms", None)
                assert got == want
    assert eager, "no eager result on three clips ending in silence"
    assert finals == started


async def test_partials_are_dropped_before_anything_else() -> None:
    """Step 0 of the overload order: while an utterance waits for the engine, or the engine's
    load is past shed_unwatched_at, no partial run starts, and the finals are still all there."""
    services = _services(interval_ms=100)
    try:
        assert admit_partial(services)
        cfg = services.config.engine
        held = int(cfg.max_pending_utterances * cfg.shed_unwatched_at)
        for _ in range(held):
            services.runner.reserve()
        assert not admit_partial(services)
        events, pipe = await _run(services, "s", _clip(CLIPS[0]), ("partial",))
        for _ in range(held):
            services.runner.release()
    finally:
        services.runner.close()
    assert pipe.live is not None
    assert pipe.live.counters.partials_dropped > 0
    assert pipe.live.counters.partial_runs == 0
    assert not any(isinstance(e, proto.Partial) for e in events)
    assert [type(e) for e in events if not isinstance(e, proto.SpeechStarted)] == [proto.Utterance]


def test_the_overload_rule_for_partials() -> None:
    ok = {"shed_at": 0.5, "utterance_waiting": False, "share": 0.1, "max_share": 0.3}
    assert overload.partial_allowed(0.0, **ok)
    assert not overload.partial_allowed(0.5, **ok)
    assert not overload.partial_allowed(0.0, **{**ok, "utterance_waiting": True})
    assert not overload.partial_allowed(0.0, **{**ok, "share": 0.3})


# ---------------------------------------------------------------- over a real WebSocket


async def test_live_events_over_websocket_reach_only_who_asked() -> None:
    """The ingest client that wants partials and eager gets them; a ``"*"`` subscriber does not;
    a subscriber that names ``partial`` does; a stream without a ctc model cannot want them."""
    cfg = dataclasses.replace(config(), partials=PartialsConfig(interval_ms=200))
    async with (
        running(cfg, _shipped()) as daemon,
        connect(f"{daemon.url}/v1/events") as everything,
        connect(f"{daemon.url}/v1/events") as live,
    ):
        await everything.send(subscribe_msg())
        await live.send(subscribe_msg(events=["partial"]))
        for sub in (everything, live):
            await read_until(sub, lambda ev: bool(ev) and ev[-1]["type"] == "subscribed")
        async with connect(f"{daemon.url}/v1/stream") as ws:
            await ws.send(start_msg("kitchen", want=["partial", "eager"]))
            await send_audio(ws, _clip(CLIPS[0]), chunk_ms=50, pace_s=0.025)
            await ws.send('{"type":"end"}')
            own = [e["type"] for e in await collect(ws)]
        seen = await read_until(everything, lambda ev: bool(ev) and ev[-1]["type"] == "ended")
        partials = await read_until(live, lambda ev: len(ev) >= 1)
        async with connect(f"{daemon.url}/v1/stream") as ws:
            await ws.send(start_msg("hall", models=["commands-intent"], want=["partial"]))
            refused = await collect(ws)
            assert ws.close_code == 1007
    assert "partial" in own
    assert "eager" in own
    assert own.index("eager") < own.index("utterance")
    assert not {"partial", "eager", "resumed"} & {e["type"] for e in seen}
    assert "utterance" in {e["type"] for e in seen}
    assert partials[0]["type"] == "partial"
    assert partials[0]["stream"] == "kitchen"
    assert refused[-1]["code"] == "bad_field"
    assert refused[-1]["field"] == "want"  # what the captions page matches on
    assert "ctc" in refused[-1]["message"]


async def test_an_utterance_stops_a_running_partial_run() -> None:
    """Pre-emption: with the only worker busy on background work, a request for an utterance
    stops that run (PreemptedError) and runs within a fraction of the background run's time."""
    services = _services()
    runner = services.runner
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000 * 20)).astype(np.float32)
    try:
        await runner.infer("commands-ctc", audio[:16000])  # warm up
        started = asyncio.get_running_loop().time()
        await runner.infer("commands-ctc", audio, background=True)
        whole_s = asyncio.get_running_loop().time() - started
        partial = asyncio.create_task(runner.infer("commands-ctc", audio, background=True))
        await asyncio.sleep(whole_s / 10)  # the background run is under way
        started = asyncio.get_running_loop().time()
        await runner.infer("commands-ctc", audio[:16000])
        waited_s = asyncio.get_running_loop().time() - started
        with pytest.raises(PreemptedError):
            await partial
    finally:
        runner.close()
    assert waited_s < whole_s / 2


async def test_eager_withdrawn_when_speech_resumes_and_ends_in_one_chunk() -> None:
    """Eager sent, then one chunk holds more speech and the silence that ends it: the client
    gets ``resumed`` for the eager result before the final (which is a fresh run)."""
    services = _services()
    names = tuple(services.runner.encoders)
    events: list[proto.ServerEvent] = []
    cfg = dataclasses.replace(
        stream_segmenter_config(services, names, {}), vad="webrtc", frame_ms=20
    )
    pipe = StreamPipeline(
        services,
        stream="s",
        fmt=AudioFormat(16000, "pcm_f32le", 1),
        models=names,
        segmenter=cfg,
        emit=events.append,
        want=("eager",),
    )
    scripted = Segmenter(_SEG, vad=ScriptedVad(_THRESHOLDS))
    pipe.segmenter = scripted
    assert pipe.live is not None
    pipe.live.segmenter = scripted
    try:
        pipe.feed_samples(scripted_frames([0.0] * 10 + [0.9] * 40))
        for _ in range(12):  # silence, frame by frame, until the eager result is sent
            pipe.feed_samples(scripted_frames([0.0]))
            await asyncio.sleep(0.05)
        assert [type(e) for e in events][-1] is proto.Eager
        pipe.feed_samples(scripted_frames([0.9] * 20 + [0.0] * 60))  # resumes and ends in one chunk
        await pipe.finish()
    finally:
        services.runner.close()
    kinds = [type(e) for e in events]
    assert kinds == [proto.SpeechStarted, proto.Eager, proto.Resumed, proto.Utterance], kinds
    eager, resumed, final = events[1], events[2], events[3]
    assert isinstance(eager, proto.Eager)
    assert isinstance(final, proto.Utterance)
    assert resumed.utterance_id == eager.utterance_id == final.utterance_id
    assert final.end_ms > eager.end_ms

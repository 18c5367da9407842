"""The shipped demo bundles (exported/commands-*) on real speech, through the runtime's own path.

These run the committed ONNX graphs with onnxruntime (no torch) via
``streamer.engine.encoder.Encoder`` and the runtime decoders. The expectations are ones the
shipped models get right with a margin (see each bundle's CARD.md), so a failure means a broken
bundle, export or runtime, not bad luck.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from live_server import collect, config, http_get, running, send_audio, speech, start_msg
from websockets.asyncio.client import connect

from streamer.config import EngineConfig
from streamer.ctc import CtcGreedyDecoder
from streamer.decoding import OutputDecoder
from streamer.engine.bundles import resolve_models
from streamer.engine.encoder import Encoder
from streamer.heads import IntentDecoder
from streamer_training.grammar import DIGIT_WORDS

REPO = Path(__file__).resolve().parents[1]
EXPORTED = REPO / "exported"
AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"

pytestmark = pytest.mark.skipif(not AUDIO.is_dir(), reason="shared test audio not present")


def _load(path: Path) -> np.ndarray:
    audio, rate_hz = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate_hz != 16000:
        mono = soxr.resample(mono, rate_hz, 16000)
    return np.ascontiguousarray(mono, dtype=np.float32)


@pytest.fixture(scope="module")
def ctc() -> tuple[Encoder, CtcGreedyDecoder]:
    encoder = Encoder.load(
        "commands-ctc",
        EXPORTED / "commands-ctc",
        config=EngineConfig(provider="cpu", intra_op_threads=1),
    )
    return encoder, CtcGreedyDecoder(encoder.manifest)


@pytest.fixture(scope="module")
def intent() -> tuple[Encoder, IntentDecoder]:
    encoder = Encoder.load(
        "commands-intent",
        EXPORTED / "commands-intent",
        config=EngineConfig(provider="cpu", intra_op_threads=1),
    )
    return encoder, IntentDecoder(encoder.manifest, abstain_below=0.0)


def _transcribe(model: tuple[Encoder, CtcGreedyDecoder], path: Path) -> str:
    encoder, decoder = model
    return decoder.decode(encoder.run(_load(path))["logits"][0]).text


def _classify(model: tuple[Encoder, IntentDecoder], path: Path) -> tuple[str, str]:
    encoder, decoder = model
    outputs = {name: value[0] for name, value in encoder.run(_load(path)).items()}
    result = decoder.decode(outputs)
    return result.intent.name, result.labels[0].name


def test_bundles_describe_themselves() -> None:
    """Every bundle ships a model card beside the graph and manifest."""
    for name in ("commands-ctc", "commands-intent", "commands-embed"):
        for file in ("model.onnx", "manifest.json", "CARD.md"):
            assert (EXPORTED / name / file).is_file(), f"{name}/{file}"
    assert (EXPORTED / "commands-ctc" / "lm.arpa").is_file()


def test_ctc_beam_search_with_the_grammar_lm_reads_fsdd_digits(
    ctc: tuple[Encoder, CtcGreedyDecoder],
) -> None:
    """The daemon's decoder for commands-ctc is the beam search with the shipped LM, and it
    spells nearly all shared FSDD digits exactly (110 of 120 with the 8-layer graph; greedy as
    many: the LM no longer has to repair them, as it did for the 4-layer graphs)."""
    encoder, greedy = ctc
    beam = OutputDecoder(encoder.manifest, bundle_dir=EXPORTED / "commands-ctc")
    assert beam.ctc_search.startswith("beam search with lm.arpa")
    files = sorted((AUDIO / "fsdd").glob("*.wav"))
    right = {"beam": 0, "greedy": 0}
    for path in files:
        logits = encoder.run(_load(path))["logits"][0]
        want = DIGIT_WORDS[int(path.name.split("_")[0])]
        found = beam.decode({"logits": logits}).transcript
        right["beam"] += found is not None and found.text == want
        right["greedy"] += greedy.decode(logits).text == want
    assert right["beam"] / len(files) >= 0.85, right
    assert right["beam"] >= right["greedy"], right


def test_intent_fsdd_digits(intent: tuple[Encoder, IntentDecoder]) -> None:
    """Nearly all shared FSDD single digits are classified as the digits intent, no room."""
    files = sorted((AUDIO / "fsdd").glob("*.wav"))
    results = [_classify(intent, f) for f in files]
    assert sum(r == ("digits", "none") for r in results) / len(files) >= 0.85


def test_ctc_frames_and_text(ctc: tuple[Encoder, CtcGreedyDecoder]) -> None:
    """The CTC graph yields one frame per 20 ms and a non-empty transcript for real speech."""
    encoder, decoder = ctc
    audio = _load(AUDIO / "cmd_living_room_light.wav")
    logits = encoder.run(audio)["logits"][0]
    stride = encoder.manifest.frame_stride_samples
    assert abs(logits.shape[0] - len(audio) // stride) <= 2
    assert decoder.decode(logits).text.strip()


def test_intent_real_digit_string(intent: tuple[Encoder, IntentDecoder]) -> None:
    """A real digit string (not FSDD: another speaker and channel) is the digits intent.

    The 8 s vosk digit string is not asserted: retrained models have flipped on it (digits,
    then set_timer); the card lists its result.
    """
    assert _classify(intent, AUDIO / "digits_tidigits_2934z.wav") == ("digits", "none")


def test_intent_real_command(intent: tuple[Encoder, IntentDecoder]) -> None:
    """The one real command recording inside the grammar: a human voice, not FSDD or a
    synthesizer. The shipped graph gets it with 0.85 and 0.98 through the daemon's path (the
    daemon, combining the garbled transcript's reading, says lights_on at 0.47: abstains)."""
    assert _classify(intent, AUDIO / "cmd_living_room_light.wav") == ("lights_on", "living_room")


async def test_daemon_serves_the_default_bundles_to_a_websocket_client() -> None:
    """As `streamer serve` with no --model (the word list always held, as
    ``decoder.grammar_max_gap_per_frame = inf`` sets it): a real client streams a real digit
    string and a real command; the digit string's transcript is held to the digits word list
    (the intent model is decoded first, though listed second), the command's is the beam
    search's (words the LM knows), and /readyz names the search."""
    models = resolve_models([], models_dir=EXPORTED, embed=False)  # no --intents
    assert list(models) == ["commands-ctc", "commands-intent"]
    lm_words = {
        line.split("\t")[1]
        for line in (EXPORTED / "commands-ctc" / "lm.arpa").read_text().splitlines()
        if line.count("\t") == 2
    }
    async with running(config(decoder={"grammar_max_gap_per_frame": math.inf}), models) as daemon:
        status, _, body = await http_get(daemon.port, "/readyz")
        assert status == 200
        decoders = {m["name"]: m["decoder"] for m in json.loads(body)["models"]}
        assert decoders["commands-ctc"].startswith("beam search with lm.arpa")
        assert decoders["commands-ctc"].endswith("held to a word list when the intent is digits")
        assert decoders["commands-intent"] is None
        heads = {m["name"]: m["transcript_head"] for m in json.loads(body)["models"]}
        assert heads == {"commands-ctc": None, "commands-intent": {"audio_weight": 0.5}}
        async with connect(f"{daemon.url}/v1/stream") as ws:
            await ws.send(start_msg())
            silence = np.zeros(16000, np.float32)
            audio = [
                speech("digits_tidigits_2934z.wav"),
                silence,
                speech("cmd_living_room_light.wav"),
            ]
            await send_audio(ws, np.concatenate(audio))
            await ws.send(json.dumps({"type": "end"}))
            events = await collect(ws)
    digits, command = [e for e in events if e["type"] == "utterance"]
    assert digits["intent"]["name"] == "digits"
    assert digits["transcript"]["grammar"] == "digits"
    assert digits["transcript"]["text"].split()
    assert set(digits["transcript"]["text"].split()) <= {*DIGIT_WORDS, "oh"}
    assert digits["latency_ms"]["decode"] >= 0
    assert command["intent"]["name"] == "lights_on"
    assert "grammar" not in command["transcript"]
    assert set(command["transcript"]["text"].split()) <= lm_words


async def test_decoder_grammars_off_gives_the_free_search() -> None:
    """`decoder.grammars = false`: the digit string's transcript is the free search's again."""
    models = resolve_models([], models_dir=EXPORTED, embed=False)
    async with running(config(decoder={"grammars": False}), models) as daemon:
        _, _, body = await http_get(daemon.port, "/readyz")
        decoders = {m["name"]: m["decoder"] for m in json.loads(body)["models"]}
        assert "word list" not in decoders["commands-ctc"]
        async with connect(f"{daemon.url}/v1/stream") as ws:
            await ws.send(start_msg())
            await send_audio(ws, speech("digits_tidigits_2934z.wav"))
            await ws.send(json.dumps({"type": "end"}))
            events = await collect(ws)
    (utterance,) = [e for e in events if e["type"] == "utterance"]
    assert utterance["intent"]["name"] == "digits"
    assert "grammar" not in utterance["transcript"]


@pytest.mark.parametrize("name", ["commands-ctc", "commands-intent", "commands-embed"])
def test_shipped_manifests_name_their_checkpoint_relative_to_the_repo(name: str) -> None:
    """The demo bundles record where they came from without one machine's directory layout."""
    source = json.loads((EXPORTED / name / "manifest.json").read_text())["source"]
    assert not Path(source["path"]).is_absolute(), source["path"]
    assert source["path"].startswith("runs/"), source["path"]


async def test_the_example_intents_file_runs_on_the_shipped_models() -> None:
    """`serve --intents examples/intents/home.toml` on the embedded bundles: commands-embed is
    served (and only then), its 384-d embedding is in the text embedder's space, and a real
    command gets one of the file's intents (which one is the model's accuracy, measured by
    bench/intents_zero_shot.py, not asserted here)."""
    home = REPO / "examples" / "intents" / "home.toml"
    models = resolve_models([], models_dir=EXPORTED, embed=True)
    assert list(models) == ["commands-ctc", "commands-embed", "commands-intent"]
    async with running(config(intents={"file": str(home)}), models) as daemon:
        assert daemon.services.decoders["commands-embed"].intents_name == "home"
        async with connect(f"{daemon.url}/v1/stream") as ws:
            await ws.send(start_msg())
            await send_audio(ws, speech("cmd_living_room_light.wav"))
            await ws.send(json.dumps({"type": "end"}))
            events = await collect(ws)
    (utterance,) = [e for e in events if e["type"] == "utterance"]
    intent = utterance["intent"]
    assert intent["intents"] == "home"
    names = {"lights_on", "lights_off", "set_timer", "weather", "play_music", "stop"}
    names |= {"volume_up", "volume_down", "time", "thermostat"}
    assert {intent["name"], *(a["name"] for a in intent["alternatives"])} <= names
    assert utterance["transcript"]["text"]  # the ctc transcript still arrives
    assert utterance["labels"][0]["name"] == "living_room"  # and the classifier's room

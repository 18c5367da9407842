"""The demo-model training pieces that are ours: grammar, augmentation, batching, distillation loss.

Training itself never runs in the suite (it takes an hour); these guard the parts a retrain relies
on: every sentence is a valid transcript with known labels, augmentation is reproducible from its
seed, the frame count formula matches the real conv stack, and the distillation loss behaves.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from streamer_training import (
    augment,
    card_sections,
    data,
    evaluate,
    grammar,
    loop,
    piper,
    synth,
    train_ctc,
    train_intent,
)

REPO = Path(__file__).resolve().parents[1]


def test_grammar_sentences_are_transcripts_with_known_labels() -> None:
    """Every intent yields normalised text over the CTC vocabulary and labels from the sets."""
    rng = random.Random(3)
    for intent in grammar.INTENTS:
        for _ in range(50):
            cmd = grammar.sample_command(rng, intent=intent)
            assert cmd.intent == intent
            assert cmd.room in grammar.ROOMS
            assert cmd.text == grammar.normalize_text(cmd.text) != ""
            assert 1 not in train_ctc.encode_text(cmd.text), cmd.text  # no <unk>


def test_grammar_rejects_unknown_intent() -> None:
    with pytest.raises(ValueError, match="unknown intent 'dance'"):
        grammar.sample_command(random.Random(0), intent="dance")


def test_number_words() -> None:
    assert grammar.number_words(25) == "twenty five"
    assert grammar.number_words(13) == "thirteen"
    assert grammar.number_words(40) == "forty"
    with pytest.raises(ValueError, match="out of range"):
        grammar.number_words(100)


def test_ctc_text_round_trip() -> None:
    """encode_text and greedy_decode invert each other on a frame path with blanks and repeats."""
    ids = train_ctc.encode_text("all off")
    path: list[int] = []
    for i in ids:
        path += [i, i, 0]  # repeats collapse, the blank separates the double "l" and "f"
    assert train_ctc.greedy_decode(np.array(path)) == "all off"


def test_augment_is_reproducible_and_bounded() -> None:
    """The same seed gives the same waveform; output stays within [-1, 1] and keeps its length."""
    tone = (0.5 * np.sin(np.arange(16000) * 0.05)).astype(np.float32)
    noise = [np.random.default_rng(1).standard_normal(8000).astype(np.float32)]
    first = augment.augment(tone, noise, np.random.default_rng(7), p_noise=1, p_reverb=1)
    second = augment.augment(tone, noise, np.random.default_rng(7), p_noise=1, p_reverb=1)
    other = augment.augment(tone, noise, np.random.default_rng(8), p_noise=1, p_reverb=1)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
    assert first.shape == tone.shape
    assert float(np.max(np.abs(first))) <= 1.0


def test_speed_scales_duration_and_pitch_together() -> None:
    """x1.1 speed: 10% shorter and every frequency 10% higher (a shifted virtual speaker)."""
    rate = augment.SAMPLE_RATE_HZ
    tone = np.sin(2 * np.pi * 200.0 * np.arange(rate) / rate).astype(np.float32)
    fast = augment.speed(tone, 1.1)
    assert fast.dtype == np.float32
    assert abs(len(fast) - rate / 1.1) <= 2
    spectrum = np.abs(np.fft.rfft(fast * np.hanning(len(fast))))
    peak_hz = np.argmax(spectrum) * rate / len(fast)
    assert peak_hz == pytest.approx(220.0, abs=2.0)


def test_pad_batch_normalises_each_clip_and_masks_padding() -> None:
    clips = [np.full(5, 3.0, np.float32) + np.arange(5, dtype=np.float32), np.ones(3, np.float32)]
    values, mask, lengths = loop.pad_batch(clips)
    assert values.shape == (2, 5)
    assert lengths.tolist() == [5, 3]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert abs(float(values[0].mean())) < 1e-6
    assert values[1, 3:].tolist() == [0.0, 0.0]


def test_conv_frames_matches_the_real_feature_extractor() -> None:
    """The frame-count formula used for pooling and the loss equals the model's own output."""
    torch = pytest.importorskip("torch", reason="torch is part of the export extra")
    model = train_ctc.build_model(train_ctc.CtcRecipe(hidden_size=32, n_layers=1, n_heads=2))
    model.eval()
    for n in (1200, 4321, 16000):
        with torch.inference_mode():
            logits = model(torch.zeros(1, n)).logits
        assert logits.shape[1] == loop.conv_frames(n, train_ctc.CONV_KERNEL, train_ctc.CONV_STRIDE)


def test_frame_kl_is_zero_for_the_teacher_and_ignores_padding() -> None:
    torch = pytest.importorskip("torch", reason="torch is part of the export extra")
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 6, 5, generator=gen)
    frames = torch.tensor([6, 4])
    assert float(loop.frame_kl(teacher, teacher, frames, 2.0)) == pytest.approx(0.0, abs=1e-6)
    student = teacher.clone()
    student[1, 4:] = torch.randn(2, 5, generator=gen)  # differs only past clip 2's end
    assert float(loop.frame_kl(student, teacher, frames, 2.0)) == pytest.approx(0.0, abs=1e-6)
    student[0, 0] = -teacher[0, 0]
    assert float(loop.frame_kl(student, teacher, frames, 2.0)) > 0.01


def test_bfloat16_autocast_only_where_the_cpu_does_it_natively() -> None:
    """Emulated bfloat16 is slower than float32: a recipe's ``bf16`` only asks for it."""
    torch = pytest.importorskip("torch", reason="torch is part of the export extra")
    with loop.autocast(True):
        assert torch.is_autocast_enabled("cpu") is loop.native_bf16()
        out = torch.nn.Linear(4, 4)(torch.ones(1, 4))
    assert out.dtype == (torch.bfloat16 if loop.native_bf16() else torch.float32)
    with loop.autocast(False):
        assert not torch.is_autocast_enabled("cpu")


def test_intent_schedule_restarts_three_times_and_keeps_the_cycles_before_each_restart() -> None:
    """Four cosine cycles; cutting the run at a restart leaves the earlier cycles as they were
    (so the teacher at ``piper_from`` is the model of a run that stopped there)."""
    recipe = train_intent.IntentRecipe()
    assert (recipe.steps, recipe.restarts) == (10800, (3800, 6800, 9600))
    r1, r2, r3 = recipe.restarts
    first = [
        loop.lr_at(s, peak=recipe.peak_lr, warmup=recipe.warmup_steps, total=r1) for s in range(r1)
    ]
    assert [loop.lr_cycles(recipe, s) for s in range(r1)] == first
    assert loop.lr_cycles(recipe, r1 - 1) == pytest.approx(0.05 * recipe.peak_lr, rel=1e-3)
    for start, end in ((r1, r2), (r2, r3), (r3, recipe.steps)):
        warm = start + recipe.restart_warmup_steps
        assert loop.lr_cycles(recipe, start) < loop.lr_cycles(recipe, warm - 1)
        assert loop.lr_cycles(recipe, warm) == pytest.approx(recipe.restart_peak_lr)
        assert loop.lr_cycles(recipe, end - 1) == pytest.approx(
            0.05 * recipe.restart_peak_lr, rel=1e-3
        )
    for cut in (r2, r3):
        shorter = train_intent.IntentRecipe(steps=cut)
        assert [loop.lr_cycles(shorter, s) for s in range(cut)] == [
            loop.lr_cycles(recipe, s) for s in range(cut)
        ]
    single = train_intent.IntentRecipe(steps=1000)
    assert loop.lr_cycles(single, 999) == pytest.approx(0.05 * single.peak_lr, rel=1e-3)


def test_rotating_the_heldout_speaker_moves_every_split_and_the_card() -> None:
    """``--heldout-speaker`` must take that speaker out of training and name it in the card."""
    clips = [
        data.FsddClip(digit, speaker, index, np.zeros(8, np.float32))
        for speaker in data.FSDD_SPEAKERS
        for index in (0, 3, 4, 49)
        for digit in (0, 7)
    ]
    for heldout in data.FSDD_SPEAKERS:
        train, test = data.fsdd_split(clips, heldout_speaker=heldout)
        assert {c.speaker for c in test} == {heldout}
        assert len(test) == 8  # all of its recordings, test indices included
        assert {c.speaker for c in train} == set(data.FSDD_SPEAKERS) - {heldout}
        assert all(c.index not in data.FSDD_TEST_INDICES for c in train)
        others = " and ".join(s for s in data.FSDD_SPEAKERS if s != heldout)
        text = card_sections.data_section(heldout)
        assert f"speakers {others}," in text
        assert f"Speaker\n  {heldout} is held out entirely." in text


def test_card_reports_each_rotation_run_against_the_target() -> None:
    def result(fp32: float, int8: float) -> dict[str, object]:
        return {
            v: {"sets": {"fsdd_heldout_digits": {"exact": x}}}
            for v, x in (("fp32", fp32), ("int8", int8))
        }

    assert "not measured" in card_sections.rotation_lines({}, "int8")[0]
    lines = card_sections.rotation_lines(
        {"jackson": result(0.9, 0.84), "george": result(0.8, 0.86)}, "int8"
    )
    assert lines[0].startswith("| Rotation: unseen FSDD speaker george")
    assert lines[0].endswith("| 80.0% | 86.0% | yes |")  # the shipped variant decides
    assert lines[1].endswith("| 90.0% | 84.0% | no |")
    assert "intent model" in lines[-1]


def test_piper_ids_follow_the_voice_map_with_pad_between_phonemes() -> None:
    """BOS PAD (phoneme PAD)* EOS; accents split off (NFD); unknown codepoints dropped."""
    id_map = {
        "^": [1],
        "$": [2],
        "_": [0],
        " ": [3],
        "t": [32],
        "u": [33],
        "\u02d0": [122],
        "e": [18],
    }
    id_map["\u0301"] = [140]  # combining acute accent
    assert piper.phoneme_ids("tu\u02d0", id_map) == [1, 0, 32, 0, 33, 0, 122, 0, 2]
    assert piper.phoneme_ids("é t", id_map) == [1, 0, 18, 0, 140, 0, 3, 0, 32, 0, 2]
    assert piper.phoneme_ids("t?", id_map) == [1, 0, 32, 0, 2]


def test_piper_phonemes_come_from_espeak_ipa() -> None:
    if not synth.espeak_available():
        pytest.fail("espeak-ng is missing: `make install` installs it")
    ipa = piper.phonemize("two. nine", espeak_voice="en-us")  # two clauses, two lines
    assert ipa.replace("\u02c8", "") == "tu\u02d0 na\u026an"  # stress marks aside


def test_mixture_draws_the_piper_share_and_marks_its_items() -> None:
    """A share p_piper of the non-FSDD draws is the Piper corpus; without it, none."""

    def corpus(source: str, n: int) -> data.Corpus:
        return data.Corpus(
            [
                data.Utterance(np.full(8000, 0.1, np.float32), "stop", "stop_music", "none", source)
                for _ in range(n)
            ]
        )

    espeak, voice = corpus("espeak:en-us+m1", 5), corpus(piper.VOICE_NAME, 5)
    mix = data.Mixture(espeak, [], [], p_fsdd=0.0, piper_corpus=voice, p_piper=0.4)
    rng = np.random.default_rng(0)
    sources = [mix.draw(rng).source for _ in range(500)]
    share = sources.count(piper.VOICE_NAME) / len(sources)
    assert 0.33 < share < 0.47
    plain = data.Mixture(espeak, [], [], p_fsdd=0.0)
    assert {plain.draw(rng).source for _ in range(50)} == {"espeak:en-us+m1"}
    # piper=False (the intent run before its last cycle) draws exactly what a run without the
    # corpus draws: same items, same augmentation, same generator state afterwards
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(20):
        off, none = mix.draw(a, piper=False), plain.draw(b)
        assert off.source == none.source
        np.testing.assert_array_equal(off.audio, none.audio)
    assert a.random() == b.random()


def test_intent_recipe_keeps_its_teacher_before_the_piper_cycle() -> None:
    """commands-ctc distils from the intent model as it was when the Piper voice came in."""
    recipe = train_intent.IntentRecipe()
    assert 0 < recipe.piper_from < recipe.steps
    assert recipe.piper_from in recipe.restarts  # the voice arrives with a fresh LR cycle
    assert loop.lr_cycles(recipe, recipe.piper_from - 1) < 0.1 * recipe.restart_peak_lr


def test_intent_training_keeps_the_teacher_checkpoint(tmp_path: Path) -> None:
    """A tiny real run: teacher.pt holds the step the Piper cycle began at; only later steps draw
    the voice.
    """
    import torch

    def corpus(source: str) -> data.Corpus:
        rng = np.random.default_rng(0)
        return data.Corpus(
            [
                data.Utterance(
                    (0.1 * rng.standard_normal(6400)).astype(np.float32),
                    "stop",
                    "stop_music",
                    "none",
                    source,
                )
                for _ in range(4)
            ]
        )

    voice = corpus(piper.VOICE_NAME)
    drawn: list[tuple[bool, str]] = []

    class Recording(data.Mixture):
        def draw(self, rng: np.random.Generator, **phase: bool) -> data.Utterance:
            utt = super().draw(rng, **phase)
            drawn.append((phase["piper"], utt.source))
            return utt

    mix = Recording(corpus("espeak:en-us"), [], [], p_fsdd=0.0, piper_corpus=voice, p_piper=1.0)
    recipe = train_intent.IntentRecipe(
        steps=4,
        batch_size=2,
        restarts=(2,),
        piper_from=2,
        warmup_steps=1,
        restart_warmup_steps=1,
        hidden_size=16,
        n_layers=1,
        n_heads=2,
        intermediate_size=32,
        digit_steps=0,
        short_steps=0,
        bf16=False,
    )
    train_intent.train(mix, voice.items[:1], work_dir=tmp_path, recipe=recipe, resume=False)

    assert train_intent.teacher_checkpoint(tmp_path) == tmp_path / train_intent.TEACHER
    teacher = torch.load(tmp_path / train_intent.TEACHER, weights_only=True)
    latest = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (teacher["step"], latest["step"]) == (2, 4)
    assert not torch.equal(teacher["model"]["heads.0.weight"], latest["model"]["heads.0.weight"])
    before = {source for piper_on, source in drawn if not piper_on}
    after = {source for piper_on, source in drawn if piper_on}
    assert before == {"espeak:en-us"}
    assert after == {piper.VOICE_NAME}
    (tmp_path / train_intent.TEACHER).unlink()
    assert train_intent.teacher_checkpoint(tmp_path) == tmp_path / "checkpoint.pt"


def test_train_demo_reports_a_missing_tool_in_one_line(tmp_path: Path) -> None:
    """No espeak-ng on PATH (or no Piper voice): one line naming what to install, exit 1, no
    traceback and no half-written corpus."""
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bin" / "train_demo"),
            "--stage",
            "data",
            "--data-dir",
            str(tmp_path / "data"),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
        check=False,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("train_demo: "), proc.stderr
    assert "espeak-ng" in lines[0] or "Piper voice" in lines[0], lines
    assert not list(tmp_path.glob("data/*.npz"))


@pytest.mark.skipif(
    not (REPO.parent / "shared" / "audio").is_dir(), reason="shared test audio not present"
)
def test_evaluation_holds_digits_to_the_word_list_as_the_daemon_does() -> None:
    """Given the intent model's labels, the daemon's transcripts of the shipped commands-ctc are
    held to its digits word list (digit words only); without labels they are the free search."""
    bundle_dir = REPO / "exported" / "commands-ctc"
    bundle = evaluate.Bundle(bundle_dir)
    files = sorted((REPO.parent / "shared" / "audio" / "fsdd").glob("*_lucas_*.wav"))[:6]
    items = [(evaluate.load_audio(f), grammar.DIGIT_WORDS[int(f.name[0])]) for f in files]
    held = evaluate.evaluate_ctc(bundle, {"d": items}, [], {"d": ["digits"] * len(items)})
    free = evaluate.evaluate_ctc(bundle, {"d": items}, [])
    for example in held["sets"]["d"]["examples"]:
        assert example["hyp"].split(), example
        assert set(example["hyp"].split()) <= {*grammar.DIGIT_WORDS, "oh"}, example
    assert [e["free"] for e in held["sets"]["d"]["examples"]] == [
        e["hyp"] for e in free["sets"]["d"]["examples"]
    ]
    assert free["sets"]["d"]["changed_by_grammar"] == 0
    assert card_sections.grammar_lines({"grammars": []}, held) == []
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    lines = card_sections.grammar_lines(manifest, held)
    assert lines[0] == "## Word list for digits"
    assert f"d {held['sets']['d']['changed_by_grammar']} of 6." in lines[-2]


@pytest.mark.skipif(
    not (REPO.parent / "shared" / "audio").is_dir(), reason="shared test audio not present"
)
def test_evaluation_passes_on_no_intent_where_the_daemon_abstains() -> None:
    """The label handed to the ctc evaluation is the daemon's: none below the threshold."""
    bundle = evaluate.Bundle(REPO / "exported" / "commands-intent")
    audio = evaluate.load_audio(REPO.parent / "shared" / "audio" / "digits_tidigits_2934z.wav")
    sets = {"s": [(audio, "digits", "none")]}
    real = [("digits_tidigits_2934z.wav", audio, "digits", "none")]
    for abstain_below, want in ((0.0, "digits"), (1.0, None)):
        res = evaluate.evaluate_intent(bundle, sets, real, abstain_below=abstain_below)
        assert res["daemon_intents"] == {"s": [want], "real": [want]}
        assert res["sets"]["s"]["intent_acc"] == 1.0  # accuracy counts the best label regardless

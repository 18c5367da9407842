"""Decoders: one utterance's model outputs to transcript, intent, value or embedding.

Decoding does no I/O; the one file read is a ctc bundle's language model, once, when its
:class:`CtcBeamDecoder` is built.

All arrays are *per utterance*: the graph's outputs with the batch axis removed (row ``i`` of a
batched run), and for CTC trimmed to the utterance's valid frames. Every input is checked
against the bundle manifest; a mismatch (wrong rank or size, non-float dtype, NaN or inf)
raises :class:`~streamer.errors.ModelError` naming the output, so one bad run becomes an error
event for that utterance. Results are the wire types of :mod:`streamer.protocol`; confidences
are rounded to 1e-4.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from streamer.errors import ConfigError, ModelError
from streamer.manifest import Manifest
from streamer.protocol import Alternative, Intent, Transcript, Word
from streamer.wordloop import WordLoop

log = logging.getLogger(__name__)

# Special tokens (``<s>``, ``</s>``, ``<unk>``, ``[PAD]``...) carry no text: dropped, and they
# neither split nor join words.
_SPECIAL_RE: Final = re.compile(r"<[^<>]*>|\[[^\[\]]*\]")
# SentencePiece marks a token that starts a new word with this prefix.
_WORD_START: Final = "\u2581"
_SKIP, _DELIM, _CHAR, _START = range(4)


def _array(
    value: npt.ArrayLike, what: str, shape: tuple[int | None, ...]
) -> npt.NDArray[np.float64]:
    """Return ``value`` as float64 after checking rank, fixed dims (None: any), dtype and NaN."""
    arr = np.asarray(value)
    if arr.ndim != len(shape) or any(
        n is not None and n != d for n, d in zip(shape, arr.shape, strict=True)
    ):
        want = ", ".join("*" if n is None else str(n) for n in shape)
        raise ModelError(f"{what} has shape {list(arr.shape)}, expected [{want}]")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ModelError(f"{what} has dtype {arr.dtype}, expected floating point")
    out = arr.astype(np.float64)
    if not np.isfinite(out).all():
        raise ModelError(f"{what} contains NaN or inf")
    return out


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e: npt.NDArray[np.float64] = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs: npt.NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return probs


def _word_loops(manifest: Manifest) -> dict[str, WordLoop]:
    """A ctc bundle's grammars, by intent."""
    if manifest.vocab is None or manifest.blank_id is None:
        raise ModelError("CTC decoding needs a vocab and blank_id")
    return {
        g.intent: WordLoop(
            g.words,
            manifest.vocab,
            blank_id=manifest.blank_id,
            delimiter=manifest.word_delimiter or "",
            word_penalty=g.word_penalty,
        )
        for g in manifest.grammars
    }


def _log_softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def _need_output(manifest: Manifest, name: str) -> int | str | None:
    """Return the last declared dim of output ``name``; raise if the bundle lacks it."""
    spec = manifest.output(name)
    if spec is None:
        raise ModelError(f"a {manifest.task} bundle needs an output named {name!r}")
    return spec.shape[-1] if spec.shape else None


class CtcGreedyDecoder:
    """Greedy CTC decoding: best token per frame, repeats collapsed, blanks dropped.

    Words split on the manifest's ``word_delimiter``, on whitespace tokens and before
    SentencePiece ``\u2581`` tokens. A word lasts from the first frame of its first token to the
    end of the last frame of its last token. Its confidence is the mean, over those tokens'
    frames, of the frame's top softmax probability. The mean is the default rather than the
    minimum because the minimum is decided by one frame at a token edge, where the character
    and blank share the mass even in a correct word; so it falls with word length and is noisy.
    ``aggregate="min"`` is there for callers who want the pessimistic figure. Blank frames inside
    a word are left out: their high blank probability says nothing about the word.
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        lowercase: bool = True,
        aggregate: Literal["mean", "min"] = "mean",
    ) -> None:
        """Prepare the token table of a ctc bundle.

        Raises:
            ModelError: the bundle is not ctc, or its ``logits`` output disagrees with the vocab.
        """
        if manifest.task != "ctc" or manifest.vocab is None:
            raise ModelError(f"CTC decoding needs a ctc bundle, got task {manifest.task!r}")
        n_vocab = _need_output(manifest, "logits")
        if isinstance(n_vocab, int) and n_vocab != len(manifest.vocab):
            raise ModelError(f"logits has {n_vocab} classes but the vocab {len(manifest.vocab)}")
        self.n_vocab = len(manifest.vocab)
        self.ms_per_frame = 1000.0 * manifest.frame_stride_samples / manifest.sample_rate
        self.aggregate = aggregate
        self._tokens = [
            _token(t, blank=i == manifest.blank_id, delimiter=manifest.word_delimiter)
            for i, t in enumerate(manifest.vocab)
        ]
        if lowercase:
            self._tokens = [(kind, text.lower()) for kind, text in self._tokens]

    def decode(self, logits: npt.ArrayLike, *, offset_ms: float = 0.0) -> Transcript:
        """Decode ``logits`` [frames, vocab] of one utterance.

        Args:
            logits: the utterance's CTC logits (or log-probabilities).
            offset_ms: stream time of the first input sample, added to every word time.

        Raises:
            ModelError: the shape, dtype or values are wrong.
        """
        x = _array(logits, "ctc logits", (None, self.n_vocab))
        return self.read_path(x, x.argmax(axis=1), offset_ms=offset_ms)

    def read_path(
        self,
        logits: npt.NDArray[np.float64],
        ids: npt.NDArray[np.int64],
        *,
        offset_ms: float = 0.0,
    ) -> Transcript:
        """Read the transcript of one token per frame (``ids``) out of checked ``logits``.

        The greedy path is the arg-max; a constrained search (:mod:`streamer.wordloop`) passes
        its own. A word's confidence is the mean softmax probability of the path's token over
        its frames (the top probability, for the greedy path).
        """
        if not len(ids):
            return Transcript(text="")
        p_top = _softmax(logits)[np.arange(len(ids)), ids]
        cuts = (np.flatnonzero(np.diff(ids)) + 1).tolist()
        words: list[Word] = []
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        for start, end in zip([0, *cuts], [*cuts, len(ids)], strict=True):
            kind, text = self._tokens[ids[start]]
            if kind == _SKIP:
                continue
            if kind != _CHAR and parts:
                words.append(self._word(parts, spans, p_top, offset_ms))
                parts, spans = [], []
            if kind != _DELIM:
                parts.append(text)
                spans.append((start, end))
        if parts:
            words.append(self._word(parts, spans, p_top, offset_ms))
        return Transcript(text=" ".join(w.word for w in words), words=tuple(words))

    def _word(
        self,
        parts: list[str],
        spans: list[tuple[int, int]],
        p_top: npt.NDArray[np.float64],
        offset_ms: float,
    ) -> Word:
        probs = np.concatenate([p_top[s:e] for s, e in spans])
        confidence = float(probs.min() if self.aggregate == "min" else probs.mean())
        return Word(
            word="".join(parts),
            start_ms=offset_ms + spans[0][0] * self.ms_per_frame,
            end_ms=offset_ms + spans[-1][1] * self.ms_per_frame,
            confidence=round(confidence, 4),
        )


CtcKind = Literal["auto", "greedy", "beam"]
# The beam search's label for special tokens other than the blank: special tokens carry no
# text, so these are cut out of its words afterwards (as the greedy decoder drops them).
_UNK_LABEL: Final = "\u2047"
_SPECIAL_LABEL_RE: Final = re.compile(f"{_UNK_LABEL}[0-9]+")


_KENLM_BANNER = re.compile(
    r"Loading the LM will be faster if you build a binary file\.|Reading .*|-+5-+10-.*|\*+"
)
"""The lines KenLM writes (from C++, straight to file descriptor 2) while it reads an ARPA file."""


@contextlib.contextmanager
def _without_kenlm_banner() -> Iterator[None]:
    """Keep KenLM's loading banner and progress bar out of stderr, logged at DEBUG instead.

    The banner bypasses ``sys.stderr`` and logging, so file descriptor 2 is pointed at a temporary
    file meanwhile; whatever else lands there (another thread's log line) is written back.
    """
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a daemon that closed it): nothing to keep clean
        yield
        return
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                if sys.stderr is not None:
                    sys.stderr.flush()
                os.dup2(saved, 2)
                capture.seek(0)
                banner: list[str] = []
                other: list[str] = []
                for line in capture.read().decode(errors="replace").splitlines():
                    if _KENLM_BANNER.fullmatch(line.strip()):
                        banner.append(line.strip())
                    elif line.strip():
                        other.append(line)
                if banner:
                    log.debug("KenLM: %s", " / ".join(banner))
                if other:
                    os.write(2, ("\n".join(other) + "\n").encode())
    finally:
        os.close(saved)


class BeamSearchUnavailableError(ModelError):
    """The beam search library cannot be imported or loaded on this machine."""


class CtcBeamDecoder:
    """CTC prefix beam search, fused with the bundle's word n-gram LM when it ships one.

    The search itself is the ``ctc-beam-decoder`` library (C++, KenLM): it scores character
    prefixes by the model and whole words by ``alpha`` x LM log-probability + ``beta`` per word,
    charging ``unk_score_offset`` for a prefix that begins no word the LM knows. Words and their
    frame spans come back from the library; a word's confidence is the mean top softmax
    probability over its frames, as in :class:`CtcGreedyDecoder`. Calls are serialised by a
    lock, so one decoder may be shared by threads.
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        lm_path: Path | None,
        beam_width: int = 64,
        token_min_logp: float = -8.0,
    ) -> None:
        """Build the search for a ctc bundle; ``lm_path`` is the bundle's ARPA file or None.

        Raises:
            ModelError: the bundle is not ctc, its LM is missing or unreadable, or the beam
                search library cannot be loaded on this machine.
        """
        if manifest.task != "ctc" or manifest.vocab is None or manifest.blank_id is None:
            raise ModelError(f"CTC decoding needs a ctc bundle, got task {manifest.task!r}")
        n_vocab = _need_output(manifest, "logits")
        if isinstance(n_vocab, int) and n_vocab != len(manifest.vocab):
            raise ModelError(f"logits has {n_vocab} classes but the vocab {len(manifest.vocab)}")
        try:
            import ctc_beam_decoder
        except (ImportError, OSError) as exc:
            raise BeamSearchUnavailableError(f"CTC beam search cannot load: {exc}") from None
        self.n_vocab = len(manifest.vocab)
        self.ms_per_frame = 1000.0 * manifest.frame_stride_samples / manifest.sample_rate
        self.beam_width = beam_width
        self.token_min_logp = token_min_logp
        labels = []
        for i, token in enumerate(manifest.vocab):
            kind, _ = _token(token, blank=i == manifest.blank_id, delimiter=None)
            if i == manifest.blank_id:
                labels.append("")
            elif token == manifest.word_delimiter:
                labels.append(" ")
            elif kind == _SKIP:  # unique labels: the library refuses duplicates
                labels.append(f"{_UNK_LABEL}{i}")
            else:
                labels.append(token.lower())
        lm = manifest.lm
        try:
            if lm_path is None or lm is None:
                self._search = ctc_beam_decoder.build_ctcdecoder(labels)
            else:
                with _without_kenlm_banner():
                    self._search = ctc_beam_decoder.build_ctcdecoder(
                        labels,
                        kenlm_model_path=str(lm_path),
                        alpha=lm.alpha,
                        beta=lm.beta,
                        unk_score_offset=lm.unk_score_offset,
                    )
        except (OSError, ValueError, RuntimeError) as exc:
            where = f" with {lm_path}" if lm_path is not None else ""
            raise ModelError(f"cannot build the CTC beam search{where}: {exc}") from None
        self._lock = threading.Lock()

    def decode(self, logits: npt.ArrayLike, *, offset_ms: float = 0.0) -> Transcript:
        """Decode ``logits`` [frames, vocab] of one utterance (as :meth:`CtcGreedyDecoder.decode`).

        Raises:
            ModelError: the shape, dtype or values are wrong.
        """
        x = _array(logits, "ctc logits", (None, self.n_vocab))
        if not len(x):
            return Transcript(text="")
        log_probs = x - x.max(axis=1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
        p_top = np.exp(log_probs.max(axis=1))
        with self._lock:
            beams = self._search.decode_beams(
                log_probs.astype(np.float32),
                beam_width=self.beam_width,
                token_min_logp=self.token_min_logp,
                prune_history=True,
            )
        if not beams:
            return Transcript(text="")
        words = tuple(
            Word(
                word=word,
                start_ms=offset_ms + start * self.ms_per_frame,
                end_ms=offset_ms + end * self.ms_per_frame,
                confidence=round(float(p_top[start : max(end, start + 1)].mean()), 4),
            )
            for raw, (start, end) in beams[0][2]
            if (word := _SPECIAL_LABEL_RE.sub("", raw))
        )
        return Transcript(text=" ".join(w.word for w in words), words=words)


def _token(token: str, *, blank: bool, delimiter: str | None) -> tuple[int, str]:
    """Classify one vocab entry as skipped, word delimiter, character(s), or word start."""
    if blank or not token or _SPECIAL_RE.fullmatch(token):
        return _SKIP, ""
    if token == delimiter or not token.strip(_WORD_START).strip():
        return _DELIM, ""
    if token.startswith(_WORD_START):
        return _START, token[1:]
    return _CHAR, token


def _ctc_decoder(
    manifest: Manifest,
    bundle_dir: Path | None,
    *,
    kind: CtcKind,
    beam_width: int,
    token_min_logp: float,
) -> tuple[CtcGreedyDecoder | CtcBeamDecoder, str]:
    """Build the CTC search ``kind`` asks for; return it with a sentence saying which and why."""
    if kind not in ("auto", "greedy", "beam"):
        raise ConfigError(f"decoder.ctc must be auto, greedy or beam, got {kind!r}")
    if beam_width < 1:
        raise ConfigError(f"decoder.beam_width must be >= 1, got {beam_width}")
    lm_path = None
    if manifest.lm is not None and bundle_dir is not None:
        lm_path = bundle_dir / manifest.lm.file
        if not lm_path.is_file():
            raise ModelError(f"the bundle's language model {lm_path} is missing")
    if kind == "greedy" or (kind == "auto" and lm_path is None):
        why = (
            "asked for"
            if kind == "greedy"
            else "the bundle ships no language model"
            if manifest.lm is None
            else f"no bundle folder to read {manifest.lm.file} from"
        )
        return CtcGreedyDecoder(manifest), f"greedy ({why})"
    try:
        beam = CtcBeamDecoder(
            manifest, lm_path=lm_path, beam_width=beam_width, token_min_logp=token_min_logp
        )
    except BeamSearchUnavailableError as exc:
        if kind == "beam":
            raise
        log.warning("%s; decoding greedily", exc)
        return CtcGreedyDecoder(manifest), f"greedy ({exc})"
    with_lm = f"with {lm_path.name}" if lm_path is not None else "without a language model"
    return beam, f"beam search {with_lm}, width {beam_width}"


@dataclass(frozen=True)
class Classification:
    """A classifier's result: the first label set is the intent, the others are labels."""

    intent: Intent
    labels: tuple[Intent, ...] = ()


class IntentDecoder:
    """Softmax n-best per label set, with ``abstain`` set when the best is below a threshold.

    ``name`` is always the most likely label, even when abstaining; ``alternatives`` are the
    next ``n_best - 1`` labels, most likely first (ties keep label order).
    """

    def __init__(self, manifest: Manifest, *, abstain_below: float = 0.5, n_best: int = 3) -> None:
        """Prepare for a classify bundle.

        Args:
            manifest: the bundle's manifest.
            abstain_below: abstain when the best probability is below this (0 never abstains).
            n_best: how many labels to report per set, the best included.

        Raises:
            ModelError: the bundle is not classify, or an output disagrees with its labels.
            ConfigError: abstain_below is outside [0, 1] or n_best is below 1.
        """
        if manifest.task != "classify":
            raise ModelError(f"intent decoding needs a classify bundle, got {manifest.task!r}")
        if not 0.0 <= abstain_below <= 1.0 or n_best < 1:
            raise ConfigError("abstain_below must be in [0, 1] and n_best at least 1")
        self.abstain_below = abstain_below
        self.n_best = n_best
        self.label_sets = manifest.label_sets
        single = len(self.label_sets) == 1 and manifest.output("logits") is not None
        self.outputs = (
            ["logits"] if single else [f"logits_{i}" for i in range(len(self.label_sets))]
        )
        for name, labels in zip(self.outputs, self.label_sets, strict=True):
            n = _need_output(manifest, name)
            if isinstance(n, int) and n != len(labels):
                raise ModelError(f"output {name!r} has {n} classes but {len(labels)} labels")

    def decode(self, outputs: Mapping[str, npt.ArrayLike]) -> Classification:
        """Decode one utterance's classifier outputs (``logits`` or ``logits_0``, ``logits_1``...).

        Raises:
            ModelError: an output is missing or its shape, dtype or values are wrong.
        """
        results = [
            self.choose(_get(outputs, name), labels)
            for name, labels in zip(self.outputs, self.label_sets, strict=True)
        ]
        return Classification(intent=results[0], labels=tuple(results[1:]))

    def choose(self, logits: npt.ArrayLike, labels: Sequence[str]) -> Intent:
        """Return the n-best of one label set from its logits [n_labels]."""
        probs = _softmax(_array(logits, "classifier logits", (len(labels),)))
        order = np.argsort(-probs, kind="stable")[: self.n_best].tolist()
        best = float(probs[order[0]])
        return Intent(
            name=labels[order[0]],
            confidence=round(best, 4),
            alternatives=tuple(
                Alternative(labels[i], round(float(probs[i]), 4)) for i in order[1:]
            ),
            abstain=best < self.abstain_below,
        )


def _get(outputs: Mapping[str, npt.ArrayLike], name: str) -> npt.ArrayLike:
    if name not in outputs:
        raise ModelError(f"the run returned no {name!r} output")
    return outputs[name]


def decode_value(value: npt.ArrayLike) -> float:
    """Return a regression output (shape [] or [1]) as a float.

    Raises:
        ModelError: not a single finite float.
    """
    arr = np.asarray(value)
    return float(_array(arr.reshape(-1) if arr.ndim == 0 else arr, "value", (1,))[0])


def decode_embedding(
    value: npt.ArrayLike, *, dim: int | None = None, normalize: bool = False
) -> tuple[float, ...]:
    """Return an embedding [dim] as floats: as the graph emits it, or L2-normalized.

    Normalizing makes cosine similarity a dot product; a zero vector stays zero. Values keep
    float32 precision and are given as the shortest decimal that reads back as that float32, which
    about halves the JSON.

    Raises:
        ModelError: not a finite float vector of ``dim`` entries.
    """
    vec = _array(value, "embedding", (dim,))
    norm = float(np.linalg.norm(vec))
    if normalize and norm > 0.0:
        vec = vec / norm
    return tuple(float(str(v)) for v in vec.astype(np.float32))


@dataclass(frozen=True)
class Decoded:
    """Everything decoded from one bundle's run on one utterance (None: not produced)."""

    transcript: Transcript | None = None
    intent: Intent | None = None
    labels: tuple[Intent, ...] | None = None
    value: float | None = None
    embedding: tuple[float, ...] | None = None

    def merge(self, other: Decoded) -> Decoded:
        """Combine the results of two bundles on the same utterance; ``self`` wins a clash."""
        return Decoded(
            transcript=self.transcript or other.transcript,
            intent=self.intent or other.intent,
            labels=self.labels or other.labels,
            value=other.value if self.value is None else self.value,
            embedding=self.embedding or other.embedding,
        )


class OutputDecoder:
    """Decodes whatever a bundle's task produces; built once per bundle from its manifest.

    ctc → ``transcript``; classify → ``intent`` (plus ``labels`` for multi-label heads);
    regress → ``value``; embed → ``embedding``. Any bundle with an ``embedding`` output also
    yields the embedding when asked (``want_embedding``).
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        abstain_below: float = 0.5,
        n_best: int = 3,
        normalize_embedding: bool = False,
        bundle_dir: Path | None = None,
        ctc: CtcKind = "auto",
        beam_width: int = 64,
        beam_token_min_logp: float = -8.0,
        grammars: bool = True,
    ) -> None:
        """Check the manifest and build the task's decoder.

        ``abstain_below`` and ``n_best`` are as in :class:`IntentDecoder`. For a ctc bundle,
        ``ctc`` picks the search: ``"auto"`` is beam search with the bundle's LM (found in
        ``bundle_dir``) when it ships one, falling back to greedy with a logged reason when the
        beam search library cannot load here, else greedy; ``"beam"`` insists on beam search
        (with the LM if there is one); ``"greedy"`` never searches. :attr:`ctc_search` says
        which one was built and why. With ``grammars`` a ctc bundle's grammars (manifest) are
        built, and :meth:`decode` holds an utterance to the one for its intent; the searched
        intents are named at the end of :attr:`ctc_search`.

        Raises:
            ModelError: the manifest's outputs do not fit its task, the bundle's LM file is
                missing, or ``ctc="beam"`` and beam search is unavailable.
            ConfigError: an option is out of range.
        """
        self.task = manifest.task
        self.ctc: CtcGreedyDecoder | CtcBeamDecoder | None = None
        self.ctc_search = ""
        self.grammars: dict[str, WordLoop] = {}
        self._reader: CtcGreedyDecoder | None = None
        if manifest.task == "ctc":
            self.ctc, self.ctc_search = _ctc_decoder(
                manifest,
                bundle_dir,
                kind=ctc,
                beam_width=beam_width,
                token_min_logp=beam_token_min_logp,
            )
            # reads a word-list path: the free search itself when that is greedy
            self._reader = (
                self.ctc if isinstance(self.ctc, CtcGreedyDecoder) else CtcGreedyDecoder(manifest)
            )
            self.grammars = _word_loops(manifest) if grammars else {}
            if self.grammars:
                self.ctc_search += (
                    f"; held to a word list when the intent is {' or '.join(self.grammars)}"
                )
        self.intent = (
            IntentDecoder(manifest, abstain_below=abstain_below, n_best=n_best)
            if manifest.task == "classify"
            else None
        )
        if manifest.task == "regress":
            _need_output(manifest, "value")
        if manifest.task == "embed":
            _need_output(manifest, "embedding")
        self.has_embedding = manifest.output("embedding") is not None
        self.embedding_dim = manifest.embedding_dim
        self.normalize_embedding = normalize_embedding

    def decode(
        self,
        outputs: Mapping[str, npt.ArrayLike],
        *,
        offset_ms: float = 0.0,
        want_embedding: bool = False,
        intent: Intent | None = None,
    ) -> Decoded:
        """Decode one utterance's outputs (see the module docstring for their shapes).

        Args:
            outputs: output name -> array for this utterance.
            offset_ms: stream time of the utterance's first input sample (CTC word times).
            want_embedding: also return the embedding, if the bundle has one.
            intent: what a classify bundle said about the same utterance; a ctc bundle with a
                grammar for it (and the intent not abstained) searches only that grammar.

        Raises:
            ModelError: an output is missing or malformed.
        """
        result = Decoded()
        if self.ctc is not None:
            result = Decoded(
                transcript=self.transcribe(_get(outputs, "logits"), offset_ms, intent=intent)
            )
        elif self.intent is not None:
            found = self.intent.decode(outputs)
            result = Decoded(intent=found.intent, labels=found.labels or None)
        elif self.task == "regress":
            result = Decoded(value=decode_value(_get(outputs, "value")))
        if self.has_embedding and (want_embedding or self.task == "embed"):
            vector = decode_embedding(
                _get(outputs, "embedding"),
                dim=self.embedding_dim,
                normalize=self.normalize_embedding,
            )
            result = Decoded(result.transcript, result.intent, result.labels, result.value, vector)
        return result

    def grammar_for(self, intent: Intent | None) -> str | None:
        """The intent whose grammar decodes an utterance with ``intent``, or None (free search)."""
        if intent is None or intent.abstain or intent.name not in self.grammars:
            return None
        return intent.name

    def transcribe(
        self, logits: npt.ArrayLike, offset_ms: float, *, intent: Intent | None = None
    ) -> Transcript:
        """A ctc bundle's transcript: the intent's grammar when it has one, else the free search.

        Raises:
            ModelError: this is not a ctc bundle, or ``logits`` is malformed.
        """
        if self.ctc is None or self._reader is None:
            raise ModelError(f"a {self.task} bundle has no transcript")
        name = self.grammar_for(intent)
        if name is None:
            return self.ctc.decode(logits, offset_ms=offset_ms)
        x = _array(logits, "ctc logits", (None, self._reader.n_vocab))
        path = self.grammars[name].best_path(_log_softmax(x))
        found = self._reader.read_path(x, path, offset_ms=offset_ms)
        return Transcript(text=found.text, words=found.words, grammar=name)

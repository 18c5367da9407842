"""CTC heads: one utterance's logits to a transcript, greedily or by beam search with an LM.

:class:`CtcGreedyDecoder` reads the best token per frame; :class:`CtcBeamDecoder` runs a prefix
beam search fused with the bundle's word n-gram LM (the one file read of decoding, once, when the
search is built); :func:`build_search` picks one of them for a bundle and says why. Logits are one
utterance's ``[frames, vocab]``, trimmed to its valid frames, checked as in
:mod:`streamer.outputs`. Results are the wire types of :mod:`streamer.protocol`; confidences are
rounded to 1e-4.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from streamer.errors import ConfigError, ModelError
from streamer.manifest import Manifest
from streamer.outputs import checked, declared_size, log_softmax, softmax
from streamer.protocol import Transcript, Word

log = logging.getLogger(__name__)

# Special tokens (``<s>``, ``</s>``, ``<unk>``, ``[PAD]``...) carry no text: dropped, and they
# neither split nor join words.
_SPECIAL_RE: Final = re.compile(r"<[^<>]*>|\[[^\[\]]*\]")
# SentencePiece marks a token that starts a new word with this prefix.
_WORD_START: Final = "\u2581"
_SKIP, _DELIM, _CHAR, _START = range(4)


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
        n_vocab = declared_size(manifest, "logits")
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
        x = checked(logits, "ctc logits", (None, self.n_vocab))
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
        p_top = softmax(logits)[np.arange(len(ids)), ids]
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
        n_vocab = declared_size(manifest, "logits")
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
        x = checked(logits, "ctc logits", (None, self.n_vocab))
        if not len(x):
            return Transcript(text="")
        log_probs = log_softmax(x)
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


def build_search(
    manifest: Manifest,
    bundle_dir: Path | None,
    *,
    kind: CtcKind,
    beam_width: int,
    token_min_logp: float,
) -> tuple[CtcGreedyDecoder | CtcBeamDecoder, str]:
    """Build the CTC search ``kind`` asks for; return it with a sentence saying which and why.

    Args:
        manifest: a ctc bundle's manifest.
        bundle_dir: the bundle folder its LM file is read from (None: no LM can be read).
        kind: ``"auto"`` is beam search with the bundle's LM when it ships one (greedy, with a
            logged reason, when the beam search library cannot load here), else greedy;
            ``"beam"`` insists on beam search, with the LM if there is one; ``"greedy"`` never
            searches.
        beam_width: beams kept per frame.
        token_min_logp: tokens below this log-probability are not expanded.

    Raises:
        ConfigError: ``kind`` or ``beam_width`` is out of range.
        ModelError: the bundle's LM file is missing, or ``kind="beam"`` and beam search is
            unavailable.
    """
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

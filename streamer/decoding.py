"""The decoding of one utterance: each bundle's head, then the rule that combines them.

:class:`OutputDecoder` decodes whatever one bundle's task produces (:mod:`streamer.ctc` for a
transcript, :mod:`streamer.heads` for intent, labels, value and embedding).
:func:`decode_utterance` is the rule across the bundles a stream runs: classifiers first, then
every CTC transcript held to the word list of the intent they gave, then the results merged.
With a context (:mod:`streamer.contexts`) the rule changes in one place: the first ctc bundle's
output is understood in the context, which gives the ``intent`` (with slots), and transcripts
are read freely. A classifier that ships a transcript head (:mod:`streamer.text_intent`) has
its intent combined with what the head reads from the transcript. With an intents file
(:mod:`streamer.intents`), the bundle it matches on turns its embedding into the ``intent``
(nearest intents by cosine), ahead of any classifier's.

Decoding does no I/O; the files read are a ctc bundle's language model, once, when its
:class:`~streamer.ctc.CtcBeamDecoder` is built, and a classifier's transcript head, once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy.typing as npt

from streamer.contexts import (
    DEFAULT_BLANK_PENALTY,
    DEFAULT_MAX_GAP_PER_FRAME,
    Context,
    Understanding,
)
from streamer.ctc import CtcBeamDecoder, CtcGreedyDecoder, CtcKind, build_search
from streamer.errors import ModelError
from streamer.heads import IntentDecoder, decode_embedding, decode_value
from streamer.intent_matching import IntentMatcher
from streamer.manifest import Manifest
from streamer.outputs import checked, declared_size, log_softmax, take
from streamer.protocol import Alternative, Intent, Transcript
from streamer.text_intent import TextIntentHead, combined_intent
from streamer.wordloop import WordLoop, word_list_gap


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
        grammar_max_gap_per_frame: float = math.inf,
        text_head: bool = True,
    ) -> None:
        """Check the manifest and build the task's decoder.

        ``abstain_below`` and ``n_best`` are as in :class:`IntentDecoder`. For a ctc bundle,
        ``ctc`` picks the search: ``"auto"`` is beam search with the bundle's LM (found in
        ``bundle_dir``) when it ships one, falling back to greedy with a logged reason when the
        beam search library cannot load here, else greedy; ``"beam"`` insists on beam search
        (with the LM if there is one); ``"greedy"`` never searches. :attr:`ctc_search` says
        which one was built and why. With ``grammars`` a ctc bundle's grammars (manifest) are
        built, and :meth:`decode` holds an utterance to the one for its intent; the searched
        intents are named at the end of :attr:`ctc_search`, unless the word list's best path
        scores more than ``grammar_max_gap_per_frame`` nats per emitting frame below the free
        path (then the utterance is read freely: it is not one of the list's words). With
        ``text_head`` a classify bundle's transcript head (:mod:`streamer.text_intent`) is
        loaded from ``bundle_dir`` when the bundle ships one (:attr:`text_head`).

        Raises:
            ModelError: the manifest's outputs do not fit its task, the bundle's LM file is
                missing or its transcript head unreadable, or ``ctc="beam"`` and beam search is
                unavailable.
            ConfigError: an option is out of range.
        """
        self.task = manifest.task
        self.ctc: CtcGreedyDecoder | CtcBeamDecoder | None = None
        self.ctc_search = ""
        self.grammars: dict[str, WordLoop] = {}
        self.grammar_max_gap_per_frame = grammar_max_gap_per_frame
        self._blank = manifest.blank_id
        self._reader: CtcGreedyDecoder | None = None
        if manifest.task == "ctc":
            self.ctc, self.ctc_search = build_search(
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
                if math.isfinite(grammar_max_gap_per_frame):
                    self.ctc_search += (
                        f" and the list's path is within {grammar_max_gap_per_frame:g} nats per"
                        " frame of the free path"
                    )
        self.intent = (
            IntentDecoder(manifest, abstain_below=abstain_below, n_best=n_best)
            if manifest.task == "classify"
            else None
        )
        self.text_head = (
            TextIntentHead.find(bundle_dir, self.intent.label_sets[0])
            if text_head and self.intent is not None and bundle_dir is not None
            else None
        )
        if manifest.task == "regress":
            declared_size(manifest, "value")
        if manifest.task == "embed":
            declared_size(manifest, "embedding")
        self.has_embedding = manifest.output("embedding") is not None
        self.embedding_dim = manifest.embedding_dim
        self.normalize_embedding = normalize_embedding
        self.matcher: IntentMatcher | None = None
        self.intents_name: str | None = None

    def match_intents(self, name: str, matcher: IntentMatcher) -> None:
        """Turn this bundle's embedding into the ``intent`` of an intents file named ``name``.

        Raises:
            ModelError: the bundle has no embedding as wide as the matcher's examples.
        """
        if not self.has_embedding or self.embedding_dim != matcher.dim:
            raise ModelError(
                f"intents {name!r} need a {matcher.dim}-wide embedding; this bundle has "
                f"{self.embedding_dim if self.has_embedding else 'none'}"
            )
        self.matcher, self.intents_name = matcher, name

    def decode(
        self,
        outputs: Mapping[str, npt.ArrayLike],
        *,
        offset_ms: float = 0.0,
        want_embedding: bool = False,
        intent: Intent | None = None,
    ) -> Decoded:
        """Decode one utterance's outputs (shapes as in :mod:`streamer.outputs`).

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
                transcript=self.transcribe(take(outputs, "logits"), offset_ms, intent=intent)
            )
        elif self.intent is not None:
            found = self.intent.decode(outputs)
            result = Decoded(intent=found.intent, labels=found.labels or None)
        elif self.task == "regress":
            result = Decoded(value=decode_value(take(outputs, "value")))
        if self.matcher is not None:
            # the array as checked, not decode_embedding's wire tuple; the matcher normalizes
            matched = self.matcher.match(
                checked(take(outputs, "embedding"), "embedding", (self.embedding_dim,))
            )
            best, *rest = matched.nbest or ((matched.intent or "", matched.score),)
            nearest = Intent(
                name=best[0],
                confidence=round(best[1], 4),
                alternatives=tuple(Alternative(n, round(c, 4)) for n, c in rest),
                abstain=matched.abstain,
                intents=self.intents_name,
            )
            result = Decoded(result.transcript, nearest, result.labels, result.value)
        if self.has_embedding and (
            want_embedding or (self.task == "embed" and self.matcher is None)
        ):
            vector = decode_embedding(
                take(outputs, "embedding"),
                dim=self.embedding_dim,
                normalize=self.normalize_embedding,
            )
            result = Decoded(result.transcript, result.intent, result.labels, result.value, vector)
        return result

    def greedy(self, logits: npt.ArrayLike, offset_ms: float) -> Transcript:
        """A ctc bundle's greedy reading of ``logits``: the acoustics alone, no LM, no grammar.

        Raises:
            ModelError: this is not a ctc bundle, or ``logits`` is malformed.
        """
        if self._reader is None:
            raise ModelError(f"a {self.task} bundle has no transcript")
        return self._reader.decode(logits, offset_ms=offset_ms)

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
        x = checked(logits, "ctc logits", (None, self._reader.n_vocab))
        log_probs = log_softmax(x)
        path = self.grammars[name].best_path(log_probs)
        if word_list_gap(log_probs, path, blank=self._blank) > self.grammar_max_gap_per_frame:
            return self.ctc.decode(logits, offset_ms=offset_ms)
        found = self._reader.read_path(x, path, offset_ms=offset_ms)
        return Transcript(text=found.text, words=found.words, grammar=name)


def decode_utterance(
    decoders: Mapping[str, OutputDecoder],
    outputs: Mapping[str, Mapping[str, npt.ArrayLike]],
    *,
    offset_ms: float = 0.0,
    want_embedding: bool = False,
    context: Mapping[str, Context] | None = None,
    max_gap_per_frame: float = DEFAULT_MAX_GAP_PER_FRAME,
    blank_penalty: float = DEFAULT_BLANK_PENALTY,
) -> Decoded:
    """Decode one utterance's outputs of every bundle a stream runs, and merge the results.

    The rule: every bundle without a CTC head is decoded first. The first intent one of them gives
    (in the order of ``outputs``), abstained or not, then goes to every ctc bundle, which holds its
    transcript to that intent's word list when it has one and the intent did not abstain
    (:meth:`OutputDecoder.grammar_for`), and reads it freely otherwise. The results merge in the
    order of ``outputs``: where two bundles give the same field, the earlier one's wins. When
    that classifier ships a transcript head (:mod:`streamer.text_intent`) and a ctc transcript
    is not empty, its intent is the two readings combined; a ctc bundle whose word list that
    changes reads the utterance again with the combined intent.

    With a ``context``, the first ctc bundle in ``outputs`` that the context was compiled for
    understands the utterance (:meth:`Context.understand`); that understanding is the ``intent``
    (:func:`context_intent`), ahead of any classifier's, and every ctc transcript is read freely.
    A bundle that matches an intents file (:meth:`OutputDecoder.match_intents`) gives the
    ``intent`` next (after a context's, before a classifier's); word lists follow only a
    classifier's intent.

    Args:
        decoders: a decoder per model name (it may hold models the stream does not run).
        outputs: model name -> that model's outputs for this utterance (batch axis removed), in
            the stream's model order.
        offset_ms: stream time of the utterance's first input sample (CTC word times).
        want_embedding: also return an embedding, from the first bundle that has one.
        context: the stream's context compiled per ctc model (model name -> Context); None or
            empty: no context.
        max_gap_per_frame: a context's rejection threshold (nats per emitting frame).
        blank_penalty: nats off the blank's log-probability before a context reads the frames.

    Raises:
        ModelError: a model has no decoder, or an output is missing or malformed.
    """
    missing = [name for name in outputs if name not in decoders]
    if missing:
        raise ModelError(f"no decoder for model {missing[0]!r}")
    parts: dict[str, Decoded] = {}
    for name, found in outputs.items():
        if decoders[name].ctc is None:
            parts[name] = decoders[name].decode(
                found, offset_ms=offset_ms, want_embedding=want_embedding
            )
    matched = next(
        (p.intent for n, p in parts.items() if decoders[n].matcher is not None and p.intent),
        None,
    )
    classifier = next(  # its intent names are the ctc bundle's word lists
        (n for n, p in parts.items() if decoders[n].matcher is None and p.intent), None
    )
    intent = parts[classifier].intent if classifier is not None else None
    understood: Intent | None = None
    for name, found in outputs.items():
        if decoders[name].ctc is not None:
            parts[name] = decoders[name].decode(
                found,
                offset_ms=offset_ms,
                want_embedding=want_embedding,
                intent=None if context else intent,
            )
            if context and understood is None and name in context:
                understanding = context[name].understand(
                    take(found, "logits"),
                    max_gap_per_frame=max_gap_per_frame,
                    blank_penalty=blank_penalty,
                )
                understood = context_intent(understanding, context[name].name)
    transcript = next((p.transcript for p in parts.values() if p.transcript is not None), None)
    if classifier is not None and transcript is not None and transcript.text:
        head, heard = decoders[classifier].text_head, decoders[classifier].intent
        if head is not None and heard is not None:
            fused = combined_intent(heard, head, outputs[classifier], transcript.text)
            parts[classifier] = dataclasses.replace(parts[classifier], intent=fused)
            for name, found in outputs.items():  # a word list follows the intent: read again
                ctc = decoders[name]
                if (
                    ctc.ctc is not None
                    and not context
                    and ctc.grammar_for(fused) != ctc.grammar_for(intent)
                ):
                    parts[name] = ctc.decode(
                        found, offset_ms=offset_ms, want_embedding=want_embedding, intent=fused
                    )
    decoded = Decoded(intent=understood or matched)
    for name in outputs:
        decoded = decoded.merge(parts[name])
    return decoded


def context_intent(understanding: Understanding, context: str) -> Intent:
    """The wire ``intent`` of an utterance understood (or not) in ``context``.

    Out of context, ``name`` and ``slots`` are the best in-context parse's (``name`` is empty
    when the utterance is too short to spell any expression) and ``abstain`` is True.
    """
    return Intent(
        name=understanding.intent or "",
        confidence=understanding.confidence,
        abstain=not understanding.understood,
        slots=dict(understanding.slots),
        understood=understanding.understood,
        context=context,
    )


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

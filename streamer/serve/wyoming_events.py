"""Streamer's bundles and results as Wyoming events: the ``info`` answer and the intent events.

Pure mapping, no I/O: :mod:`streamer.serve.wyoming` sends what these functions build.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from wyoming.event import Eventable
from wyoming.info import AsrModel, AsrProgram, Attribution, Info
from wyoming.intent import Entity, Intent, IntentsStart, IntentsStop, NotRecognized

from streamer import __version__, protocol as proto
from streamer.engine.encoder import Encoder

_ATTRIBUTION: Final = Attribution(name="streamer", url="https://github.com/")
_DESCRIPTIONS: Final = {
    "ctc": "speech recognition (CTC)",
    "classify": "intent classification from audio (sent as intent events)",
    "regress": "regression from audio",
    "embed": "utterance embedding",
}


def build_info(encoders: Mapping[str, Encoder], *, languages: Sequence[str]) -> Info:
    """The ``info`` answer: one ASR program whose models are the loaded bundles."""
    models = [
        AsrModel(
            name=name,
            attribution=_ATTRIBUTION,
            installed=True,
            description=f"{enc.manifest.arch}: {_DESCRIPTIONS.get(enc.manifest.task, '')}",
            version=__version__,
            languages=list(languages),
        )
        for name, enc in encoders.items()
    ]
    program = AsrProgram(
        name="streamer",
        attribution=_ATTRIBUTION,
        installed=True,
        description="streaming speech understanding (VAD-cut utterances, ONNX encoders)",
        version=__version__,
        models=models,
        supports_transcript_streaming=True,
    )
    return Info(asr=[program])


def intent_events(utterances: Sequence[proto.Utterance]) -> list[Eventable]:
    """The Wyoming intent events for one request's utterances (empty: no intent bundle ran).

    One confident intent becomes ``intent``; several become ``intents-start``, one ``intent``
    each, ``intents-stop``; none confident (every one abstained) becomes ``not-recognized``.
    The other label sets of a multi-head bundle become entities ``label_1``, ``label_2``...
    """
    found = [u.intent for u in utterances if u.intent is not None]
    if not found:
        return []
    intents = [
        Intent(
            name=u.intent.name,
            entities=[
                Entity(name=f"label_{i}", value=label.name)
                for i, label in enumerate(u.labels or (), start=1)
                if not label.abstain
            ],
        )
        for u in utterances
        if u.intent is not None and not u.intent.abstain
    ]
    if not intents:
        return [NotRecognized()]
    if len(intents) == 1:
        return [intents[0]]
    return [IntentsStart(), *intents, IntentsStop()]

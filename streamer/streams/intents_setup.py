"""Intents files at start: read the file, embed its examples, pick the speech model to match on.

``streamer serve --intents FILE`` (the ``[intents]`` config section) reads an intents file
(:mod:`streamer.intents`), embeds every example sentence with the text embedder bundle
(:mod:`streamer.engine.text_embed`, ``exported/text-minilm-l6`` by default) and builds the
:class:`~streamer.intents.IntentMatcher` the speech model's decoder uses. The speech model is a
served bundle whose ``embedding`` output lives in the text embedder's space: one named by
``intents.model``, or else the only served bundle whose embedding is as wide as the text
embedder's (a SEGUE student distilled from that embedder, e.g. ``exported/commands-embed``).

Everything that can be wrong is found here, before any speech graph is loaded: an unreadable or
invalid file, a missing text embedder, no served model to match on. Changing the file needs a
restart; it never needs training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from streamer.engine.bundles import default_models_dir, load_manifest
from streamer.engine.text_embed import (
    DEFAULT_BATCH,
    TextEmbedder,
    TextEmbedderError,
    load_text_embedder,
)
from streamer.errors import ConfigError
from streamer.intent_matching import IntentMatcher
from streamer.intents import IntentsFile, load_intents_file
from streamer.serving_config import IntentsConfig

log = logging.getLogger(__name__)

DEFAULT_TEXT_EMBEDDER = "text-minilm-l6"
"""The text embedder bundle's folder name in the embedded models folder (``exported/``)."""


@dataclass(frozen=True)
class IntentSet:
    """An intents file ready to match: its name, the model it matches on, the matcher."""

    name: str
    model: str
    matcher: IntentMatcher
    embed_s: float
    """Seconds it took to embed the examples at start."""


def text_embedder_folder(config: IntentsConfig) -> Path:
    """The text embedder bundle's folder (``intents.text_embedder`` or the embedded default)."""
    if config.text_embedder:
        return Path(config.text_embedder)
    return default_models_dir() / DEFAULT_TEXT_EMBEDDER


def setup_intents(config: IntentsConfig, models: Mapping[str, Path]) -> IntentSet | None:
    """Read ``intents.file``, embed its examples and build the matcher; None without a file.

    Args:
        config: the ``[intents]`` settings.
        models: model name -> bundle folder of every served model (their manifests are read).

    Raises:
        IntentsFileError: the file is unreadable or invalid (one line naming the file).
        ConfigError: the text embedder is missing or broken, or no served model (or not
            exactly one, when ``intents.model`` is empty) has an embedding of its width.
    """
    if not config.file:
        return None
    started = time.perf_counter()
    intents = load_intents_file(Path(config.file))
    folder = text_embedder_folder(config)
    try:
        embedder = load_text_embedder(folder, threads=config.threads)
    except TextEmbedderError as exc:
        raise ConfigError(f"--intents needs a text embedder: {exc}") from None
    model = _matching_model(config.model, models, embedder.dim)
    try:
        matcher = build_matcher(intents, embedder, batch=config.embed_batch)
    except TextEmbedderError as exc:
        raise ConfigError(f"{config.file}: cannot embed the examples: {exc}") from None
    spent = time.perf_counter() - started
    name = Path(config.file).stem
    log.info(
        "intents %s (%s): %d intents, %d examples embedded in %.2f s by %s on %s (%s); "
        "matched on model %s, threshold %.2f",
        name,
        config.file,
        len(intents.intents),
        len(intents.sentences()),
        spent,
        folder.name,
        embedder.provider.provider,
        embedder.provider.reason,
        model,
        intents.threshold,
    )
    return IntentSet(name=name, model=model, matcher=matcher, embed_s=spent)


def build_matcher(
    intents: IntentsFile, embedder: TextEmbedder, *, batch: int = DEFAULT_BATCH
) -> IntentMatcher:
    """The matcher of ``intents``, every example embedded by ``embedder``.

    Raises:
        TextEmbedderError: the embedder failed on an example.
    """
    return IntentMatcher.build(
        intents, embedder.embed([s for _, s in intents.sentences()], batch=batch)
    )


def _matching_model(wanted: str, models: Mapping[str, Path], dim: int) -> str:
    widths = {name: load_manifest(path).embedding_dim for name, path in models.items()}
    if wanted:
        if wanted not in widths:
            raise ConfigError(f"intents.model {wanted!r} is not a served model")
        if widths[wanted] != dim:
            raise ConfigError(
                f"intents.model {wanted!r} has no {dim}-wide embedding output "
                f"(it has {widths[wanted] or 'none'}): it is not in the text embedder's space"
            )
        return wanted
    fits = sorted(name for name, width in widths.items() if width == dim)
    if not fits:
        raise ConfigError(
            f"--intents needs a served model with a {dim}-wide embedding (a SEGUE model "
            "distilled from the text embedder, e.g. exported/commands-embed); none is served"
        )
    if len(fits) > 1:
        raise ConfigError(
            f"--intents: models {', '.join(fits)} all fit; name one with intents.model"
        )
    return fits[0]

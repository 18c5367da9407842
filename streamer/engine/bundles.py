"""Which bundles to serve: ``--model [NAME=]PATH`` flags, or every bundle in ``exported/``."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from streamer.errors import ConfigError
from streamer.manifest import MANIFEST_NAME

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def default_models_dir() -> Path:
    """The embedded bundles: ``$STREAMER_MODELS_DIR`` or ``exported/`` beside the package."""
    env = os.environ.get("STREAMER_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "exported"


def resolve_models(specs: Sequence[str], *, models_dir: Path | None = None) -> dict[str, Path]:
    """Turn ``--model`` values into {name: bundle folder}; no values: every bundle in exported/.

    A value is ``NAME=PATH`` or ``PATH`` (the name is then the folder's name). Clients pick
    models by these names only, never by path.

    Raises:
        ConfigError: a bad or duplicate name, or no bundle at all.
    """
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        bundle = Path(path if sep else spec)
        name = name if sep else bundle.resolve().name
        if not NAME_RE.match(name):
            raise ConfigError(f"model name {name!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        if name in models:
            raise ConfigError(f"model name {name!r} given twice")
        models[name] = bundle
    if models:
        return models
    root = models_dir or default_models_dir()
    found = sorted(p.parent for p in root.glob(f"*/{MANIFEST_NAME}"))
    if not found:
        raise ConfigError(
            f"no model bundles in {root} (pass --model PATH, or run `make demo-models`)"
        )
    return {p.name: p for p in found}

"""Bundles on disk: which ones to serve, and reading a bundle's ``manifest.json``.

Which: ``--model [NAME=]PATH`` flags, or every bundle in ``exported/``. Reading: the file's JSON
goes to the :mod:`streamer.manifest` schema, which validates it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from streamer.errors import ConfigError, ManifestError
from streamer.manifest import MANIFEST_NAME, Manifest
from streamer.protocol import NAME_RE


def default_models_dir() -> Path:
    """The embedded bundles: ``$STREAMER_MODELS_DIR`` or ``exported/`` beside the package."""
    env = os.environ.get("STREAMER_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "exported"


def resolve_models(
    specs: Sequence[str], *, models_dir: Path | None = None, embed: bool = True
) -> dict[str, Path]:
    """Turn ``--model`` values into {name: bundle folder}; no values: every bundle in exported/.

    A value is ``NAME=PATH`` or ``PATH`` (the name is then the folder's name). Clients pick
    models by these names only, never by path. Without values and with ``embed`` False, bundles
    of the ``embed`` task are left out (an embedded sentence-embedding model is served for an
    intents file only: alone it adds a vector to every event and CPU to every utterance).

    Raises:
        ConfigError: a bad or duplicate name, or no bundle at all.
    """
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        bundle = Path(path if sep else spec)
        name = name if sep else bundle.resolve().name
        if not NAME_RE.fullmatch(name):
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
    if not embed:
        found = [p for p in found if load_manifest(p).task != "embed"] or found
    return {p.name: p for p in found}


def write_manifest(manifest: Manifest, bundle_dir: Path) -> Path:
    """Write ``manifest.json`` into ``bundle_dir`` and return its path."""
    path = bundle_dir / MANIFEST_NAME
    path.write_text(manifest.to_json(), encoding="utf-8")
    return path


def load_manifest(bundle_dir: Path) -> Manifest:
    """Read and validate ``bundle_dir/manifest.json``.

    Raises:
        ManifestError: the file is missing, is not JSON, or fails validation (the message starts
            with the file's path).
    """
    path = bundle_dir / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest.json (not a bundle folder?)") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return Manifest.from_dict(raw)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None

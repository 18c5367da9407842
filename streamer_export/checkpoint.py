"""A Hugging Face checkpoint folder: its config, preprocessor, tokenizer and weight files."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer_export.errors import ExportInputError

WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = ["*.json", "*.safetensors", "pytorch_model*.bin", "*.txt"]


@dataclass(frozen=True)
class CtcVocab:
    """The CTC output alphabet, in logit order."""

    tokens: tuple[str, ...]
    blank_id: int
    word_delimiter: str | None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder opened for export.

    Attributes:
        source: what the manifest records: the folder's absolute path, or the hub id.
        path: the local folder.
        config: the parsed config.json.
        weight_files: the weight files, sorted (hashed into the manifest).
    """

    source: str
    path: Path
    config: dict[str, Any]
    weight_files: tuple[Path, ...]

    def read_json(self, name: str) -> dict[str, Any] | None:
        """Return the parsed JSON object ``name`` in the folder, or None when absent.

        Raises:
            ExportInputError: the file exists but is not a JSON object.
        """
        return _read_json(self.path / name)

    def sha256(self) -> dict[str, str]:
        """Return the sha256 hex digest of every weight file, keyed by file name."""
        digests = {}
        for path in self.weight_files:
            h = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digests[path.name] = h.hexdigest()
        return digests

    def ctc_vocab(self) -> CtcVocab:
        """Read the CTC alphabet from vocab.json (+ tokenizer_config.json when present).

        Raises:
            ExportInputError: vocab.json is missing or its ids are not 0..n-1.
        """
        vocab = self.read_json("vocab.json")
        if vocab is None:
            raise ExportInputError(f"{self.path}: a ctc export needs vocab.json (none found)")
        added = self.read_json("added_tokens.json") or {}
        ids = {**vocab, **added}
        by_id = sorted((int(i), str(t)) for t, i in ids.items() if isinstance(i, int))
        if [i for i, _ in by_id] != list(range(len(by_id))) or not by_id:
            raise ExportInputError(f"{self.path}/vocab.json: token ids must be 0..n-1")
        tokens = tuple(t for _, t in by_id)
        tok_config = self.read_json("tokenizer_config.json") or {}
        pad = tok_config.get("pad_token", "<pad>")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        # CTC blank is the tokenizer's pad token, as in Wav2Vec2ForCTC training.
        blank_id = tokens.index(pad) if pad in tokens else int(self.config.get("pad_token_id") or 0)
        delimiter = tok_config.get("word_delimiter_token", "|")
        return CtcVocab(
            tokens=tokens,
            blank_id=blank_id,
            word_delimiter=delimiter if delimiter in tokens else None,
        )


def open_checkpoint(source: str) -> Checkpoint:
    """Open a local Hugging Face folder, or download a hub id where the network allows.

    Raises:
        ExportInputError: no such folder, no config.json, or no weight files.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        path = path.resolve()
        recorded = str(path)
    elif not path.exists() and _HUB_ID.match(source) and not source.startswith("."):
        path, recorded = _download(source), source
    else:
        raise ExportInputError(f"{source}: no such folder")
    config = _read_json(path / "config.json")
    if config is None:
        raise ExportInputError(f"{source}: no config.json (not a Hugging Face checkpoint folder?)")
    weights = sorted({p for pattern in WEIGHT_PATTERNS for p in path.glob(pattern)})
    if not weights:
        raise ExportInputError(f"{source}: no model.safetensors or pytorch_model.bin")
    return Checkpoint(source=recorded, path=path, config=config, weight_files=tuple(weights))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportInputError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ExportInputError(f"{path}: expected a JSON object")
    return data


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportInputError(
            f"{repo_id}: not a local folder, and fetching it from the hub failed: {reason}"
        ) from None

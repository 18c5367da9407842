"""Class labels for classify bundles: parsed from ``--labels`` or read from config.json."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from streamer_export.errors import ExportInputError

Labels = tuple[str, ...] | tuple[tuple[str, ...], ...]
_HF_NUM_LABELS = 2
"""Classes of a transformers classifier whose config says nothing about them."""

LABELS_HELP = (
    "class names for a classify export, overriding config.json's id2label (without either, "
    "classes are named 0..k-1 with a warning): a JSON list "
    '(\'["yes","no"]\') or list of lists for multi-label heads (\'[["a","b"],["x","y","z"]]\'), '
    "or the short form 'yes,no' with ';' between label sets ('a,b;x,y,z')"
)


def parse_labels(text: str) -> Labels:
    """Parse the ``--labels`` value (see :data:`LABELS_HELP` for the syntax).

    Raises:
        ExportInputError: malformed JSON, empty names, or mixed flat and nested lists.
    """
    if text.strip().startswith("["):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExportInputError(f"--labels: not valid JSON ({exc.msg})") from None
    else:
        raw = [[name.strip() for name in group.split(",")] for group in text.split(";")]
        raw = raw[0] if len(raw) == 1 else raw
    if isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        return _names(raw)
    if isinstance(raw, list) and raw and all(isinstance(x, list) for x in raw):
        return tuple(_names(group) for group in raw)
    raise ExportInputError("--labels: expected a list of names or a list of lists of names")


def head_sizes(config: Mapping[str, Any], *, segue: bool) -> tuple[list[int], bool]:
    """Return the class count of each classification head and whether the model is multi-label.

    A transformers config without ``id2label`` or ``num_labels`` has two classes, as
    transformers itself reads it (its classifiers with two labels were saved that way).

    Raises:
        ExportInputError: a SEGUE config does not say how many classes the heads have.
    """
    if segue:
        n_classes = config.get("n_classes")
        if isinstance(n_classes, int) and not isinstance(n_classes, bool) and n_classes > 0:
            return [n_classes], False
        if isinstance(n_classes, list) and n_classes and all(isinstance(n, int) for n in n_classes):
            return list(n_classes), True
        raise ExportInputError("SEGUE config.json needs n_classes (an int or a list of ints)")
    id2label = config.get("id2label")
    n = len(id2label) if isinstance(id2label, dict) else config.get("num_labels", _HF_NUM_LABELS)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ExportInputError(f"config.json: num_labels must be a positive int, got {n!r}")
    return [n], False


def resolve_labels(
    config: Mapping[str, Any], *, segue: bool, override: Labels | None
) -> tuple[Labels, str | None]:
    """Return the labels for the manifest, and a warning when the config names no classes.

    Without ``--labels``, classes come from ``id2label``; where it is absent or holds only
    transformers' placeholders (``LABEL_0``, ``LABEL_1``, ...), each head's classes are named by
    their index, ``"0"`` to ``"k-1"``, and the warning says so.

    Raises:
        ExportInputError: the label counts do not match the heads.
    """
    sizes, multi = head_sizes(config, segue=segue)
    if override is not None:
        if not multi and len(override) == 1 and not isinstance(override[0], str):
            override = override[0]
        _check(override, sizes, multi, where="--labels")
        return override, None
    labels = _from_id2label(config.get("id2label"), multi=multi)
    if labels is not None and not _placeholders(labels):
        _check(labels, sizes, multi, where="config.json id2label")
        return labels, None
    by_index = [tuple(str(i) for i in range(n)) for n in sizes]
    why = "has no id2label" if labels is None else "names its classes LABEL_0, LABEL_1, ..."
    spans = "; ".join(f"0..{n - 1}" for n in sizes)
    warning = f"config.json {why}: classes are named by index ({spans}); --labels gives them names"
    return (tuple(by_index) if multi else by_index[0]), warning


def _placeholders(labels: Labels) -> bool:
    """Every label set is transformers' default naming, ``LABEL_<index>``."""
    sets = [labels] if all(isinstance(x, str) for x in labels) else list(labels)
    return all(list(names) == [f"LABEL_{i}" for i in range(len(names))] for names in sets if names)


def _names(items: list[Any]) -> tuple[str, ...]:
    names = tuple(str(x).strip() for x in items)
    if not all(names) or not all(isinstance(x, str) for x in items):
        raise ExportInputError("--labels: label names must be non-empty strings")
    return names


def _from_id2label(id2label: object, *, multi: bool) -> Labels | None:
    if not multi:
        return _names_by_id(id2label)
    if not isinstance(id2label, list):
        return None
    sets = [_names_by_id(d) for d in id2label]
    return tuple(s for s in sets if s is not None) if None not in sets else None


def _names_by_id(id2label: object) -> tuple[str, ...] | None:
    if not isinstance(id2label, dict):
        return None
    try:
        return tuple(str(name) for _, name in sorted((int(k), v) for k, v in id2label.items()))
    except ValueError:
        return None


def _check(labels: Labels, sizes: list[int], multi: bool, *, where: str) -> None:
    if multi:
        got = [len(s) for s in labels] if not isinstance(labels[0], str) else None
        if got != sizes:
            raise ExportInputError(
                f"{where}: the model has {len(sizes)} label sets of sizes {sizes}; "
                "give one list of names per set"
            )
    elif not all(isinstance(x, str) for x in labels) or len(labels) != sizes[0]:
        raise ExportInputError(
            f"{where}: the model has {sizes[0]} classes, got {len(labels)} names"
        )

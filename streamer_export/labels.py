"""Class labels for classify bundles: parsed from ``--labels`` or read from config.json."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from streamer_export.errors import ExportInputError

Labels = tuple[str, ...] | tuple[tuple[str, ...], ...]
_GENERIC = re.compile(r"^LABEL_\d+$")

LABELS_HELP = (
    "class names for a classify export, overriding config.json's id2label: a JSON list "
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

    Raises:
        ExportInputError: the config does not say how many classes the heads have.
    """
    if segue:
        n_classes = config.get("n_classes")
        if isinstance(n_classes, int) and not isinstance(n_classes, bool) and n_classes > 0:
            return [n_classes], False
        if isinstance(n_classes, list) and n_classes and all(isinstance(n, int) for n in n_classes):
            return list(n_classes), True
        raise ExportInputError("SEGUE config.json needs n_classes (an int or a list of ints)")
    id2label = config.get("id2label")
    n = len(id2label) if isinstance(id2label, dict) else config.get("num_labels")
    if not isinstance(n, int) or n <= 0:
        raise ExportInputError("config.json says nothing about the number of classes (id2label)")
    return [n], False


def resolve_labels(
    config: Mapping[str, Any], *, segue: bool, override: Labels | None
) -> tuple[Labels, bool]:
    """Return the labels for the manifest, and whether they are generic ``LABEL_n`` names.

    Raises:
        ExportInputError: no labels anywhere, or their counts do not match the heads.
    """
    sizes, multi = head_sizes(config, segue=segue)
    if override is not None:
        if not multi and len(override) == 1 and not isinstance(override[0], str):
            override = override[0]
        _check(override, sizes, multi, where="--labels")
        return override, False
    labels = _from_id2label(config.get("id2label"), multi=multi)
    if labels is None:
        raise ExportInputError(
            "config.json has no id2label for this classifier; name the classes with --labels"
        )
    _check(labels, sizes, multi, where="config.json id2label")
    flat = [x for x in labels if isinstance(x, str)] or [y for s in labels for y in s]
    return labels, all(_GENERIC.match(name) for name in flat)


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

"""Intents defined by example sentences, matched to an utterance's sentence embedding.

An intents file (TOML, or YAML with the same structure) names each intent and a few natural
sentences a user might say for it::

    threshold = 0.5             # optional: cosine below which the result abstains
    top_k = 3                   # optional: length of the n-best list
    [intents.lights_on]
    examples = ["turn on the lights", "it's too dark in here"]
    threshold = 0.6             # optional: this intent's own threshold
    [intents.weather]
    examples = ["what's the weather like", "will it rain tomorrow"]

An intent may also be written as just its list of sentences (``lights_on = [...]`` under
``[intents]``, or ``lights_on: [...]`` in YAML). At start the daemon embeds every example with
a text embedder; :class:`~streamer.intent_matching.IntentMatcher` then compares each
utterance's speech embedding (same space, L2-normalised) with them by cosine. Adding an intent is
editing a file, not retraining.

Every problem in a file raises :class:`IntentsFileError` with one line that starts with the
file's path (and its line, where the parser gives one). Pure, except
:func:`load_intents_file`, which reads the file path its caller gives.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from streamer.errors import ConfigError
from streamer.protocol import is_name

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP_K",
    "MAX_EXAMPLES",
    "MAX_EXAMPLE_CHARS",
    "MAX_FILE_BYTES",
    "MAX_INTENTS",
    "MAX_TOP_K",
    "Intent",
    "IntentsFile",
    "IntentsFileError",
    "load_intents_file",
]

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD: Final = 0.48
"""Cosine below which a match abstains, when the file sets none. Chosen for the shipped
``commands-embed`` (centred) on validation intents and voices (bench/intents_zero_shot.py: the
cosine that maximises the mean of in-scope accuracy and out-of-scope rejection was 0.484). That
model is weak, so this rejects most utterances; a better model, or a file of few, distinct
intents, may want another (the reference transcript pipeline's was 0.41)."""
DEFAULT_TOP_K: Final = 3
"""Length of the n-best list, when the file sets none."""
MAX_TOP_K: Final = 50
"""Largest ``top_k`` a file may ask for."""
MAX_INTENTS: Final = 1000
"""Most intents in one file."""
MAX_EXAMPLES: Final = 20_000
"""Most example sentences in one file, all intents together (each is embedded at start)."""
MAX_EXAMPLE_CHARS: Final = 500
"""Longest example sentence, in characters after whitespace is collapsed."""
MAX_FILE_BYTES: Final = 2 * 1024 * 1024
"""Largest intents file read."""

_TOP_KEYS: Final = frozenset({"threshold", "top_k", "intents"})
_INTENT_KEYS: Final = frozenset({"examples", "threshold"})
_SUFFIXES: Final = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}
_TOML_WHERE_RE: Final = re.compile(r"\s*\(at (?:line (\d+), column \d+|end of document)\)$")


class IntentsFileError(ConfigError):
    """An intents file cannot be read or is invalid; the one-line message starts with its path."""


@dataclass(frozen=True)
class Intent:
    """One intent: its name (a protocol name), its example sentences, its own threshold if set."""

    name: str
    examples: tuple[str, ...]
    threshold: float | None


@dataclass(frozen=True)
class IntentsFile:
    """A checked intents file: its intents in file order, the global threshold and n-best length."""

    path: Path
    intents: tuple[Intent, ...]
    threshold: float = DEFAULT_THRESHOLD
    top_k: int = DEFAULT_TOP_K

    def sentences(self) -> list[tuple[int, str]]:
        """Every example as (index of its intent, sentence): intents in order, then examples.

        This is the row order :meth:`~streamer.intent_matching.IntentMatcher.build` expects its
        example vectors in.
        """
        return [(i, s) for i, intent in enumerate(self.intents) for s in intent.examples]


def load_intents_file(path: Path) -> IntentsFile:
    """Read and check an intents file (``.toml``, ``.yaml`` or ``.yml``).

    Example sentences are kept as written, with runs of whitespace collapsed to one space. A
    sentence listed twice in one intent is kept once (with a warning); one in two intents is an
    error, compared ignoring case and whitespace.

    Raises:
        IntentsFileError: the file is missing, unreadable, too large, not UTF-8, not valid
            TOML/YAML (or has a duplicate key), or breaks the schema or a limit.
    """
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise _error(path, f"unknown file type {path.suffix!r} (use .toml, .yaml or .yml)")
    text = _read_text(path)
    data = _parse_toml(path, text) if kind == "toml" else _parse_yaml(path, text)
    return _checked_file(path, data)


def _error(path: Path, problem: str, line: int | None = None) -> IntentsFileError:
    where = f"{path}:{line}" if line is not None else str(path)
    return IntentsFileError(f"{where}: {' '.join(problem.split())}")


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _error(path, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise _error(path, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(path, f"not UTF-8 (byte {exc.start})") from None


def _parse_toml(path: Path, text: str) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_WHERE_RE.search(message)
        line = int(where[1]) if where is not None and where[1] else None
        reason = message[: where.start()] if where is not None else message
        if reason.startswith(("Cannot overwrite", "Cannot declare")):
            reason = f"duplicate key or table ({reason})"
        raise _error(path, f"invalid TOML: {reason}", line) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error.

    Plain PyYAML keeps the last value silently, which would drop an intent without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # unhashable keys are refused by PyYAML; merged keys may be overridden
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _parse_yaml(path: Path, text: str) -> object:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = int(mark.line) + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise _error(path, f"invalid YAML: {problem}", line) from None


def _checked_file(path: Path, data: object) -> IntentsFile:
    if data is None:
        raise _error(path, "no intents (the file is empty)")
    if not isinstance(data, dict):
        raise _error(path, "the file must be a mapping with an 'intents' table")
    unknown = sorted(str(k) for k in data if k not in _TOP_KEYS)
    if unknown:
        raise _error(path, f"unknown key {unknown[0]!r} (allowed: intents, threshold, top_k)")
    threshold = _threshold(path, data.get("threshold", DEFAULT_THRESHOLD), "threshold")
    top_k = data.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise _error(path, f"top_k must be an integer in 1..{MAX_TOP_K}, not {top_k!r}")
    table = data.get("intents")
    if not table:
        raise _error(path, "no intents (add an 'intents' table with at least one intent)")
    if not isinstance(table, dict):
        raise _error(path, "'intents' must be a table of intent names")
    if len(table) > MAX_INTENTS:
        raise _error(path, f"{len(table)} intents, more than {MAX_INTENTS}")
    intents: list[Intent] = []
    owners: dict[str, str] = {}  # a sentence's comparison key -> the intent that lists it
    n_examples = 0
    for name, spec in table.items():
        intent = _intent(path, name, spec)
        n_examples += len(intent.examples)
        if n_examples > MAX_EXAMPLES:
            raise _error(path, f"more than {MAX_EXAMPLES} example sentences in all")
        for sentence in intent.examples:
            other = owners.setdefault(_key(sentence), intent.name)
            if other != intent.name:
                raise _error(
                    path,
                    f"example {sentence!r} is in both intent {other!r} and intent "
                    f"{intent.name!r} (ambiguous)",
                )
        intents.append(intent)
    return IntentsFile(path, tuple(intents), threshold, top_k)


def _intent(path: Path, name: object, spec: object) -> Intent:
    if not isinstance(name, str):
        hint = " (quote it: YAML reads on/off/yes/no as booleans)" if isinstance(name, bool) else ""
        raise _error(path, f"intent name {name!r} is not a string{hint}")
    if not is_name(name):
        raise _error(path, f"intent name {name!r} is not a valid name (1-64 of A-Za-z0-9_.-)")
    threshold: float | None = None
    if isinstance(spec, dict):
        unknown = sorted(str(k) for k in spec if k not in _INTENT_KEYS)
        if unknown:
            raise _error(
                path, f"intent {name!r}: unknown key {unknown[0]!r} (allowed: examples, threshold)"
            )
        if "threshold" in spec:
            threshold = _threshold(path, spec["threshold"], f"intent {name!r}: threshold")
        spec = spec.get("examples")
    if spec is None or (isinstance(spec, list) and not spec):
        raise _error(path, f"intent {name!r} has no example sentences")
    if not isinstance(spec, list):
        raise _error(path, f"intent {name!r}: examples must be a list of sentences")
    return Intent(name, _examples(path, name, spec), threshold)


def _examples(path: Path, name: str, items: list[object]) -> tuple[str, ...]:
    kept: dict[str, str] = {}  # comparison key -> the sentence as first written
    for number, item in enumerate(items[: MAX_EXAMPLES + 1], start=1):
        if not isinstance(item, str):
            raise _error(
                path,
                f"intent {name!r}: example {number} is not a string ({type(item).__name__} "
                f"{item!r}; quote it)",
            )
        sentence = " ".join(item.split())
        if not sentence:
            raise _error(path, f"intent {name!r}: example {number} is empty")
        if len(sentence) > MAX_EXAMPLE_CHARS:
            raise _error(
                path, f"intent {name!r}: example {number} is longer than {MAX_EXAMPLE_CHARS} chars"
            )
        if _key(sentence) in kept:
            log.warning("%s: intent %r lists %r twice; kept once", path, name, sentence)
            continue
        kept[_key(sentence)] = sentence
    return tuple(kept.values())


def _key(sentence: str) -> str:
    """What two sentences share when they are the same sentence (case and spacing aside)."""
    return sentence.casefold()


def _threshold(path: Path, value: object, what: str) -> float:
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not -1.0 <= number <= 1.0:  # NaN fails the range test too
        raise _error(path, f"{what} must be a number in [-1, 1], not {value!r}")
    return float(number)

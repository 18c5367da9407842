"""Rhino-format context files: YAML text to a checked syntax tree, with line numbers.

A context (the format of Picovoice Rhino's context YAML, accepted as is)::

    context:
      expressions:            # intent -> expressions
        callContact:
          - "@call $contacts:contact (please)"
      slots:                  # slot type -> phrases
        contacts: [Mom, Dad, John, Jane]
      macros:                 # name -> phrases
        call: [ring, dial, call]

Expression syntax: ``[a, b c]`` is one of the comma-separated alternatives (each may be several
words, slots or groups), ``(a, b)`` the same but optional, ``$type:name`` one phrase of slot
type ``type`` whose value is reported as ``name``, ``@macro`` one phrase of the macro (macros may
use the expression syntax themselves, without cycles). Words are case-insensitive. Slot phrases
are plain words, numbers spelled as spoken ("twelve ounce"). Rhino's built-in ``$pv.*`` slot
types are not provided: list the values as a slot of your own.

An expression starting with ``[`` or ``@`` must be quoted in YAML (``[`` would open a YAML list,
``@`` is reserved). Every problem raises :class:`ContextError` with one line naming the file and
the line. Pure: parses text given by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import yaml

from streamer.errors import ConfigError

_TOKEN_RE: Final = re.compile(
    r"\s*(?:(?P<punct>[\[\](),])"
    r"|\$(?P<slot>[A-Za-z_][\w.]*):(?P<name>[A-Za-z_]\w*)"
    r"|@(?P<macro>[A-Za-z_]\w*)"
    r"|(?P<word>[^\s\[\](),$@]+)"
    r"|(?P<bad>\S))"
)


class ContextError(ConfigError):
    """A context file cannot be read, parsed or compiled; the message names file and line."""


@dataclass(frozen=True)
class Word:
    """One literal word, lowercased."""

    text: str


@dataclass(frozen=True)
class SlotRef:
    """``$slot_type:name``: one phrase of ``slot_type``, reported under ``name``."""

    slot_type: str
    name: str


@dataclass(frozen=True)
class MacroRef:
    """``@name``: one phrase of the macro ``name``."""

    name: str


@dataclass(frozen=True)
class Group:
    """``[a, b]`` (one of) or ``(a, b)`` (optionally one of)."""

    alternatives: tuple[tuple[Term, ...], ...]
    optional: bool


Term = Word | SlotRef | MacroRef | Group
Phrase = tuple[Term, ...]


@dataclass(frozen=True)
class Expression:
    """One expression of an intent, as written and parsed."""

    intent: str
    text: str
    terms: Phrase
    line: int


@dataclass(frozen=True)
class SlotType:
    """A slot type's phrases: (as written in the file, its lowercased words), and their lines."""

    name: str
    phrases: tuple[tuple[str, tuple[str, ...]], ...]
    lines: tuple[int, ...]


@dataclass(frozen=True)
class Macro:
    """A macro's phrases, each parsed with the expression syntax, and their lines."""

    name: str
    phrases: tuple[Phrase, ...]
    lines: tuple[int, ...]


@dataclass(frozen=True)
class ContextSpec:
    """A parsed context: its expressions in file order, slot types and macros by name."""

    source: str
    expressions: tuple[Expression, ...]
    slots: Mapping[str, SlotType]
    macros: Mapping[str, Macro]

    def error(self, line: int, problem: str) -> ContextError:
        """A :class:`ContextError` for ``problem`` at ``line`` of this context's file."""
        return _error(self.source, line, problem)


def _error(source: str, line: int, problem: str) -> ContextError:
    return ContextError(f"{source}:{line}: {problem}")


def parse_expression(text: str, *, source: str = "<expression>", line: int = 1) -> Phrase:
    """Parse one expression (or macro phrase) into its terms.

    Raises:
        ContextError: unbalanced or mismatched brackets, an empty alternative, a comma outside a
            group, a stray ``$``/``@``, or nothing at all.
    """
    tokens = list(_tokens(text, source, line))
    terms, pos = _sequence(tokens, 0, text, source, line)
    if pos < len(tokens):  # only a closer can stop the top-level sequence
        value = tokens[pos][1]
        problem = "a comma outside [] or ()" if value == "," else f"unbalanced {value!r}"
        raise _error(source, line, f"{problem} in {text!r}")
    if not terms:
        raise _error(source, line, f"empty expression {text!r}")
    twice = _slot_names(terms)[1]
    if twice:
        raise _error(source, line, f"slot name {twice!r} used twice on one path of {text!r}")
    return terms


def _slot_names(terms: Phrase) -> tuple[set[str], str | None]:
    """The slot names a phrase can report, and one that a single path would report twice.

    Alternatives of a group may share a name (only one of them matches).
    """
    names: set[str] = set()
    for term in terms:
        found: set[str] = set()
        if isinstance(term, SlotRef):
            found = {term.name}
        elif isinstance(term, Group):
            for alternative in term.alternatives:
                inner, twice = _slot_names(alternative)
                if twice:
                    return names, twice
                found |= inner
        if names & found:
            return names, sorted(names & found)[0]
        names |= found
    return names, None


def _tokens(text: str, source: str, line: int) -> Iterator[tuple[str, str]]:
    for m in _TOKEN_RE.finditer(text):
        if m["punct"]:
            yield "punct", m["punct"]
        elif m["slot"]:
            yield "slot", f"{m['slot']}:{m['name']}"
        elif m["macro"]:
            yield "macro", m["macro"]
        elif m["word"]:
            yield "word", m["word"].lower()
        elif m["bad"]:
            raise _error(source, line, f"stray {m['bad']!r} in {text!r} ($type:name, @macro)")


def _sequence(
    tokens: list[tuple[str, str]], pos: int, text: str, source: str, line: int
) -> tuple[Phrase, int]:
    """Terms from ``pos`` up to a closer or comma (not consumed)."""
    terms: list[Term] = []
    while pos < len(tokens):
        kind, value = tokens[pos]
        if kind == "word":
            terms.append(Word(value))
        elif kind == "slot":
            slot_type, name = value.split(":")
            terms.append(SlotRef(slot_type, name))
        elif kind == "macro":
            terms.append(MacroRef(value))
        elif value in "[(":
            group, pos = _group(tokens, pos, text, source, line)
            terms.append(group)
            continue
        else:
            break
        pos += 1
    return tuple(terms), pos


def _group(
    tokens: list[tuple[str, str]], pos: int, text: str, source: str, line: int
) -> tuple[Group, int]:
    opener = tokens[pos][1]
    closer = "]" if opener == "[" else ")"
    alternatives: list[Phrase] = []
    pos += 1
    while True:
        alt, pos = _sequence(tokens, pos, text, source, line)
        if not alt:
            raise _error(source, line, f"empty alternative in {opener}{closer} of {text!r}")
        alternatives.append(alt)
        if pos >= len(tokens):
            raise _error(source, line, f"unbalanced {opener!r}: no {closer!r} in {text!r}")
        value = tokens[pos][1]
        pos += 1
        if value == closer:
            return Group(tuple(alternatives), optional=opener == "("), pos
        if value != ",":
            raise _error(source, line, f"{opener!r} closed by {value!r} in {text!r}")


def parse_context(text: str, *, source: str) -> ContextSpec:
    """Parse a context file's text; ``source`` names it in error messages.

    Only syntax and structure are checked here; references, spelling and reachability are
    checked when the context is compiled against an alphabet.

    Raises:
        ContextError: invalid YAML, a missing ``context:`` or ``expressions:``, a wrong type,
            a duplicate key, an empty list, or an expression syntax error.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = " (quote expressions that start with '[' or '@')"
        raise _error(source, where, f"invalid YAML: {problem}{hint}") from None
    if root is None:
        raise _error(source, 1, "empty file: missing 'context:'")
    top = _mapping(root, "the file", source)
    if "context" not in top:
        raise _error(source, _line(root), "missing 'context:'")
    context_node = top["context"][1]
    context = _mapping(context_node, "'context'", source)
    if "expressions" not in context:
        raise _error(source, _line(context_node), "missing 'expressions:' under 'context:'")
    slots = {
        name: SlotType(
            name,
            tuple((p, tuple(p.lower().split())) for p, _ in phrases),
            tuple(ln for _, ln in phrases),
        )
        for name, (_, phrases) in _lists(context, "slots", source).items()
    }
    macros = {
        name: Macro(
            name,
            tuple(parse_expression(p, source=source, line=ln) for p, ln in phrases),
            tuple(ln for _, ln in phrases),
        )
        for name, (_, phrases) in _lists(context, "macros", source).items()
    }
    expressions = tuple(
        Expression(intent, p, parse_expression(p, source=source, line=ln), ln)
        for intent, (_, phrases) in _lists(context, "expressions", source).items()
        for p, ln in phrases
    )
    if not expressions:  # "expressions: {}"
        raise _error(source, context["expressions"][0], "no expressions under 'expressions:'")
    return ContextSpec(source, expressions, slots, macros)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _mapping(node: yaml.Node, what: str, source: str) -> dict[str, tuple[int, yaml.Node]]:
    """A YAML mapping's entries: key -> (the key's line, value node); duplicates refused."""
    if not isinstance(node, yaml.MappingNode):
        raise _error(source, _line(node), f"{what} must be a mapping of names")
    entries: dict[str, tuple[int, yaml.Node]] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode) or not key.value:
            raise _error(source, _line(key), f"a key of {what} must be a name")
        if key.value in entries:
            raise _error(source, _line(key), f"duplicate key {key.value!r} in {what}")
        entries[key.value] = (_line(key), value)
    return entries


def _lists(
    context: dict[str, tuple[int, yaml.Node]], section: str, source: str
) -> dict[str, tuple[int, list[tuple[str, int]]]]:
    """``section`` (absent: empty) as name -> (line, [(phrase, line)...]), each list non-empty."""
    if section not in context:
        return {}
    line, node = context[section]
    if isinstance(node, yaml.ScalarNode) and node.value == "":  # "slots:" with nothing under it
        if section == "expressions":
            raise _error(source, line, "no expressions under 'expressions:'")
        return {}
    out: dict[str, tuple[int, list[tuple[str, int]]]] = {}
    for name, (line, value) in _mapping(node, f"'{section}'", source).items():
        if not isinstance(value, yaml.SequenceNode) or not value.value:
            raise _error(source, line, f"{section[:-1]} {name!r} needs a non-empty list")
        phrases = []
        for item in value.value:
            if not isinstance(item, yaml.ScalarNode):
                hint = " (quote an expression that starts with '[')" if section != "slots" else ""
                raise _error(source, _line(item), f"an entry of {name!r} must be a string{hint}")
            if not item.value.strip():
                raise _error(source, _line(item), f"empty entry in {name!r}")
            phrases.append((item.value, _line(item)))
        out[name] = (line, phrases)
    return out

"""Intents files (TOML and YAML): loading, every validation error, and the cosine matcher."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from streamer.errors import ConfigError, StreamerError
from streamer.intent_matching import IntentMatcher
from streamer.intents import (
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
    MAX_EXAMPLE_CHARS,
    MAX_EXAMPLES,
    MAX_FILE_BYTES,
    MAX_INTENTS,
    Intent,
    IntentsFile,
    IntentsFileError,
    load_intents_file,
)

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / "examples" / "intents" / "home.toml"

TOML = """\
threshold = 0.55
top_k = 2
[intents.lights_on]
examples = ["turn on the lights", "lights on please", "switch the lamp on"]
threshold = 0.6
[intents.weather]
examples = ["what's the weather like", "will it rain tomorrow"]
"""

YAML = """\
threshold: 0.55
top_k: 2
intents:
  lights_on:
    examples: [turn on the lights, lights on please, switch the lamp on]
    threshold: 0.6
  weather:
    - what's the weather like
    - will it rain tomorrow
"""


def _write(tmp_path: Path, text: str | bytes, name: str = "intents.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(IntentsFileError) as info:
        load_intents_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:")
    return message


# --- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text"), [("intents.toml", TOML), ("intents.yaml", YAML)])
def test_toml_and_yaml_load_to_the_same_intents(tmp_path: Path, name: str, text: str) -> None:
    """A TOML file and its YAML twin (with a list-only intent) load to the same intents."""
    path = _write(tmp_path, text, name)
    loaded = load_intents_file(path)
    assert loaded == IntentsFile(
        path,
        (
            Intent(
                "lights_on",
                ("turn on the lights", "lights on please", "switch the lamp on"),
                0.6,
            ),
            Intent("weather", ("what's the weather like", "will it rain tomorrow"), None),
        ),
        0.55,
        2,
    )


def test_yml_suffix_and_defaults(tmp_path: Path) -> None:
    """``.yml`` is YAML; a file without threshold or top_k gets the defaults."""
    path = _write(tmp_path, "intents:\n  stop: [stop, halt]\n", "a.yml")
    loaded = load_intents_file(path)
    assert loaded.threshold == DEFAULT_THRESHOLD
    assert loaded.top_k == DEFAULT_TOP_K
    assert loaded.intents == (Intent("stop", ("stop", "halt"), None),)


def test_sentences_are_flat_in_file_order(tmp_path: Path) -> None:
    """sentences() lists (intent index, sentence) intent by intent, examples in order."""
    loaded = load_intents_file(_write(tmp_path, TOML))
    assert loaded.sentences() == [
        (0, "turn on the lights"),
        (0, "lights on please"),
        (0, "switch the lamp on"),
        (1, "what's the weather like"),
        (1, "will it rain tomorrow"),
    ]


def test_unicode_and_whitespace_collapsed(tmp_path: Path) -> None:
    """Unicode sentences are kept; runs of whitespace collapse to one space."""
    examples = '["  allume la lumière\\t s\'il te plaît ", "明かりをつけて"]'
    text = f'[intents."café"]\nexamples = {examples}\n'
    with pytest.raises(IntentsFileError, match="not a valid name"):
        load_intents_file(_write(tmp_path, text))
    loaded = load_intents_file(_write(tmp_path, text.replace('"café"', "cafe")))
    assert loaded.intents[0].examples == ("allume la lumière s'il te plaît", "明かりをつけて")


def test_duplicate_example_in_one_intent_is_kept_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sentence listed twice in one intent (case aside) is kept once, with a warning."""
    text = '[intents.stop]\nexamples = ["stop", "halt", "Stop", "halt"]\n'
    with caplog.at_level(logging.WARNING, logger="streamer.intents"):
        loaded = load_intents_file(_write(tmp_path, text))
    assert loaded.intents[0].examples == ("stop", "halt")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "'stop'" in warnings[0]
    assert "twice" in warnings[0]


def test_error_is_a_config_error(tmp_path: Path) -> None:
    """IntentsFileError is a ConfigError (a bad file given at start), hence a StreamerError."""
    assert issubclass(IntentsFileError, ConfigError)
    assert issubclass(IntentsFileError, StreamerError)


def test_the_example_home_file_is_valid() -> None:
    """examples/intents/home.toml loads, with varied examples for each home intent."""
    loaded = load_intents_file(HOME)
    names = [intent.name for intent in loaded.intents]
    for name in ("lights_on", "lights_off", "set_timer", "weather", "play_music", "stop"):
        assert name in names
    assert {"volume_up", "volume_down"} <= set(names)
    assert all(len(intent.examples) >= 5 for intent in loaded.intents)
    assert len(loaded.sentences()) == sum(len(i.examples) for i in loaded.intents)


# --- validation errors ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is one line naming the file."""
    message = _error(tmp_path / "nope.toml")
    assert "cannot read" in message


def test_unknown_suffix(tmp_path: Path) -> None:
    """Only .toml, .yaml and .yml are read."""
    assert "unknown file type '.json'" in _error(_write(tmp_path, "{}", "intents.json"))


def test_file_too_large(tmp_path: Path) -> None:
    """A file over MAX_FILE_BYTES is refused before parsing."""
    path = _write(tmp_path, b"#" * (MAX_FILE_BYTES + 1))
    assert f"larger than {MAX_FILE_BYTES} bytes" in _error(path)


def test_not_utf8(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are refused with the offset."""
    assert "not UTF-8 (byte 2)" in _error(_write(tmp_path, b"# \xff\n"))


def test_toml_syntax_error_has_the_line(tmp_path: Path) -> None:
    """A TOML syntax error names the line."""
    path = _write(tmp_path, '[intents.a]\nexamples = ["x",\n\n= 3\n')
    message = _error(path)
    assert message.startswith(f"{path}:4: invalid TOML:")


def test_toml_duplicate_key(tmp_path: Path) -> None:
    """A TOML key or table given twice is a duplicate, with its line."""
    text = '[intents.a]\nexamples = ["x"]\n[intents.a]\nexamples = ["y"]\n'
    path = _write(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}:3: invalid TOML: duplicate key or table")
    text = '[intents.a]\nexamples = ["x"]\nexamples = ["y"]\n'
    assert "duplicate key" in _error(_write(tmp_path, text))


def test_yaml_syntax_error_has_the_line(tmp_path: Path) -> None:
    """A YAML syntax error names the line."""
    path = _write(tmp_path, "intents:\n  a: [x, y\n  b: z\n", "i.yaml")
    assert _error(path).startswith(f"{path}:")
    assert "invalid YAML" in _error(path)


def test_yaml_duplicate_intent(tmp_path: Path) -> None:
    """A YAML intent given twice is an error at the second one (PyYAML alone keeps the last)."""
    path = _write(
        tmp_path, "intents:\n  lights_on: [a]\n  weather: [b]\n  lights_on: [c]\n", "i.yaml"
    )
    assert _error(path) == f"{path}:4: invalid YAML: duplicate key 'lights_on'"


def test_yaml_duplicate_top_level_key(tmp_path: Path) -> None:
    """A top-level YAML key given twice is an error too."""
    path = _write(tmp_path, "threshold: 0.5\nintents:\n  a: [x]\nthreshold: 0.7\n", "i.yaml")
    assert _error(path) == f"{path}:4: invalid YAML: duplicate key 'threshold'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no intents"),
        ("threshold = 0.5\n", "no intents"),
        ("[intents]\n", "no intents"),
        ('intents = "a"\n', "'intents' must be a table of intent names"),
        ('colour = 1\n[intents]\na = ["x"]\n', "unknown key 'colour'"),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, expected: str) -> None:
    """No intents, a wrong 'intents' type or an unknown top-level key are one-line errors."""
    assert expected in _error(_write(tmp_path, text))


def test_empty_yaml_and_non_mapping(tmp_path: Path) -> None:
    """An empty YAML file has no intents; a list at the top is not an intents file."""
    assert "no intents" in _error(_write(tmp_path, "", "i.yaml"))
    assert "must be a mapping" in _error(_write(tmp_path, "- a\n", "i.yaml"))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("examples = []\n", "intent 'lights_on' has no example sentences"),
        ("threshold = 0.5\n", "intent 'lights_on' has no example sentences"),
        ('examples = "turn on"\n', "intent 'lights_on': examples must be a list"),
        ('examples = ["x"]\ncolour = "red"\n', "intent 'lights_on': unknown key 'colour'"),
        ('examples = ["x", 3]\n', "intent 'lights_on': example 2 is not a string (int 3"),
        ('examples = ["x", "  \\t "]\n', "intent 'lights_on': example 2 is empty"),
        ('examples = [""]\n', "intent 'lights_on': example 1 is empty"),
        (
            f'examples = ["{"a" * (MAX_EXAMPLE_CHARS + 1)}"]\n',
            f"intent 'lights_on': example 1 is longer than {MAX_EXAMPLE_CHARS} chars",
        ),
        ('examples = ["x"]\nthreshold = 1.5\n', "intent 'lights_on': threshold must be a number"),
        ('examples = ["x"]\nthreshold = "high"\n', "intent 'lights_on': threshold must be"),
        ('examples = ["x"]\nthreshold = nan\n', "intent 'lights_on': threshold must be"),
        ('examples = ["x"]\nthreshold = true\n', "intent 'lights_on': threshold must be"),
    ],
)
def test_intent_errors(tmp_path: Path, body: str, expected: str) -> None:
    """Each problem with one intent is a one-line error that names the intent."""
    message = _error(
        _write(tmp_path, f"[intents.weather]\nexamples = ['rain']\n[intents.lights_on]\n{body}")
    )
    assert expected in message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("threshold = -1.01\n", "threshold must be a number in [-1, 1], not -1.01"),
        ("threshold = inf\n", "threshold must be a number in [-1, 1], not inf"),
        ("top_k = 0\n", "top_k must be an integer in 1..50, not 0"),
        ("top_k = 51\n", "top_k must be an integer in 1..50, not 51"),
        ("top_k = 2.0\n", "top_k must be an integer in 1..50, not 2.0"),
    ],
)
def test_global_threshold_and_top_k(tmp_path: Path, header: str, expected: str) -> None:
    """The global threshold is a number in [-1, 1] and top_k an integer in 1..50."""
    path = _write(tmp_path, f'{header}[intents.a]\nexamples = ["x"]\n')
    assert _error(path) == f"{path}: {expected}"


def test_thresholds_at_the_bounds_are_accepted(tmp_path: Path) -> None:
    """-1 and 1 (integers too) are valid thresholds; 1 and 50 valid top_k."""
    text = 'threshold = -1\ntop_k = 50\n[intents.a]\nexamples = ["x"]\nthreshold = 1\n'
    loaded = load_intents_file(_write(tmp_path, text))
    assert (loaded.threshold, loaded.top_k, loaded.intents[0].threshold) == (-1.0, 50, 1.0)


def test_same_example_in_two_intents(tmp_path: Path) -> None:
    """One sentence (case and spacing aside) in two intents names both intents."""
    text = (
        '[intents.lights_on]\nexamples = ["turn on the lights"]\n'
        '[intents.lamp]\nexamples = ["a lamp", "Turn on  the LIGHTS"]\n'
    )
    path = _write(tmp_path, text)
    assert _error(path) == (
        f"{path}: example 'Turn on the LIGHTS' is in both intent 'lights_on' and intent "
        "'lamp' (ambiguous)"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ('"lights on"', "intent name 'lights on' is not a valid name"),
        ('".."', "intent name '..' is not a valid name"),
        (f'"{"n" * 65}"', "is not a valid name (1-64 of A-Za-z0-9_.-)"),
        ('"a\\nb"', "intent name 'a\\nb' is not a valid name"),
    ],
)
def test_intent_names_are_protocol_names(tmp_path: Path, name: str, expected: str) -> None:
    """Intent names must be protocol names (they travel as labels); the message stays one line."""
    path = _write(tmp_path, f'[intents]\n{name} = ["x"]\n')
    assert expected in _error(path)


def test_yaml_boolean_name_and_example(tmp_path: Path) -> None:
    """YAML's on/yes read as booleans give a hint to quote them."""
    path = _write(tmp_path, "intents:\n  on: [x]\n", "i.yaml")
    assert "intent name True is not a string (quote it" in _error(path)
    path = _write(tmp_path, "intents:\n  confirm: [sure, yes]\n", "i.yaml")
    assert "intent 'confirm': example 2 is not a string (bool True; quote it)" in _error(path)


def test_yaml_unknown_intent_key(tmp_path: Path) -> None:
    """A YAML intent with an unknown key names it."""
    path = _write(tmp_path, "intents:\n  a:\n    examples: [x]\n    sample: [y]\n", "i.yaml")
    assert _error(path) == (
        f"{path}: intent 'a': unknown key 'sample' (allowed: examples, threshold)"
    )


def test_too_many_intents(tmp_path: Path) -> None:
    """More than MAX_INTENTS intents are refused."""
    body = "".join(f'i{n} = ["s{n}"]\n' for n in range(MAX_INTENTS + 1))
    path = _write(tmp_path, f"[intents]\n{body}")
    assert _error(path) == f"{path}: {MAX_INTENTS + 1} intents, more than {MAX_INTENTS}"


def test_too_many_examples(tmp_path: Path) -> None:
    """More than MAX_EXAMPLES sentences in all are refused, however they are spread."""
    half = MAX_EXAMPLES // 2 + 1
    a = ", ".join(f'"a{n}"' for n in range(half))
    b = ", ".join(f'"b{n}"' for n in range(half))
    path = _write(tmp_path, f"[intents]\na = [{a}]\nb = [{b}]\n")
    assert _error(path) == f"{path}: more than {MAX_EXAMPLES} example sentences in all"


# --- matcher --------------------------------------------------------------------------------

E = np.eye(4, dtype=np.float32)


def _file(*intents: Intent, threshold: float = 0.5, top_k: int = 3) -> IntentsFile:
    return IntentsFile(Path("t.toml"), intents, threshold, top_k)


def _abc(**kwargs: float | int) -> tuple[IntentsFile, np.ndarray]:
    """Three intents on three orthogonal axes; 'a' has two examples (e0 and e3)."""
    f = _file(
        Intent("a", ("a0", "a3"), None),
        Intent("b", ("b1",), None),
        Intent("c", ("c2",), None),
        **kwargs,  # type: ignore[arg-type]
    )
    return f, np.stack([E[0], E[3], E[1], E[2]])


def test_exact_scores_and_nbest() -> None:
    """An embedding between two axes scores each intent by its cosine, best first."""
    matcher = IntentMatcher.build(*_abc())
    result = matcher.match(E[1] * 0.8 + E[0] * 0.6)
    assert result.intent == "b"
    assert not result.abstain
    assert result.score == pytest.approx(0.8)
    assert [name for name, _ in result.nbest] == ["b", "a", "c"]
    assert [s for _, s in result.nbest] == pytest.approx([0.8, 0.6, 0.0])
    assert result.margin == pytest.approx(0.2)


def test_intent_scores_its_closest_example() -> None:
    """With max scoring, either of an intent's examples matches it fully."""
    matcher = IntentMatcher.build(*_abc())
    for axis in (0, 3):
        result = matcher.match(E[axis] * 5.0)  # not unit: normalised
        assert result.intent == "a"
        assert result.score == pytest.approx(1.0)


def test_max_and_centroid_scoring_differ() -> None:
    """The centroid of two far-apart examples is near neither of them."""
    f, vectors = _abc()
    by_max = IntentMatcher.build(f, vectors).match(E[3])
    by_centroid = IntentMatcher.build(f, vectors, scoring="centroid").match(E[3])
    assert by_max.score == pytest.approx(1.0)
    assert by_centroid.score == pytest.approx(1 / math.sqrt(2))
    assert by_max.intent == "a"
    assert by_centroid.intent == "a"
    assert by_centroid.margin == pytest.approx(1 / math.sqrt(2))
    between = (E[1] * 0.75 + E[3] * 0.66).astype(np.float32)
    assert IntentMatcher.build(f, vectors).match(between).intent == "b"
    assert IntentMatcher.build(f, vectors, scoring="centroid").match(between).intent == "b"
    closer_to_a = (E[1] * 0.7 + E[3] * 0.72).astype(np.float32)
    assert IntentMatcher.build(f, vectors).match(closer_to_a).intent == "a"
    assert IntentMatcher.build(f, vectors, scoring="centroid").match(closer_to_a).intent == "b"


def test_abstains_below_the_threshold() -> None:
    """A best score below the global threshold abstains, with the n-best still given."""
    matcher = IntentMatcher.build(*_abc(threshold=0.9))
    result = matcher.match(E[1] * 0.8 + E[0] * 0.6)
    assert result.abstain
    assert result.intent is None
    assert result.score == pytest.approx(0.8)
    assert [name for name, _ in result.nbest] == ["b", "a", "c"]


def test_per_intent_threshold_overrides_the_global_one() -> None:
    """An intent's own threshold decides for it, in either direction."""
    f = _file(
        Intent("strict", ("s",), 0.9),
        Intent("loose", ("l",), 0.3),
        Intent("plain", ("p",), None),
        threshold=0.6,
    )
    matcher = IntentMatcher.build(f, E[:3])
    assert matcher.match(E[0] * 0.8 + E[3] * 0.6).abstain  # 0.8 < 0.9 although > 0.6
    loose = matcher.match(E[1] * 0.4 + E[3] * 0.9)  # 0.4: below global, above its own
    assert (loose.intent, loose.abstain) == ("loose", False)
    assert matcher.match(E[2] * 0.5 + E[3] * 0.866).abstain  # 0.5 < global 0.6
    assert matcher.match(E[2] * 0.7 + E[3] * 0.714).intent == "plain"


def test_nbest_length_is_top_k() -> None:
    """nbest lists top_k intents, or all of them when there are fewer."""
    f, vectors = _abc(top_k=2)
    assert len(IntentMatcher.build(f, vectors).match(E[0]).nbest) == 2
    f, vectors = _abc(top_k=10)
    assert len(IntentMatcher.build(f, vectors).match(E[0]).nbest) == 3


def test_margin_with_one_intent_is_the_score() -> None:
    """With a single intent the margin is its score."""
    matcher = IntentMatcher.build(_file(Intent("only", ("x",), None)), E[:1])
    result = matcher.match(E[0] * 0.6 + E[1] * 0.8)
    assert result.margin == pytest.approx(0.6)
    assert result.score == pytest.approx(0.6)


@pytest.mark.parametrize(
    "vector",
    [
        np.zeros(4, dtype=np.float32),
        np.array([np.nan, 1, 0, 0], dtype=np.float32),
        np.array([np.inf, 0, 0, 0], dtype=np.float32),
    ],
)
def test_zero_or_non_finite_embedding_abstains(vector: np.ndarray) -> None:
    """A zero, NaN or infinite embedding abstains with score 0 instead of raising."""
    result = IntentMatcher.build(*_abc(threshold=-1.0)).match(vector)
    assert (result.intent, result.score, result.abstain, result.nbest) == (None, 0.0, True, ())


def test_huge_finite_values_keep_their_direction() -> None:
    """Components whose squares overflow float32 still give the right cosine."""
    f, vectors = _abc()
    matcher = IntentMatcher.build(f, vectors * np.float32(1e30))
    result = matcher.match(np.array([0, 3e37, 0, 0], dtype=np.float32))
    assert result.intent == "b"
    assert result.score == pytest.approx(1.0)


def test_match_many_equals_match() -> None:
    """A batch gives the same results as one by one, an unusable row included."""
    matcher = IntentMatcher.build(*_abc())
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((6, 4)).astype(np.float32)
    batch[2] = 0.0
    assert matcher.match_many(batch) == [matcher.match(row) for row in batch]
    assert matcher.match_many(np.zeros((0, 4), dtype=np.float32)) == []


def test_shape_mismatch_raises() -> None:
    """Example vectors must be one row per example; embeddings must have the examples' size."""
    f, vectors = _abc()
    with pytest.raises(ValueError, match=r"shape \(3, 4\) for 4 example sentences"):
        IntentMatcher.build(f, vectors[:3])
    with pytest.raises(ValueError, match="expected"):
        IntentMatcher.build(f, vectors[0])
    matcher = IntentMatcher.build(f, vectors)
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        matcher.match(np.ones(5, dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected \(n, 4\)"):
        matcher.match_many(np.ones((2, 3), dtype=np.float32))


def test_unusable_example_vector_or_scoring_raises() -> None:
    """A zero example row names its sentence; an unknown scoring is refused."""
    f, vectors = _abc()
    vectors[2] = 0.0
    with pytest.raises(ValueError, match=r"example vector 2 \('b': 'b1'\) is zero"):
        IntentMatcher.build(f, vectors)
    with pytest.raises(ValueError, match="unknown scoring"):
        IntentMatcher.build(*_abc(), scoring="mean")  # type: ignore[arg-type]


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    """A YAML merge (<<) is not a duplicate: the intent's own key wins over the merged one."""
    text = (
        "intents:\n"
        "  a: &common {examples: [x], threshold: 0.6}\n"
        "  b:\n"
        "    <<: *common\n"
        "    examples: [y]\n"
    )
    loaded = load_intents_file(_write(tmp_path, text, "i.yaml"))
    assert loaded.intents[1] == Intent("b", ("y",), 0.6)


def test_yaml_unhashable_key(tmp_path: Path) -> None:
    """A YAML key that is a list is invalid YAML for an intents file, with its line."""
    path = _write(tmp_path, "intents:\n  a: [x]\n  ? [b, c]\n  : [y]\n", "i.yaml")
    assert _error(path).startswith(f"{path}:3: invalid YAML: found unhashable key")

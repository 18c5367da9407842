"""The package layout holds: a pure core, a runtime without torch, no import cycles, short modules.

The core is the top level of ``streamer/`` (less ``app`` and ``cli``, the I/O entry points): it
has no sockets, threads, event loop or inference library, so importing it must not pull them in.
The runtime (all of ``streamer``) never imports torch or transformers; those belong to
``streamer_export`` and ``streamer_training``.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "streamer"
#: Top-level modules of ``streamer`` that are not core: the I/O entry points.
NOT_CORE = ("app", "cli", "__main__")
#: What the core may not import, directly or through another module.
CORE_FORBIDS = ("asyncio", "websockets", "onnxruntime", "sounddevice", "torch", "transformers")
#: What no module of the runtime may import.
RUNTIME_FORBIDS = ("torch", "transformers")
#: Lines a module may have at most (the house style's "modules of about 400 lines").
MAX_MODULE_LINES = 400

#: Imports each module in turn and reports, per module, the forbidden modules it brought in.
_PROBE = """
import importlib, json, sys
forbidden, found = sys.argv[1].split(","), {}
for name in sys.argv[2:]:
    before = set(sys.modules)
    importlib.import_module(name)
    new = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in forbidden)
    if new:
        found[name] = sorted({m.split(".")[0] for m in new})
print(json.dumps(found))
"""


def module_names(package: Path, *, top_level_only: bool = False) -> list[str]:
    """Dotted names of the modules under ``package`` (``__main__`` left out: it runs the CLI)."""
    names = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__main__" or (top_level_only and len(parts) > 2):
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imported_by(modules: list[str], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Import ``modules`` in order in a fresh interpreter; {module: forbidden packages it added}.

    A forbidden package is blamed on the first module whose import brought it in.
    """
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(forbidden), *modules],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, list[str]] = json.loads(result.stdout)
    return found


def test_core_imports_no_io_or_inference_library() -> None:
    """No core module brings in asyncio, websockets, onnxruntime, sounddevice, torch, transformers.

    Each core module is imported in a fresh interpreter of its own, so a violation names the
    module that imports it (itself or through another module).
    """
    core = [
        name
        for name in module_names(PACKAGE, top_level_only=True)
        if name != "streamer" and name.rsplit(".", 1)[1] not in NOT_CORE
    ]
    assert "streamer.segmenter" in core
    violations = {}
    for name in core:
        violations.update(imported_by([name], CORE_FORBIDS))
    assert violations == {}, f"core modules importing I/O or inference libraries: {violations}"


def test_runtime_never_imports_torch_or_transformers() -> None:
    """Importing every module of ``streamer``, subpackages, app and cli included, needs no torch."""
    modules = module_names(PACKAGE)
    assert {"streamer.app", "streamer.cli", "streamer.serve.websocket"} <= set(modules)
    assert imported_by(modules, RUNTIME_FORBIDS) == {}


def import_graph(package: Path) -> dict[str, set[str]]:
    """Static import graph of ``package``: {module: modules of the package it imports}.

    Every ``import`` and ``from ... import`` statement counts, wherever it is (function bodies and
    ``if TYPE_CHECKING:`` blocks included). ``from pkg import name`` points at ``pkg.name`` when
    that is a module, else at ``pkg``.
    """
    modules = set(module_names(package))
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name in modules:
        path = package.parent / (name.replace(".", "/") + ".py")
        is_package = not path.is_file()
        if is_package:
            path = package.parent / name.replace(".", "/") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_find_cycle_sees_a_cycle_and_its_absence() -> None:
    """The cycle finder itself: a three-module ring is found, a chain is not."""
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(ring) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_resolves_relative_and_from_imports(tmp_path: Path) -> None:
    """``from pkg import mod``, relative imports and TYPE_CHECKING imports are edges."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.c import X\n"
    )
    (pkg / "sub" / "__init__.py").write_text("from ..a import thing\n")
    (pkg / "sub" / "c.py").write_text("def f():\n    import pkg.a\n")
    graph = import_graph(pkg)
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": {"pkg.a"},
        "pkg.sub.c": {"pkg.a"},
    }
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]


@pytest.mark.parametrize("package", ["streamer", "streamer_export", "streamer_training"])
def test_no_import_cycles(package: str) -> None:
    """No module of the package imports, directly or through others, a module importing it."""
    cycle = find_cycle(import_graph(REPO / package))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_modules_are_at_most_400_lines() -> None:
    """Every module of ``streamer`` stays within the house style's length."""
    long = {
        str(path.relative_to(REPO)): n
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_module_names_cover_subpackages() -> None:
    """The walk finds what pkgutil finds: every module of every subpackage."""
    walked = {
        info.name
        for info in pkgutil.walk_packages([str(PACKAGE)], prefix="streamer.")
        if not info.name.endswith("__main__")
    }
    assert walked <= set(module_names(PACKAGE))


def run_suite_without_shared(tmp_path: Path, *, ci: str | None, present: bool = False) -> str:
    """Run a two-test suite under tests/conftest.py with the recordings pointed at a folder.

    One test reads the recordings (its module names the folder ``AUDIO``), one does not. The
    folder is absent unless ``present``; ``ci`` is the ``CI`` variable (None: unset). Returns
    the exit code and output as ``"rc=N\\n..."``.
    """
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (suite / "test_reads.py").write_text(
        "from conftest import SHARED_AUDIO as AUDIO\n\n\n"
        "def test_reads_recordings():\n    assert AUDIO.is_dir()\n"
    )
    (suite / "test_other.py").write_text("def test_needs_nothing():\n    pass\n")
    shared = tmp_path / "shared-audio"
    if present:
        shared.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["STREAMER_SHARED_AUDIO"] = str(shared)
    if ci is not None:
        env["CI"] = ci
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(suite)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    return f"rc={result.returncode}\n{result.stdout}{result.stderr}"


def test_missing_recordings_fail_in_ci_naming_the_folder(tmp_path: Path) -> None:
    """CI=true and no recordings: the run fails, one line names the missing folder."""
    out = run_suite_without_shared(tmp_path, ci="true")
    assert out.startswith("rc=4\n"), out
    assert f"the shared speech recordings are missing: {tmp_path / 'shared-audio'}" in out
    assert "passed" not in out
    assert "skipped" not in out


def test_missing_recordings_skip_outside_ci_with_one_reason(tmp_path: Path) -> None:
    """Outside CI the tests reading them are skipped with the reason; the rest still run."""
    out = run_suite_without_shared(tmp_path, ci=None)
    assert out.startswith("rc=0\n"), out
    assert "1 passed, 1 skipped" in out
    assert out.count(f"needs the shared speech recordings, absent: {tmp_path}") == 1


def test_present_recordings_run_in_ci(tmp_path: Path) -> None:
    """With the folder there, CI runs the test reading it like any other."""
    out = run_suite_without_shared(tmp_path, ci="true", present=True)
    assert out.startswith("rc=0\n"), out
    assert "2 passed" in out

"""The stream registry: one admission for every source, names never taken over; no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from onnx_graphs import write_bundle

from streamer import protocol as proto
from streamer.app import build_services
from streamer.config import Config, EngineConfig
from streamer.errors import ProtocolError
from streamer.streams.registry import StreamRegistry

PACKAGE = Path(__file__).resolve().parents[1] / "streamer"


class _Pipeline:
    def __init__(self, backlog: int = 0) -> None:
        self.backlog = backlog
        self.finished = False

    async def finish(self) -> None:
        self.finished = True


def test_a_live_name_is_refused_with_stream_in_use() -> None:
    """A second admission of a live name fails the same way, claimed or with a pipeline."""
    streams = StreamRegistry()
    claim = streams.admit("mic")
    for attached in (False, True):
        if attached:
            claim.attach(_Pipeline(backlog=3))
        with pytest.raises(ProtocolError) as info:
            streams.admit("mic")
        assert (info.value.code, info.value.close_code) == (proto.STREAM_IN_USE, 1008)
        assert "'mic' is already live" in str(info.value)
    assert list(streams) == ["mic"]
    assert len(streams) == 1
    assert streams.backlogs() == {"mic": 3}
    claim.end()
    assert "mic" not in streams
    streams.admit("mic").end()


def test_an_ended_claim_never_removes_the_next_owner() -> None:
    """end() is idempotent and only frees the name its own claim holds."""
    streams = StreamRegistry()
    old = streams.admit("s")
    old.end()
    new = streams.admit("s")
    old.end()
    assert "s" in streams
    with pytest.raises(RuntimeError):
        old.attach(_Pipeline())
    new.attach(_Pipeline())
    with pytest.raises(RuntimeError):
        new.attach(_Pipeline())
    assert streams.backlogs() == {"s": 0}
    assert len(streams.pipelines()) == 1


def test_unused_name_skips_live_names() -> None:
    """unused_name counts up and never returns a live stream's name."""
    streams = StreamRegistry()
    streams.admit("wyoming-2")
    assert [streams.unused_name("wyoming") for _ in range(2)] == ["wyoming-1", "wyoming-3"]


def test_the_daemons_registry_refuses_new_streams_when_busy(tmp_path: Path) -> None:
    """Services' registry admits by the engine's load too: busy (1013), and the name stays free."""
    config = Config(engine=EngineConfig(max_pending_utterances=1))
    services = build_services(config, {"ctc": write_bundle(tmp_path / "ctc")})
    try:
        services.runner.reserve()
        with pytest.raises(ProtocolError) as info:
            services.streams.admit("s")
        assert (info.value.code, info.value.close_code) == ("busy", 1013)
        assert "s" not in services.streams
        services.runner.release()
        services.streams.admit("s").end()
    finally:
        services.runner.close()


def _imports(path: Path, modules: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):  # TYPE_CHECKING imports included
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(n for n in names if n in modules and n != "streamer")
    return found


def test_no_import_cycles_in_the_runtime() -> None:
    """No module of streamer/ imports itself back, directly or through others."""
    files = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }
    graph = {m: _imports(p, set(files)) - {m} for m, p in files.items()}
    cycles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            module, path = stack.pop()
            for nxt in graph[module]:
                if nxt == start:
                    cycles.append(" -> ".join((*path, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*path, nxt)))
    assert not cycles, cycles

"""The event journal: what it records, durability policies, rotation, gaps, and reading it back."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from live_server import collect, config, running, send_audio, speech, start_msg
from onnx_graphs import write_bundle
from websockets.asyncio.client import connect

from streamer import cli, protocol as proto
from streamer.errors import ConfigError
from streamer.pubsub import Hub
from streamer.serve.journal import (
    Journal,
    JournalConfig,
    journal_files,
    parse_since,
    print_journal,
    read_journal,
)


def event(i: int, stream: str = "s") -> str:
    return proto.Ended(stream=stream, n_utterances=i).encode()


def journal(path: Path, hub: Hub[str], **fields: object) -> Journal:
    return Journal.open(JournalConfig(path=str(path), **fields), hub)  # type: ignore[arg-type]


@pytest.mark.parametrize("fsync", ["none", "interval", "always"])
def test_every_published_event_is_recorded_in_order(tmp_path: Path, fsync: str) -> None:
    """Each event published on the hub becomes one record, seq 1, 2, ..., under every policy."""
    hub: Hub[str] = Hub()
    j = journal(tmp_path / "j.jsonl", hub, fsync=fsync, fsync_interval_s=0.05)
    for i in range(50):
        hub.publish("ended", "s", event(i))
    j.close()
    j.close()  # idempotent
    records = list(read_journal(tmp_path / "j.jsonl"))
    assert [r.seq for r in records] == list(range(1, 51))
    assert [r.event["n_utterances"] for r in records] == list(range(50))
    assert all(abs(r.time - time.time()) < 60 for r in records)
    assert (tmp_path / "j.jsonl").stat().st_mode & 0o777 == 0o600
    assert j.n_written == 50
    assert j.last_seq == 50
    assert len(hub) == 0


def test_seq_continues_across_restarts_and_torn_lines(tmp_path: Path) -> None:
    """A reopened journal goes on from the last seq; a torn line from a crash is skipped."""
    path = tmp_path / "j.jsonl"
    hub: Hub[str] = Hub()
    j = journal(path, hub)
    hub.publish("ended", "s", event(1))
    j.close()
    with path.open("ab") as f:
        f.write(b'{"seq":2,"time":1.0,"event":{"type":"ut')  # the daemon died mid-write
    j = journal(path, hub)
    hub.publish("ended", "s", event(2))
    j.close()
    records = list(read_journal(path))
    assert [r.seq for r in records] == [1, 2]
    assert [r.event["n_utterances"] for r in records] == [1, 2]
    assert len(path.read_text().splitlines()) == 3


def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    """Past max_bytes the file rotates to .1, .2, ...; keep_files stay; reads come in order."""
    path = tmp_path / "j.jsonl"
    hub: Hub[str] = Hub()
    j = journal(path, hub, max_bytes=600, keep_files=2, fsync="none")
    for i in range(100):
        hub.publish("ended", "s", event(i))
        if i % 5 == 4:
            time.sleep(0.002)  # let the writer take small batches
    j.close()
    files = journal_files(path)
    assert [f.name for f in files] == ["j.jsonl.2", "j.jsonl.1", "j.jsonl"]
    seqs = [r.seq for r in read_journal(path)]
    assert seqs == sorted(seqs)
    assert seqs[-1] == 100
    assert seqs[0] > 1  # the oldest files were deleted
    assert all(f.stat().st_size <= 600 for f in files)


def test_a_slow_disk_loses_the_oldest_and_records_the_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the writer falls behind queue_len, a dropped record stands for what was lost."""
    release, syncing = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        syncing.set()
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    hub: Hub[str] = Hub()
    j = journal(tmp_path / "j.jsonl", hub, fsync="always", queue_len=3)
    hub.publish("ended", "s", event(0))
    assert syncing.wait(10)
    for i in range(1, 11):
        hub.publish("ended", "s", event(i))
    release.set()
    j.close()
    events = [r.event for r in read_journal(tmp_path / "j.jsonl")]
    assert events[0]["n_utterances"] == 0
    assert events[1] == {"type": "dropped", "count": 7}
    assert [e["n_utterances"] for e in events[2:]] == [8, 9, 10]
    assert j.n_lost == 7


def test_a_failing_disk_costs_records_not_the_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write error is logged once, records are counted as failed, and writing resumes."""
    caplog.set_level(logging.INFO, "streamer.serve.journal")
    hub: Hub[str] = Hub()
    j = journal(tmp_path / "j.jsonl", hub, fsync="none")
    real = j._file

    class Full(io.RawIOBase):
        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    j._file = Full()  # type: ignore[assignment]
    for i in range(3):
        hub.publish("ended", "s", event(i))
        time.sleep(0.05)
    j._file = real
    hub.publish("ended", "s", event(99))
    j.close()
    assert j.n_failed == 3
    assert caplog.text.count("write failed") == 1
    assert "writing again" in caplog.text
    records = list(read_journal(tmp_path / "j.jsonl"))
    assert [(r.seq, r.event["n_utterances"]) for r in records] == [(4, 99)]  # the gap shows


def test_since_selects_by_seq_or_time(tmp_path: Path) -> None:
    """--since takes a seq (integer) or a time (ISO 8601 or Unix seconds); bad text is refused."""
    path = tmp_path / "j.jsonl"
    lines = [
        json.dumps({"seq": i, "time": 1000.0 + i, "event": json.loads(event(i, f"s{i % 2}"))})
        for i in range(1, 7)
    ]
    path.write_text("\n".join(lines) + "\n")
    assert [r.seq for r in read_journal(path, since_seq=4)] == [5, 6]
    assert [r.seq for r in read_journal(path, since_time=1005.0)] == [5, 6]
    assert parse_since("42") == (42, None)
    assert parse_since("1714563000.5") == (None, 1714563000.5)
    assert parse_since("2024-05-01T12:00:00Z") == (None, 1714564800.0)
    with pytest.raises(ConfigError, match="neither"):
        parse_since("yesterday")
    out = io.StringIO()
    assert print_journal(path, since="2", stream="s1", out=out) == 0
    assert [json.loads(line)["seq"] for line in out.getvalue().splitlines()] == [3, 5]
    with pytest.raises(ConfigError, match="no journal"):
        print_journal(tmp_path / "none.jsonl", since=None, stream=None, out=out)
    with pytest.raises(ConfigError, match="no journal"):
        print_journal(None, since=None, stream=None, out=out)


def test_journal_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`streamer journal --path P --since SEQ` prints the later records, one JSON line each."""
    hub: Hub[str] = Hub()
    j = journal(tmp_path / "j.jsonl", hub)
    for i in range(5):
        hub.publish("ended", "s", event(i))
    j.close()
    assert cli.main(["journal", "--path", str(tmp_path / "j.jsonl"), "--since", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [4, 5]
    assert cli.main(["journal", "--path", str(tmp_path / "j.jsonl"), "--since", "soon"]) == 2


def test_bad_journal_settings() -> None:
    """Unknown fsync policies and non-positive sizes are configuration errors."""
    bad: list[dict[str, Any]] = [{"fsync": "sometimes"}, {"max_bytes": 0}, {"keep_files": -1}]
    for fields in bad:
        with pytest.raises(ConfigError):
            JournalConfig(**fields)
    with pytest.raises(ConfigError, match="not set"):
        Journal.open(JournalConfig(), Hub())


async def test_daemon_journal_matches_what_clients_got(tmp_path: Path) -> None:
    """A live stream's events land in the journal exactly as its client received them."""
    models = {"ctc": write_bundle(tmp_path / "ctc")}
    path = tmp_path / "events.jsonl"
    async with running(config(journal={"path": str(path)}), models) as d:
        d.services.journal = Journal.open(d.services.config.journal, d.services.hub)
        async with connect(d.url + proto.INGEST_PATH) as ws:
            await ws.send(start_msg("kitchen"))
            await send_audio(ws, speech(seconds=11))
            await ws.send(json.dumps({"type": "end"}))
            got = await collect(ws)
        await asyncio.sleep(0.05)
        d.services.journal.close()
    recorded = [r.event for r in read_journal(path)]
    assert [e["type"] for e in got].count("utterance") >= 2
    assert got[0]["type"] == "started"  # published too: subscribers see streams come and go
    assert recorded == got

"""An optional JSONL journal of every event the daemon emits, for consumers that were away.

The journal is one more subscriber of the hub, drained by its own thread: publishing never
waits for the disk. Each line is one record::

    {"seq":1041,"time":1714563000.125,"event":{"type":"utterance","stream":"kitchen",...}}

``seq`` counts records from 1 and goes on across restarts and rotations; ``time`` is when the
journal wrote the record (Unix seconds). If the disk falls behind by more than
``journal.queue_len`` events, the oldest are lost and a ``{"type":"dropped","count":N}`` event is
recorded in their place, so a reader sees the gap. A crash can leave a torn last line; the next
start ends it with a newline and readers skip lines that do not parse.

Durability follows ``journal.fsync``: ``none`` (written to the OS after each batch; survives a
daemon crash, not a power loss), ``interval`` (also fsync at most every ``fsync_interval_s``) or
``always`` (fsync after every batch, before the next one is written).

Rotation: when the file reaches ``max_bytes`` it becomes ``PATH.1`` (``PATH.1`` becomes
``PATH.2``, and so on; the oldest beyond ``keep_files`` is deleted). :func:`read_journal` reads
them oldest first. ``streamer journal --since SEQ|TIME`` prints what a consumer missed.

With an event bus (``bus.url``, :mod:`streamer.serve.bus`) the bus is the journal of every
replica: ``streamer journal`` then reads it, in the same line format, ``seq`` being the bus
cursor and ``time`` when the bus appended the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, TextIO

from streamer.errors import ConfigError
from streamer.pubsub import Hub, Subscriber
from streamer.serving_config import BusConfig, JournalConfig

log = logging.getLogger(__name__)

_TAIL_BYTES: Final = 1 << 16


@dataclass(frozen=True)
class Record:
    """One journal line: its sequence number, when it was written, and the event."""

    seq: int
    time: float
    event: dict[str, Any]


def parse_record(line: str | bytes) -> Record | None:
    """Read one journal line; None for a line that is not a record (torn or foreign)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    seq, when, event = obj.get("seq"), obj.get("time"), obj.get("event")
    if (
        not isinstance(seq, int)
        or isinstance(seq, bool)
        or not isinstance(when, int | float)
        or isinstance(when, bool)
        or not isinstance(event, dict)
        or not isinstance(event.get("type"), str)
    ):
        return None
    return Record(seq=seq, time=float(when), event=event)


def journal_files(path: Path) -> list[Path]:
    """The journal's files, oldest first: ``PATH.N`` .. ``PATH.1``, then ``PATH``."""
    rotated = []
    for candidate in path.parent.glob(path.name + ".*"):
        suffix = candidate.name.removeprefix(path.name + ".")
        if suffix.isdigit():
            rotated.append((int(suffix), candidate))
    files = [p for _, p in sorted(rotated, reverse=True)]
    return [*files, path] if path.exists() else files


def read_journal(
    path: Path, *, since_seq: int | None = None, since_time: float | None = None
) -> Iterator[Record]:
    """Yield the records after ``since_seq`` and at or after ``since_time``, oldest first.

    Lines that do not parse (a torn last line after a crash) are skipped. Reading while the
    daemon rotates may skip or repeat records near the rotation; de-duplicate on ``seq``.
    """
    for file in journal_files(path):
        with contextlib.suppress(FileNotFoundError), file.open("rb") as f:
            for line in f:
                record = parse_record(line)
                if record is None:
                    continue
                if since_seq is not None and record.seq <= since_seq:
                    continue
                if since_time is not None and record.time < since_time:
                    continue
                yield record


def parse_since(text: str) -> tuple[int | None, float | None]:
    """Read ``--since``: an integer is a sequence number, anything else a time.

    A time is ISO 8601 (``2024-05-01T12:00:00``, local time unless it has an offset or ``Z``)
    or Unix seconds with a decimal point (``1714563000.0``).

    Returns:
        ``(since_seq, None)`` or ``(None, since_time)``.

    Raises:
        ConfigError: the text is neither.
    """
    text = text.strip()
    if re.fullmatch(r"[0-9]+", text):
        return int(text), None
    if re.fullmatch(r"[0-9]+\.[0-9]*", text):
        return None, float(text)
    try:
        return None, dt.datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):  # not ISO 8601, or out of the clock's range
        raise ConfigError(
            f"--since {text!r} is neither a sequence number nor a time (ISO 8601 or Unix seconds)"
        ) from None


def print_journal(
    path: str | Path | None,
    *,
    since: str | None,
    stream: str | None,
    out: TextIO,
    bus: BusConfig | None = None,
) -> int:
    """Print the records a consumer missed, one JSON line each; return the exit code.

    With ``bus.url`` set (and no ``path``), the records come from the event bus.

    Raises:
        ConfigError: no path is given, ``since`` cannot be read, there is no journal, or the
            bus cannot be reached.
    """
    if path is None and bus is not None and bus.url is not None:
        return asyncio.run(_print_bus(bus, since=since, stream=stream, out=out))
    if path is None:
        raise ConfigError("no journal: give --path or set journal.path")
    since_seq, since_time = parse_since(since) if since is not None else (None, None)
    if not journal_files(Path(path)):
        raise ConfigError(f"no journal at {path}")
    for record in read_journal(Path(path), since_seq=since_seq, since_time=since_time):
        if stream is not None and record.event.get("stream") != stream:
            continue
        line = {"seq": record.seq, "time": record.time, "event": record.event}
        print(json.dumps(line, separators=(",", ":"), ensure_ascii=False), file=out)
    return 0


async def _print_bus(bus: BusConfig, *, since: str | None, stream: str | None, out: TextIO) -> int:
    from redis import RedisError

    from streamer.serve.bus import Bus, BusHub

    since_seq, since_time = parse_since(since) if since is not None else (None, None)
    reader = Bus(bus, BusHub(queue_len=1))
    try:
        async for entry in reader.history(after=since_seq or 0, since_time=since_time):
            if stream is None or entry.stream == stream:
                line = f'{{"seq":{entry.cursor},"time":{entry.time},"event":{entry.event}}}'
                print(line, file=out)
    except (RedisError, OSError) as exc:
        raise ConfigError(f"bus {reader.shown_url}: {exc}") from None
    finally:
        await reader.client.aclose()
    return 0


def _last_seq(path: Path) -> int:
    """The highest ``seq`` in the newest journal file that has one (0 when there is none)."""
    for file in reversed(journal_files(path)):
        with file.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
            tail = f.read().splitlines()
        for line in reversed(tail):
            record = parse_record(line)
            if record is not None:
                return record.seq
    return 0


class Journal:
    """Appends every event published on a hub to a JSONL file, from its own thread.

    Contract: :meth:`open` subscribes to the hub and starts the writer; from then on every
    published event is recorded without the publisher waiting; :meth:`close` unsubscribes,
    writes what is still queued, fsyncs (unless ``fsync = "none"``) and stops the thread.
    A write failure (disk full) is logged and the record is lost; the daemon goes on.
    """

    def __init__(self, config: JournalConfig, hub: Hub[str], *, path: Path) -> None:
        """Open (or continue) the journal file and start recording ``hub``; see :meth:`open`.

        Raises:
            OSError: the file cannot be opened for appending.
        """
        self.config = config
        self.path = path
        self.hub = hub
        self.n_written = 0
        self.n_lost = 0
        self.n_failed = 0
        self._seq = _last_seq(path)
        self._file: BinaryIO | None = None
        self._failing = False
        self._closing = False
        self._wake = threading.Event()
        self._open_file()
        self.subscriber: Subscriber[str] = hub.subscribe(
            queue_len=config.queue_len, notify=self._wake.set
        )
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self._thread.start()
        log.info("journal %s: appending from seq %d (fsync %s)", path, self._seq + 1, config.fsync)

    @classmethod
    def open(cls, config: JournalConfig, hub: Hub[str]) -> Journal:
        """Open (or continue) the journal at ``config.path`` and start recording ``hub``.

        Raises:
            ConfigError: no path is configured, or the file cannot be opened for appending.
        """
        if config.path is None:
            raise ConfigError("journal.path is not set")
        path = Path(config.path)
        try:
            return cls(config, hub, path=path)
        except OSError as exc:
            raise ConfigError(f"journal {path}: {exc.strerror or exc}") from None

    @property
    def last_seq(self) -> int:
        """The sequence number of the last record written."""
        return self._seq

    def close(self) -> None:
        """Stop recording: write what is queued, sync, and stop the thread. Idempotent."""
        if self._closing:
            return
        self.hub.unsubscribe(self.subscriber)
        self._closing = True
        self._wake.set()
        self._thread.join()

    # ------------------------------------------------------------------ writer thread

    def _open_file(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Transcripts are private: the file is readable by its owner only.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        file = os.fdopen(fd, "ab")
        size = file.seek(0, os.SEEK_END)
        if size:
            with self.path.open("rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # a torn last line from a crash: end it
                    file.write(b"\n")
        self._file = file
        return file

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug must stop the journal, not the daemon
            log.exception("journal %s: writer failed; journal stopped", self.path)
            self.hub.unsubscribe(self.subscriber)
        if self._file is not None:
            if self.config.fsync != "none":
                self._sync()
            self._file.close()

    def _loop(self) -> None:
        policy, interval = self.config.fsync, self.config.fsync_interval_s
        synced_at, dirty = time.monotonic(), False
        while True:
            self._wake.wait(interval if policy == "interval" and dirty else None)
            self._wake.clear()
            closing = self._closing
            items, lost = self.subscriber.drain()
            if items or lost:
                self._write(items, lost)
                dirty = True
            now = time.monotonic()
            due = policy == "always" or (
                policy == "interval" and (closing or now - synced_at >= interval)
            )
            if dirty and due:
                self._sync()
                synced_at, dirty = now, False
            if closing and not len(self.subscriber):
                return

    def _write(self, items: list[str], lost: int) -> None:
        now = round(time.time(), 3)
        lines = []
        if lost:
            self.n_lost += lost
            self._seq += 1
            gap = json.dumps({"type": "dropped", "count": lost}, separators=(",", ":"))
            lines.append(f'{{"seq":{self._seq},"time":{now},"event":{gap}}}\n'.encode())
        for payload in items:
            self._seq += 1
            lines.append(f'{{"seq":{self._seq},"time":{now},"event":{payload}}}\n'.encode())
        while lines:
            lines = self._write_some(lines)

    def _write_some(self, lines: list[bytes]) -> list[bytes]:
        """Write the lines that fit in the current file (at least one); return the rest."""
        try:
            file = self._file or self._open_file()
            room = self.config.max_bytes - file.tell()
            n, size = 0, 0
            while n < len(lines) and (n == 0 or size + len(lines[n]) <= room):
                size += len(lines[n])
                n += 1
            file.write(b"".join(lines[:n]))
            file.flush()
        except OSError as exc:
            self.n_failed += len(lines)
            if not self._failing:
                log.error("journal %s: write failed, records are lost: %s", self.path, exc)  # noqa: TRY400
            self._failing = True
            return []
        if self._failing:
            log.info("journal %s: writing again", self.path)
            self._failing = False
        self.n_written += n
        if file.tell() >= self.config.max_bytes or n < len(lines):
            self._rotate()
        return lines[n:]

    def _sync(self) -> None:
        if self._file is None:
            return
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            log.warning("journal %s: fsync failed: %s", self.path, exc)

    def _rotate(self) -> None:
        self._sync()
        if self._file is not None:
            self._file.close()
            self._file = None
        keep = self.config.keep_files
        try:
            if keep == 0:
                self.path.unlink()
            else:
                oldest = self.path.with_name(f"{self.path.name}.{keep}")
                oldest.unlink(missing_ok=True)
                for i in range(keep - 1, 0, -1):
                    src = self.path.with_name(f"{self.path.name}.{i}")
                    if src.exists():
                        src.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
                self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        except OSError as exc:
            log.error("journal %s: rotation failed: %s", self.path, exc)  # noqa: TRY400
        try:
            self._open_file()
        except OSError as exc:  # the next write tries again and reports it
            log.error("journal %s: cannot reopen: %s", self.path, exc)  # noqa: TRY400

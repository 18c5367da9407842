"""What travels on the event bus, and how cursors are read: pure (no sockets, clocks or files).

Every event a replica publishes becomes one entry of one Redis Stream. The entry's ID is
``SEQ-0``: ``SEQ`` is the bus-wide sequence number (the *cursor*), counted from 1 by one atomic
script (:data:`APPEND_SCRIPT`: ``INCR`` then ``XADD`` under that ID), so the stream's order is the
cursor's order and every replica reads the same order. The entry's fields::

    t       when it was appended (Unix seconds, from the bus server's clock)
    type    the event type (``utterance``, ``started``, ...)
    stream  the stream's name
    origin  the replica that published it
    event   the event, exactly as protocol v1 encodes it

Subscribers of ``/v1/events`` on a daemon with a bus get each event with one more top-level field,
``"cursor": SEQ`` (protocol v1 readers ignore unknown fields). A client that reconnects with
``/v1/events?since=SEQ`` gets every event after that cursor, then the live ones, without
duplicates. The per-stream ``seq`` of an utterance is unchanged.

Retention: the same script trims the stream by count (``XADD ... MAXLEN ~ bus.max_events``) and by
age (``bus.retention_s``). The IDs carry cursors, not times, so ``XADD ... MINID ~ NOW-MS`` would
compare cursors with a clock (every cursor is far below NOW-MS) and trim everything: the age trim
reads the ``t`` field instead. Once every 64 cursors (on a call whose cursors cross a multiple of
64: looking on every call costs a quarter to a third more of the server's time per single-event
call), the script looks at the oldest entry. When that is older than the retention by more than 1 %
of it, the script finds the first entry younger than the retention by a binary search over cursors
(``t`` grows with the cursor: one server clock, one script at a time) and trims the entries before
it with ``XTRIM ... MINID ~ CURSOR-0``: always a prefix, in cursor order. ``~`` trims whole
radix-tree nodes only (``stream-node-max-entries``, 100 by default), like ``MAXLEN ~``. So an entry
stays at least ``retention_s``; it leaves at a look once the oldest entry is 1 % past the retention
and every entry of its own node is past it (looks come with appends: an idle bus keeps its entries
until new ones come). Each entry is judged by the server's clock when it was appended: a clock
stepped back keeps some entries a little longer, one stepped forward trims some early; the
replicas' clocks play no part. Both limits hold: whichever is reached first trims.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

#: Appends events atomically: ``KEYS = [stream key, counter key]``, ``ARGV = [maxlen,
#: retention_s (0: no age limit), then per event: type, stream, origin, event]``; returns the
#: last cursor given. Trims by count and by age (see the module docstring).
APPEND_SCRIPT: Final = """
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last and tonumber(string.match(last[1], '^(%d+)')) > seq then
  redis.call('SET', KEYS[2], string.match(last[1], '^(%d+)'))
end
local before = seq
for i = 3, #ARGV, 4 do
  seq = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], seq .. '-0', 't', now,
    'type', ARGV[i], 'stream', ARGV[i + 1], 'origin', ARGV[i + 2], 'event', ARGV[i + 3])
end
local keep_s = tonumber(ARGV[2])
if keep_s <= 0 or math.floor(seq / 64) == math.floor(before / 64) then return seq end
local cutoff = tonumber(now) - keep_s
local function first_at(cursor)  -- the first entry at or after cursor: its cursor and t
  local e = redis.call('XRANGE', KEYS[1], string.format('%d-0', cursor), '+', 'COUNT', 1)[1]
  local when = 0
  for j = 1, #e[2], 2 do
    if e[2][j] == 't' then when = tonumber(e[2][j + 1]) or 0 end
  end
  return tonumber(string.match(e[1], '^(%d+)')), when
end
local lo, oldest = first_at(0)
if oldest >= cutoff - keep_s / 100 then return seq end
local hi = seq
while lo < hi do  -- the first cursor whose entry is younger than the retention
  local mid = math.floor((lo + hi) / 2)
  local cursor, when = first_at(mid)
  if when < cutoff then lo = cursor + 1 else hi = mid end
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d-0', lo))
return seq
"""
#: Renews or takes a stream name's lease: ``KEYS = [lease key]``, ``ARGV = [token, ms]``.
#: Returns 1 when the token holds the lease afterwards, 0 when another one does.
RENEW_SCRIPT: Final = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
#: Frees a lease if ``ARGV[1]`` still holds it: ``KEYS = [lease key]``.
RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_ID: Final = re.compile(r"([0-9]+)-([0-9]+)")
_CURSOR_TAIL: Final = re.compile(r',"cursor":([0-9]+)\}$')


@dataclass(frozen=True)
class Entry:
    """One event read from the bus."""

    cursor: int
    time: float
    type: str
    stream: str
    origin: str
    event: str

    @property
    def payload(self) -> str:
        """The event as a bus daemon's subscribers get it: with its ``cursor``."""
        return with_cursor(self.event, self.cursor)


def entry_id(cursor: int) -> str:
    """The stream ID of the entry with ``cursor`` (``0-0`` for "before the first")."""
    return f"{cursor}-0"


def cursor_of_id(entry: object) -> int:
    """The cursor an entry ID (``str`` or ``bytes``) carries.

    Raises:
        ValueError: not a stream ID.
    """
    text = entry.decode(errors="replace") if isinstance(entry, bytes) else entry
    match = _ID.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a stream entry id: {text!r}")
    return int(match.group(1))


def parse_entry(entry: object, fields: object) -> Entry | None:
    """Read one bus entry (ID and fields as the client returns them); None if it is foreign."""
    if not isinstance(fields, Mapping):
        return None
    text = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    try:
        cursor, when = cursor_of_id(entry), float(text["t"])
        kind, stream, origin, event = text["type"], text["stream"], text["origin"], text["event"]
    except (KeyError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    if not event.startswith("{") or not event.endswith("}"):
        return None
    return Entry(cursor, when, kind, stream, origin, event)


def entries(answer: object) -> list[tuple[object, object]]:
    """The ``(id, fields)`` pairs of an ``XRANGE`` answer (anything else: none)."""
    if not isinstance(answer, list):
        return []
    return [(e[0], e[1]) for e in answer if isinstance(e, list | tuple) and len(e) == 2]


def append_args(
    events: list[tuple[str, str, str]], origin: str, *, max_events: int, retention_s: float
) -> list[str]:
    """:data:`APPEND_SCRIPT`'s ``ARGV`` for ``events`` (type, stream, encoded event)."""
    args = [str(max_events), repr(float(retention_s))]
    for kind, stream, event in events:
        args += [kind, stream, origin, event]
    return args


def with_cursor(event: str, cursor: int) -> str:
    """``event`` (a JSON object) with ``"cursor": cursor`` added as its last field."""
    body = event.rstrip()
    if body == "{}":
        return f'{{"cursor":{cursor}}}'
    return f'{body[:-1]},"cursor":{cursor}}}'


def cursor_of(payload: str) -> int | None:
    """The cursor :func:`with_cursor` added to ``payload``; None when it carries none."""
    match = _CURSOR_TAIL.search(payload)
    return int(match.group(1)) if match else None


def reconnect_delay_s(attempt: int, max_s: float) -> float:
    """Seconds to wait before reconnection attempt ``attempt`` (0, 1, ...): doubling from 50 ms."""
    return min(max_s, 0.05 * float(1 << min(attempt, 30)))


def redact_url(url: str) -> str:
    """``url`` without its password (``redis://:***@host``), for logs and ``/readyz``."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)

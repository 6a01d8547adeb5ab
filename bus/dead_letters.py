"""Dead letters: the record kept on `dlq:<service>`, and every Redis call made on those streams.
The worker writes it (in one place, workers.handling's dead_letter, as a commit op); `choreo dlq`,
trace, the dashboard and audit read it through the functions below: this module is the only one
that knows its fields, and the only one that reads dlq:<service>.

    stream, entry_id   where the original entry was
    group              the service that gave up on it
    deliveries         times it was delivered to that service
    error              why it was dead-lettered (at most ERROR_CHARS of it)
    at                 when, ISO 8601 UTC with milliseconds
    entry              the original fields as a JSON object; a cut copy when entry_truncated is 1
    entry_bytes        size of the whole JSON copy, json.dumps(fields, sort_keys=True), in bytes
    entry_sha256       its sha256 (hex), so a cut copy can be matched with the original
    entry_truncated    "1" when `entry` was cut to ENTRY_COPY_BYTES, else "0"

A hostile entry may be up to CHOREO_MAX_ENTRY_BYTES (64 KB) and is dead-lettered by every group
that reads it; each keeps a copy of at most ENTRY_COPY_BYTES, which is still a JSON object (the
envelope's own fields first, values cut where the room ends), so trace can place it and `dlq
show` can print it. A cut copy cannot be replayed: the original cannot be restored from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

import redis

from choreo.bus.ops import Publish
from choreo.bus import keys, layout
from choreo.bus.contract import Delivery, is_entry_id
from choreo.bus.envelope import FIELDS
from choreo.bus.redis_streams import RedisStreamsBus, decode_entry, translated_errors

# Above the largest valid event (an OrderCreated of 100 lines is about 5 KB as a copy), so the
# dead letter of an event that could ever be handled is kept whole and can be replayed.
ENTRY_COPY_BYTES = 8 * 1024
# A reason quotes what failed (a handler's exception may echo the entry's data): kept readable.
ERROR_CHARS = 1000

# KEYS: dlq stream, original stream. ARGV: dlq entry id, then field, value, ...
# Returns the new entry id, or false when the dead letter is gone (replayed or purged meanwhile).
REPLAY_LUA = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""


class DeadLetterError(Exception):
    """A dead letter that cannot be found or replayed; the message says why."""


@dataclass(frozen=True)
class DeadLetter:
    service: str            # whose dlq:<service> it is on (its `group` field)
    stream: str
    entry_id: str
    deliveries: int
    error: str
    at: str
    entry: str
    entry_bytes: int
    entry_sha256: str
    truncated: bool
    dlq_id: str = field(default="", compare=False)   # its own id on dlq:<service>, once written
    # The partition of the dlq stream it was read from (bus.layout); the one its `stream` is in.
    partition: int = field(default=0, compare=False)

    @classmethod
    def of(cls, service: str, d: Delivery, reason: str, at: str) -> "DeadLetter":
        whole = json.dumps(d.fields, sort_keys=True)
        size = len(whole.encode())
        entry = whole if size <= ENTRY_COPY_BYTES else json.dumps(cut_copy(d.fields, ENTRY_COPY_BYTES))
        if len(reason) > ERROR_CHARS:
            reason = reason[:ERROR_CHARS] + f"… ({len(reason)} characters)"
        return cls(service, d.stream, d.entry_id, d.deliveries, reason, at, entry, size,
                   hashlib.sha256(whole.encode()).hexdigest(), entry != whole)

    def to_fields(self) -> dict[str, str]:
        return {"stream": self.stream, "entry_id": self.entry_id, "group": self.service,
                "deliveries": str(self.deliveries), "error": self.error, "at": self.at,
                "entry": self.entry, "entry_bytes": str(self.entry_bytes),
                "entry_sha256": self.entry_sha256, "entry_truncated": "1" if self.truncated else "0"}

    @classmethod
    def from_fields(cls, service: str, dlq_id: str, f: Mapping[str, str], partition: int = 0) -> "DeadLetter":
        """Whatever is on the stream, written by any version or by hand: missing fields read as
        empty, so a reader never fails on a dead letter it could at least show."""
        entry = f.get("entry", "")
        return cls(service, f.get("stream", ""), f.get("entry_id", ""), _count(f.get("deliveries")),
                   f.get("error", ""), f.get("at", ""), entry,
                   _count(f.get("entry_bytes")) or len(entry.encode()), f.get("entry_sha256", ""),
                   f.get("entry_truncated") == "1", dlq_id, partition)

    @property
    def ref(self) -> str:
        """How the CLI names it: `<service>/<dlq id>`; with partitions `<service>/p<N>/<dlq id>`,
        since ids on two partitions' dead-letter streams may be equal."""
        where = f"p{self.partition}/" if layout.current().tagged else ""
        return f"{self.service}/{where}{self.dlq_id}"

    @property
    def dlq_stream(self) -> str:
        return keys.dead_letters(self.service, self.partition)

    @cached_property
    def copy(self) -> dict:
        """The stored entry as far as it parses (a cut copy too); {} when it does not."""
        try:
            parsed = json.loads(self.entry)
        except (ValueError, RecursionError):
            return {}
        return parsed if isinstance(parsed, dict) else {}

    @property
    def event_id(self) -> str:
        return str(self.copy.get("id", ""))

    @property
    def order_id(self) -> str:
        return str(self.copy.get("order_id", ""))

    def original(self) -> dict[str, str]:
        """The original entry's fields; DeadLetterError if only a cut copy is kept, or the stored
        entry is not a JSON object of strings."""
        if self.truncated:
            raise DeadLetterError(f"only a truncated copy is kept ({len(self.entry)} of "
                                  f"{self.entry_bytes} bytes, sha256 {self.entry_sha256}); "
                                  f"the original cannot be restored")
        try:
            entry = json.loads(self.entry)
        except (ValueError, RecursionError) as exc:
            raise DeadLetterError(f"entry is not JSON: {exc}") from None
        if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
            raise DeadLetterError("entry is not a JSON object of string fields")
        return entry

    def publish_op(self, max_entries: int) -> Publish:
        """The commit op that writes this dead letter, keeping dlq:<service> to max_entries."""
        return Publish(keys.dead_letters(self.service, keys.partition_of(self.stream)), self.to_fields(),
                       max_len=max_entries)


def _count(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


def cut_copy(fields: Mapping[str, str], budget: int) -> dict[str, str]:
    """As many of the fields as fit in `budget` bytes of JSON: the envelope's own first (id, type,
    order_id, ... data), then the rest by name, each value cut where the room ends."""
    kept: dict[str, str] = {}
    used = 2                                            # the braces
    for name in sorted(fields, key=lambda n: (FIELDS.index(n) if n in FIELDS else len(FIELDS), n)):
        overhead = len(json.dumps(name)) + 2 + (2 if kept else 0)     # "name": and ", "
        if used + overhead + 2 > budget:
            break
        kept[name] = _prefix_fitting(fields[name], budget - used - overhead)
        used += overhead + len(json.dumps(kept[name]))
    return kept


def _prefix_fitting(text: str, room: int) -> str:
    """The longest prefix of text whose JSON string takes at most room bytes (escapes count)."""
    size = 2
    for end, ch in enumerate(text):
        size += len(json.dumps(ch)) - 2
        if size > room:
            return text[:end]
    return text


# -- on Redis --------------------------------------------------------------------------------------
# Read as bytes and decoded entry by entry, like the consumers' reads: a dead letter that is not
# UTF-8 (written by hand) is shown with backslash escapes instead of failing the whole listing.

# A service has one dead-letter stream per partition (bus.layout): each reader below reads all
# of them, one command per stream (pipelined), and merges by dlq id, oldest first.

def _letters(service: str, partition: int, rows) -> list[DeadLetter]:
    stream = keys.dead_letters(service, partition)
    return [DeadLetter.from_fields(service, d.entry_id, d.fields, partition)
            for d in (decode_entry(stream, entry_id, fields) for entry_id, fields in rows)]


def _id_key(letter: DeadLetter) -> tuple[int, int]:
    ms, _, seq = letter.dlq_id.partition("-")
    return (int(ms), int(seq or 0)) if ms.isdigit() and (seq or "0").isdigit() else (0, 0)


def _read(bus: RedisStreamsBus, service: str, partitions, command) -> list[DeadLetter]:
    """command(pipe, dlq stream) queued on each partition's stream; the letters, by dlq id."""
    partitions = list(partitions)
    with translated_errors():
        pipe = bus.raw.pipeline(transaction=False)
        for p in partitions:
            command(pipe, keys.dead_letters(service, p))
        replies = pipe.execute()
    return sorted((letter for p, rows in zip(partitions, replies) for letter in _letters(service, p, rows)),
                  key=_id_key)


def read_all(bus: RedisStreamsBus, service: str) -> list[DeadLetter]:
    return _read(bus, service, layout.current().all(), lambda pipe, key: pipe.xrange(key))


def read_newest(bus: RedisStreamsBus, service: str, count: int) -> list[DeadLetter]:
    """The last `count` dead letters of a service (over its partitions), newest first."""
    found = _read(bus, service, layout.current().all(), lambda pipe, key: pipe.xrevrange(key, count=count))
    return found[::-1][:count]


def read_matching(bus: RedisStreamsBus, service: str, dlq_id: str,
                  partition: int | None = None) -> list[DeadLetter]:
    """The dead letters with this dlq id, in one partition or in each (ids of two partitions'
    streams may be equal)."""
    partitions = layout.current().all() if partition is None else [partition]
    return _read(bus, service, partitions, lambda pipe, key: pipe.xrange(key, dlq_id, dlq_id))


def newest_and_count(bus: RedisStreamsBus, service: str) -> tuple[DeadLetter | None, int]:
    """A service's newest dead letter and how many it has, over its partitions, as the dashboard
    shows them; (None, 0) when it has none. A dlq key that is not a stream counts none (a view
    never fails on what it shows)."""
    lengths = {}
    with translated_errors():
        for p in layout.current().all():
            try:
                lengths[p] = bus.client.xinfo_stream(keys.dead_letters(service, p))["length"]
            except redis.ResponseError:
                continue
    held = [p for p, n in lengths.items() if n]
    newest = _read(bus, service, held, lambda pipe, key: pipe.xrevrange(key, count=1)) if held else []
    return (newest[-1], sum(lengths.values())) if newest else (None, 0)


def count(bus: RedisStreamsBus, service: str) -> int:
    """Dead letters of a service, over its partitions."""
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for stream in keys.all_dead_letters(service):
            pipe.xlen(stream)
        return sum(pipe.execute())


def original_entry(bus: RedisStreamsBus, letter: DeadLetter) -> dict[str, str] | None:
    """The dead-lettered entry as it still stands on its stream, if it matches the letter's
    sha256; None when it is gone (trimmed). DeadLetterError when the stream holds something else
    at that id: the letter does not describe a real entry (a service may write only its own dlq,
    so its copy is a claim, not a proof)."""
    if not letter.stream.startswith(keys.STREAM_PREFIX) or not is_entry_id(letter.entry_id):
        raise DeadLetterError(f"it names no stream entry ({letter.stream[:80]!r} {letter.entry_id[:80]!r})")
    with translated_errors():
        rows = bus.raw.xrange(letter.stream, letter.entry_id, letter.entry_id)
    if not rows:
        return None
    fields = decode_entry(letter.stream, *rows[0]).fields
    if hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest() != letter.entry_sha256:
        raise DeadLetterError(f"it does not match entry {letter.entry_id} on {letter.stream}")
    return fields


def republish(bus: RedisStreamsBus, letter: DeadLetter, stream: str, fields: Mapping[str, str]) -> str:
    """XADD fields, addressed to the letter's group, to stream and delete the dead letter, in one
    script, so a dead letter is replayed at most once however many operators race; DeadLetterError if it is gone. The stream
    must be in the letter's partition: the script touches one partition's keys (one slot)."""
    if layout.current().tagged and keys.partition_of(stream) != letter.partition:
        raise DeadLetterError(f"{letter.ref}: {stream} is not in partition {letter.partition}, "
                              f"where the dead letter is")
    # The copy is for the letter's group alone (`for`): the others had their go at the original.
    # No `once`: a copy of an old id is what the group's seen set guards (bus/commit.lua).
    copy = {k: v for k, v in fields.items() if k not in ("once", "for")} | {"for": letter.service}
    args = [letter.dlq_id, *[x for kv in copy.items() for x in kv]]
    with translated_errors():
        new_id = bus.client.eval(REPLAY_LUA, 2, letter.dlq_stream, stream, *args)
    if not new_id:
        raise DeadLetterError(f"{letter.ref}: gone meanwhile (replayed or purged by someone else)")
    return new_id


def purge(bus: RedisStreamsBus, service: str) -> int:
    """Delete the service's dead-letter streams; the number of dead letters they held."""
    purged = 0
    for key in keys.all_dead_letters(service):
        with translated_errors():
            # One MULTI per stream (one slot): the count is of exactly what was deleted.
            pipe = bus.client.pipeline(transaction=True)
            pipe.xlen(key)
            pipe.delete(key)
            n, _ = pipe.execute()
        purged += n
    return purged

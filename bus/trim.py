"""Safe trimming: XTRIM MINID never past an entry that some consumer group still needs.

The safe point of a stream is the smallest, over its groups, of what each group still needs:
its oldest pending entry (XPENDING summary `min`), or else the first id after its
last-delivered-id. XTRIM MINID removes only ids strictly below the point, so every unread and
every pending entry of every group survives. Groups are taken from the caller's declarations
(which service consumes which stream), because a declared group that does not exist yet (its
service has never started, or a Redis came back empty) would be created at id 0 and want every
entry: such a group blocks trimming of the stream, it is never skipped. Groups that exist but
are not declared (an operator's ad-hoc group) are honoured too: they are consumers all the same.

NOTE: computing the point and trimming are two round trips, and there is no race here because a
group's need only moves forward (XACK shrinks the pending list from anywhere, XREADGROUP moves
last-delivered-id up, XAUTOCLAIM keeps ids). The only backward moves are XGROUP CREATE/SETID: a
declared group being created was missing when we looked, so the stream was blocked; an operator
running SETID by hand during a trim is outside what this guards.

Retention (keep the newest N entries and/or the last S seconds) only ever lowers the point.

prune_index does the same job for an index of ids whose keys expire (orders:index): it removes
an id only once its key is gone, checked and removed in one script.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

from choreo.bus.redis_streams import RedisStreamsBus, _lua, translated_errors

NOTHING = (0, 0)        # MINID 0-0 removes nothing: every real id is above it
MAX_SEQ = 2 ** 64 - 1
# How far ahead of this clock a stream's newest id may be (another host's clock) before its ids are
# taken as not made by a clock: an XADD with an id years ahead makes every later id that far ahead.
AHEAD_MS = 300_000


class Consumer(Protocol):
    """What trimming needs of a service declaration (workers.Service has both)."""
    name: str
    streams: Sequence[str]


@dataclass(frozen=True)
class Retention:
    """Acknowledged history to keep on top of what groups still need (0 = keep none)."""
    keep_entries: int = 0
    keep_seconds: float = 0.0


@dataclass(frozen=True)
class TrimReport:
    stream: str
    trimmed: int                          # entries removed (dry run: that would be removed)
    trim_point: str | None                # the MINID used; None when blocked or nothing to trim
    blocked_by: tuple[str, ...] = ()      # declared groups missing from the stream
    safe_point: str | None = None         # what the groups alone would allow
    dry_run: bool = False
    ahead: bool = False                   # ids ahead of the clock: keep_seconds did not apply

    def line(self) -> str:
        if self.blocked_by:
            return (f"{self.stream}: blocked by missing group(s) {', '.join(self.blocked_by)} "
                    f"(service down or never started); not trimmed")
        if self.trim_point is None:
            return f"{self.stream}: nothing to trim" + (AHEAD if self.ahead else "")
        verb = "would trim" if self.dry_run else "trimmed"
        return (f"{self.stream}: {verb} {self.trimmed} entries below {self.trim_point} "
                f"(groups need from {self.safe_point})" + (AHEAD if self.ahead else ""))


AHEAD = ("; its newest id is ahead of the clock (an id written by hand?), so --keep-seconds cannot "
         "tell the entries' age and does not apply to it, --keep-entries does")


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def format_id(parts: tuple[int, int]) -> str:
    return f"{parts[0]}-{parts[1]}"


def after(entry_id: str) -> tuple[int, int]:
    """The smallest id above entry_id: the first one a group with this last-delivered-id wants.
    Above the largest id there is none: a group that has read it wants no entry below it."""
    ms, seq = parse_id(entry_id)
    if (ms, seq) == (MAX_SEQ, MAX_SEQ):
        return ms, seq
    return (ms + 1, 0) if seq == MAX_SEQ else (ms, seq + 1)


def declared_groups(services: Iterable[Consumer]) -> dict[str, list[str]]:
    """stream -> names of the groups declared to consume it."""
    by_stream: dict[str, list[str]] = {}
    for s in services:
        for stream in s.streams:
            by_stream.setdefault(stream, []).append(s.name)
    return by_stream


def group_needs(bus: RedisStreamsBus, stream: str) -> dict[str, tuple[int, int]] | None:
    """For each existing group of the stream: the smallest id it has not yet acknowledged.
    None when the stream does not exist (nothing to trim, nothing to block)."""
    with translated_errors():
        if not bus.client.exists(stream):
            return None
        needs = {}
        for g in bus.client.xinfo_groups(stream):
            pending = bus.client.xpending(stream, g["name"])
            needs[g["name"]] = (parse_id(pending["min"]) if pending["pending"]
                                else after(g["last-delivered-id"]))
        return needs


def retention_point(bus: RedisStreamsBus, stream: str, retention: Retention,
                    now: float) -> tuple[int, int] | None:
    """The lowest point retention allows, or None when retention asks for nothing."""
    points = []
    if retention.keep_entries > 0:
        with translated_errors():
            newest = bus.client.xrevrange(stream, "+", "-", count=retention.keep_entries)
        # Fewer entries than we keep: keep them all.
        points.append(parse_id(newest[-1][0]) if len(newest) == retention.keep_entries else NOTHING)
    if retention.keep_seconds > 0:
        points.append((max(0, int((now - retention.keep_seconds) * 1000)), 0))
    return min(points) if points else None


def ahead_of_clock(bus: RedisStreamsBus, stream: str, now: float) -> bool:
    """Whether the stream's newest id is further ahead of `now` than clocks drift: every id made
    after one written years ahead is as far ahead, so keeping "the last S seconds" by id would
    keep every later entry for ever."""
    with translated_errors():
        newest = bus.client.xrevrange(stream, "+", "-", count=1)
    return bool(newest) and parse_id(newest[0][0])[0] > now * 1000 + AHEAD_MS


def count_below(bus: RedisStreamsBus, stream: str, point: tuple[int, int]) -> int:
    """Entries with an id below point (what XTRIM MINID point would remove)."""
    if point <= NOTHING:
        return 0
    with translated_errors():
        return len(bus.client.xrange(stream, "-", "(" + format_id(point)))


def trim_stream(bus: RedisStreamsBus, stream: str, declared: Sequence[str],
                retention: Retention = Retention(), dry_run: bool = False,
                clock: Callable[[], float] = time.time) -> TrimReport:
    needs = group_needs(bus, stream)
    if needs is None:
        return TrimReport(stream, 0, None, dry_run=dry_run)
    missing = tuple(g for g in declared if g not in needs)
    if missing:
        return TrimReport(stream, 0, None, blocked_by=missing, dry_run=dry_run)
    if not needs:
        return TrimReport(stream, 0, None, dry_run=dry_run)   # no groups and none declared
    safe = min(needs.values())
    now = clock()
    ahead = retention.keep_seconds > 0 and ahead_of_clock(bus, stream, now)
    if ahead:
        retention = Retention(keep_entries=retention.keep_entries)
    kept = retention_point(bus, stream, retention, now)
    point = safe if kept is None else min(safe, kept)
    if point <= NOTHING:
        return TrimReport(stream, 0, None, safe_point=format_id(safe), dry_run=dry_run, ahead=ahead)
    if dry_run:
        trimmed = count_below(bus, stream, point)
    else:
        # Exact MINID (no `~`): an approximate trim may stop short, never go past, but exact
        # keeps the report's count and the point honest.
        with translated_errors():
            trimmed = bus.client.xtrim(stream, minid=format_id(point), approximate=False)
    return TrimReport(stream, trimmed, format_id(point), safe_point=format_id(safe),
                      dry_run=dry_run, ahead=ahead)


def trim_streams(bus: RedisStreamsBus, services: Iterable[Consumer],
                 retention: Retention = Retention(), dry_run: bool = False,
                 clock: Callable[[], float] = time.time) -> list[TrimReport]:
    """Trim every stream the services declare, each only as far as all its groups allow.
    Safe to call from any number of workers at once: each trim is bounded by the same rule."""
    return [trim_stream(bus, stream, groups, retention, dry_run, clock)
            for stream, groups in sorted(declared_groups(services).items())]



@dataclass(frozen=True)
class Index:
    """A sorted set of ids scored by creation time (ms), each id with a key that expires."""
    key: str
    expired_counter: str                  # how many ids were pruned, for audits
    key_of: Callable[[str], str]


def prune_index(bus: RedisStreamsBus, index: Index, retention_s: float,
                clock: Callable[[], float] = time.time, batch: int = 500) -> int:
    """Remove the ids whose key has expired; returns how many. Only ids created more than
    retention_s ago are looked at: a key cannot have expired sooner (it expires retention_s after
    it ended), so a live order is never removed and the young ones cost nothing."""
    newest = int((clock() - retention_s) * 1000)
    script = bus.client.register_script(_lua("prune_index.lua"))
    pruned, offset = 0, 0
    while True:
        with translated_errors():
            ids = bus.client.zrangebyscore(index.key, "-inf", newest, start=offset, num=batch)
            if not ids:
                return pruned
            removed = script(keys=[index.key, index.expired_counter, *map(index.key_of, ids)],
                             args=ids)
        pruned += removed
        offset += len(ids) - removed          # the survivors stay in place, in front of us

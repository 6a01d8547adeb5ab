"""Read-only views of streams, groups, pending lists and entries, for the CLI and the dashboard.
Nothing here writes; every call is safe against a live system."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import redis
from redis.crc import key_slot

from choreo.bus import filing, keys
from choreo.bus.contract import LAST_ENTRY_ID, Delivery
from choreo.bus.trim import parse_id
from choreo.bus.redis_streams import (IDLE_POLL_MS, RedisStreamsBus, decode_entry,
                                      read_records, translated_errors)


@dataclass(frozen=True)
class GroupInfo:
    stream: str
    group: str
    consumers: int
    pending: int
    lag: int | None            # None: Redis cannot say (e.g. after XDEL/trim); never shown as 0
    last_delivered_id: str


def stream_keys(bus: RedisStreamsBus, dead_letters: bool = False) -> list[str]:
    pattern = (keys.DLQ_PREFIX if dead_letters else keys.STREAM_PREFIX) + "*"
    with translated_errors():
        return sorted(k for k in bus.client.scan_iter(match=pattern, count=500)
                      if bus.client.type(k) == "stream")


def stream_length(bus: RedisStreamsBus, stream: str) -> int:
    with translated_errors():
        return bus.client.xlen(stream)


def groups(bus: RedisStreamsBus, stream: str) -> list[GroupInfo]:
    with translated_errors():
        if not bus.client.exists(stream):
            return []
        return [GroupInfo(stream, g["name"], g["consumers"], g["pending"], g.get("lag"),
                          g["last-delivered-id"]) for g in bus.client.xinfo_groups(stream)]


def entries(bus: RedisStreamsBus, refs: list[tuple[str, str]]) -> list[Delivery]:
    """The entries named by (stream, id), one round trip; trimmed ones are left out, and so are
    refs Redis refuses (a key that is not a stream, an id that is not one)."""
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for stream, entry_id in refs:
            pipe.xrange(stream, entry_id, entry_id)
        found = pipe.execute(raise_on_error=False)
    return [Delivery(stream, rows[0][0], rows[0][1]) for (stream, _), rows in zip(refs, found)
            if rows and not isinstance(rows, Exception)]


def newest_ids(bus: RedisStreamsBus, streams: Sequence[str]) -> dict[str, str]:
    """Each stream's newest entry id ("0-0" for an empty or missing stream), one round trip.
    Reading after these ids sees every entry added from now on: auto ids only grow."""
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for stream in streams:
            pipe.xrevrange(stream, "+", "-", count=1)
        found = pipe.execute()
    return {s: rows[0][0] if rows else "0-0" for s, rows in zip(streams, found)}


def read_after(bus: RedisStreamsBus, after: Mapping[str, str], count: int,
               block_ms: int = 0) -> list[Delivery]:
    """Entries after the given id of each stream (plain XREAD: no group, nothing acknowledged);
    block_ms > 0 waits that long for the first one. Entries are input: not UTF-8 comes back
    with `error` set, as from a group read.
    On a cluster, streams of several partitions are read with one XREAD per partition (each its
    own slot), in one pipeline and without blocking; when none has anything, it waits
    IDLE_POLL_MS instead. One server reads them all in one XREAD that blocks."""
    after = dict(after)
    groups = bus.read_together(after)
    with translated_errors():
        if len(groups) <= 1:
            with bus.routed():
                reader = bus.reader_of(next(iter(after))) if after else bus.raw
                replies = [reader.xread(after, count=count, block=block_ms if block_ms > 0 else None)]
        else:
            replies = bus.read_partitions(groups, lambda pipe, part: pipe.xread(
                {s: after[s] for s in part}, count=count))
    found = [decode_entry(stream.decode() if isinstance(stream, bytes) else stream, entry_id, fields)
             for reply in replies for stream, entries in reply or [] for entry_id, fields in entries]
    if not found and block_ms > 0 and len(groups) > 1:
        time.sleep(min(block_ms, IDLE_POLL_MS) / 1000)
    return found


def list_items(bus: RedisStreamsBus, key: str) -> list[str]:
    with translated_errors():
        return bus.client.lrange(key, 0, -1)


def trace_refs(bus: RedisStreamsBus, *keys_: str) -> list[tuple[str, str]]:
    """(stream, entry id) of every event on the traces at keys_ (bus/commit.lua), oldest first: the
    fields of a hash that read "<stream> <id>" (a trace key, or a service's record of the instance,
    whose other fields hold no space), the items of a list as earlier versions wrote traces, or
    the lines of a string as a few versions did (0f2f71c to 4e9eb86). A missing key has none."""
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for key in keys_:
            pipe.hkeys(key)
        refs, absent = [], []
        for key, reply in zip(keys_, pipe.execute(raise_on_error=False)):
            if isinstance(reply, redis.ResponseError):
                if not str(reply).startswith("WRONGTYPE"):
                    raise reply
                try:
                    reply = bus.client.lrange(key, 0, -1)
                except redis.ResponseError as exc:
                    if "WRONGTYPE" not in str(exc):     # (the client names the command before it)
                        raise
                    reply = (bus.client.get(key) or "").split("\n")
            elif not reply and keys.filed(key):
                absent.append(key)
            refs += [tuple(f.split(" ", 1)) for f in reply if " " in f]
        # A settled record filed in a bucket keeps its trace fields there (bus.ops.File).
        pipe = bus.client.pipeline(transaction=False)
        for key in absent:
            pipe.hget(*keys.filed(key))
        for key, value in zip(absent, pipe.execute() if absent else []):
            refs += [tuple(f.split(" ", 1)) for f in filing.unpack(key, value) if " " in f]
    return sorted(refs, key=_id_order)     # a large hash (a hashtable) keeps no order of its own


def _id_order(ref: tuple[str, str]) -> tuple[int, int]:
    try:
        return parse_id(ref[1])
    except ValueError:          # not an entry id (anyone who publishes may write a trace): first
        return (0, 0)


# -- views for the dashboard -----------------------------------------------------------------------
# Ages are computed on the server's clock (TIME), the same clock that stamps entry ids, so a
# dashboard on another host with a skewed clock still shows true ages.

@dataclass(frozen=True)
class ServerInfo:
    version: str               # "unknown" where the server has no INFO (the embedded fakeredis)
    ping_ms: float
    time_ms: int               # the server's clock


@dataclass(frozen=True)
class StreamInfo:
    stream: str
    length: int
    last_id: str               # last id ever generated ("0-0": none), survives trimming
    entries_added: int | None  # total ever added (Redis >= 7.0); a trim lowers length, not this


@dataclass(frozen=True)
class PendingInfo:
    count: int
    oldest_id: str | None      # lowest pending id: its age is how long the oldest entry waits
    max_deliveries: int        # highest times-delivered among the sampled oldest entries
    max_idle_ms: int           # longest time since last delivery among them


@dataclass(frozen=True)
class ConsumerInfo:
    stream: str
    group: str
    name: str
    pending: int
    idle_ms: int               # since the consumer last read (every blocking read resets it)


def entry_ms(entry_id: str) -> int:
    """The server time (ms) an entry id was generated at."""
    return int(entry_id.split("-", 1)[0])


def server(bus: RedisStreamsBus, clock=time.perf_counter) -> ServerInfo:
    with translated_errors():
        started = clock()
        bus.client.ping()
        ping_ms = (clock() - started) * 1000
        seconds, micros = bus.client.time()
        try:
            version = bus.client.info("server").get("redis_version", "unknown")
        except redis.ResponseError:
            version = "unknown"
    return ServerInfo(version, ping_ms, int(seconds) * 1000 + int(micros) // 1000)


def stream_info(bus: RedisStreamsBus, stream: str) -> StreamInfo | None:
    """None when the stream does not exist (yet, or any more)."""
    with translated_errors():
        try:
            info = bus.client.xinfo_stream(stream)
        except redis.ResponseError:
            return None
    return StreamInfo(stream, info["length"], info.get("last-generated-id") or "0-0",
                      info.get("entries-added"))


def pending(bus: RedisStreamsBus, stream: str, group: str, sample: int = 100) -> PendingInfo:
    """Summary of a group's pending list; delivery counts and idle times from its `sample` oldest
    entries (the ones most likely to be stuck), so the cost is bounded however long the list."""
    with translated_errors():
        summary = bus.client.xpending(stream, group)
        if not summary["pending"]:
            return PendingInfo(0, None, 0, 0)
        oldest = bus.client.xpending_range(stream, group, "-", "+", sample)
    return PendingInfo(summary["pending"], summary["min"],
                       max((p["times_delivered"] for p in oldest), default=0),
                       max((p["time_since_delivered"] for p in oldest), default=0))


def oldest_unread(bus: RedisStreamsBus, stream: str, group: str) -> str | None:
    """The id of the oldest entry `group` has not been handed yet (None: it has read them all, or
    there is no such stream or group)."""
    with translated_errors():
        try:
            found = [g for g in bus.client.xinfo_groups(stream) if g["name"] == group]
        except redis.ResponseError:
            return None                     # no such stream (yet)
        if not found or found[0].get("lag") == 0:
            return None
        after = found[0]["last-delivered-id"]
        first = bus.client.xrange(stream, f"({after}" if after != "0-0" else "-", "+", count=1)
    return first[0][0] if first else None


def consumers(bus: RedisStreamsBus, stream: str, group: str) -> list[ConsumerInfo]:
    with translated_errors():
        return [ConsumerInfo(stream, group, c["name"], c["pending"], c["idle"])
                for c in bus.client.xinfo_consumers(stream, group)]


def newest_entries(bus: RedisStreamsBus, stream: str, count: int) -> list[Delivery]:
    """The last `count` entries of a stream, newest first."""
    with translated_errors():
        return [Delivery(stream, entry_id, fields) for entry_id, fields
                in bus.client.xrevrange(stream, count=count)]


def newest_members(bus: RedisStreamsBus, key: str, count: int) -> list[str]:
    """The `count` highest-scored members of a sorted set, highest first."""
    with translated_errors():
        return bus.client.zrevrange(key, 0, count - 1)


def members_by_score(bus: RedisStreamsBus, key: str, chunk: int = 2000):
    """Every member of a sorted set, lowest score first, `chunk` at a time (lists of them), paged
    by score: members removed meanwhile (the trimmer pruning orders:index) shift no later one out
    of sight, as paging by rank did. One added meanwhile is seen if it scores after the page read.
    Members sharing the page's last score are kept, to skip them on the next page."""
    low, at_low = "-inf", set()
    while True:
        want = chunk + len(at_low)
        with translated_errors():
            rows = bus.client.zrange(key, low, "+inf", byscore=True, offset=0, num=want, withscores=True)
        fresh = [m for m, score in rows if not (m in at_low and score == float(low))]
        if fresh:
            yield fresh
        if len(rows) < want:
            return
        last = rows[-1][1]
        if low != "-inf" and last == float(low):
            at_low |= {m for m, _ in rows}          # a page all of one score: ask for more of it
        else:
            low, at_low = repr(last), {m for m, score in rows if score == last}


def newest_members_of(bus: RedisStreamsBus, keys_: Sequence[str], count: int) -> list[str]:
    """The `count` highest-scored members over several sorted sets (an index's partitions),
    highest first; one round trip."""
    if len(keys_) == 1:
        return newest_members(bus, keys_[0], count)
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for key in keys_:
            pipe.zrevrange(key, 0, count - 1, withscores=True)
        scored = [pair for reply in pipe.execute() for pair in reply]
    return [member for member, _ in sorted(scored, key=lambda pair: pair[1], reverse=True)[:count]]


def pending_entry(bus: RedisStreamsBus, stream: str, group: str, entry_id: str) -> dict | None:
    """consumer, idle and times delivered of one entry while it is pending in `group`."""
    with translated_errors():
        try:
            found = bus.client.xpending_range(stream, group, entry_id, entry_id, 1)
        except redis.ResponseError:
            return None         # no such group (yet): nothing is pending in it
    return found[0] if found else None


def delivered_past(bus: RedisStreamsBus, stream: str, group: str, entry_id: str) -> bool:
    """Whether `group` has been handed entries up to entry_id (its last-delivered-id): with the
    entry no longer pending, the group acknowledged it (or was created past it)."""
    with translated_errors():
        try:
            groups = bus.client.xinfo_groups(stream)
        except redis.ResponseError:
            return False        # no such stream (trimmed away, deleted)
    last = next((g["last-delivered-id"] for g in groups if g["name"] == group), None)
    return last is not None and parse_id(last) >= parse_id(entry_id)


def existing(bus: RedisStreamsBus, keys_: list[str]) -> list[bool]:
    """Whether each key exists, one round trip."""
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for key in keys_:
            pipe.exists(key)
        return [bool(n) for n in pipe.execute()]


def remembered(bus: RedisStreamsBus, ids: list[tuple[str, str]]) -> list[bool]:
    """Whether each (sorted set, member) pair is there: a service's dedup set holding an event
    id says it committed that event. One round trip."""
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for key, member in ids:
            pipe.zscore(key, member)
        return [score is not None for score in pipe.execute()]


def hash_fields(bus: RedisStreamsBus, keys_: list[str], fields: list[str],
                raise_on_error: bool = True) -> list:
    """The named fields of each hash (None where missing), one round trip. With raise_on_error
    False, a key Redis refuses (WRONGTYPE: not a hash) gives its redis.ResponseError in place."""
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for key in keys_:
            pipe.hmget(key, fields)
        return pipe.execute(raise_on_error=raise_on_error)


# -- liveness ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeartbeatInfo:
    """One live heartbeat (bus.heartbeat). Ages are by the server's clock where they can be: the
    time since the last renewal is the TTL spent; the last read is dated against that renewal."""
    service: str
    consumer: str
    host: str
    pid: str
    version: str
    state: str
    handled: int
    beat_age_s: float              # since the heartbeat was last renewed
    read_age_s: float | None       # since the consumer loop last read; None: it never has


def int_or(value, default=0):
    """A count or time the saga wrote, or `default` for anything else (absent, or written by
    hand): a view shows what it can read and never fails on one value (choreo audit names it)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _refused_permission(reply) -> None:
    """A reply read with raise_on_error=False that is a NOPERM: raised (PermissionsMissing, under
    translated_errors), not read as an absent key: a user who may not look sees nothing live."""
    if isinstance(reply, redis.exceptions.NoPermissionError):
        raise reply


def heartbeats(bus: RedisStreamsBus, service: str) -> list[HeartbeatInfo]:
    """The live heartbeats of one service (or of the timers process), by consumer name. Two round
    trips: the index, then each hash with its remaining TTL; an expired one is simply absent. The
    hash is input like any other: odd fields read as unknown, never as an error, and a key of
    another type (written by hand) as no heartbeat, not a failed read of everything else (the
    exporter said Redis was down). The worker whose key it is logs the refusal (bus.heartbeat)."""
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        pipe.zrange(keys.heartbeats(service), 0, -1)
        names, = pipe.execute(raise_on_error=False)
        _refused_permission(names)
        names = names if isinstance(names, list) else []
        pipe = bus.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.heartbeat(service, name))
            pipe.pttl(keys.heartbeat(service, name))
        replies = pipe.execute(raise_on_error=False) if names else []
        for reply in replies:
            _refused_permission(reply)
    found = []
    for name, beat, pttl in zip(names, replies[::2], replies[1::2]):
        if not beat or not isinstance(beat, dict) or not isinstance(pttl, int) or pttl < 0:
            continue
        beat_age_ms = max(0, int_or(beat.get("ttl_ms")) - pttl)
        last_read = int_or(beat.get("last_read_ms"), -1)
        read_age = None if last_read < 0 else \
            max(0.0, (beat_age_ms + int_or(beat.get("beat_ms")) - last_read) / 1000)
        found.append(HeartbeatInfo(service, name, beat.get("host", "?"), beat.get("pid", "?"),
                                   beat.get("version", "?"), beat.get("state", "?"),
                                   int_or(beat.get("handled")), beat_age_ms / 1000, read_age))
    return found


# -- whole-keyspace reads (choreo audit) -----------------------------------------------------------

def all_keys(bus: RedisStreamsBus, count: int = 5000) -> list[str]:
    """Every key name, one SCAN pass (a key added or removed meanwhile may or may not be in it)."""
    with translated_errors():
        return list(bus.client.scan_iter(count=count))


def hashes(bus: RedisStreamsBus, keys_: Sequence[str], chunk: int = 2000) -> list[dict]:
    """Every field of each hash, or of the settled record filed in its stead (bus.keys.filed);
    {} where neither is. One round trip per `chunk` keys, one more for the absent ones."""
    with translated_errors():
        return read_records(bus.client, keys_, chunk)


def entries_added(bus: RedisStreamsBus, streams: Sequence[str]) -> list[int]:
    """entries-added of each stream (0 if absent): it only grows, whatever is trimmed."""
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for stream in streams:
            pipe.xinfo_stream(stream)
        replies = pipe.execute(raise_on_error=False)
    return [r.get("entries-added", 0) if isinstance(r, dict) else 0 for r in replies]


def index_and_counter(bus: RedisStreamsBus, index: str, counter: str,
                      tries: int = 20) -> tuple[dict[str, float], str]:
    """A sorted set (member -> score) and a counter as of one moment, for a pair some script
    changes together (bus.trim's prune moves members from the one to the other): the counter is
    read either side of the set, again until it did not move. No MULTI, so a read-only user may
    call it. The counter as stored ("0" when absent): whether it is a count is the caller's to say."""
    with translated_errors():
        for _ in range(tries):
            pipe = bus.client.pipeline(transaction=False)
            pipe.get(counter)
            pipe.zrange(index, 0, -1, withscores=True)
            pipe.get(counter)
            before, members, after = pipe.execute()
            if before == after:
                break
    return dict(members), "0" if after is None else after


def ttls_ms(bus: RedisStreamsBus, keys_: Sequence[str]) -> list[int]:
    """PTTL of each key (-1: no expiry, -2: absent), one round trip."""
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for key in keys_:
            pipe.pttl(key)
        return pipe.execute()


def stream_and_groups(bus: RedisStreamsBus, stream: str) -> tuple[dict, dict[str, dict]] | None:
    """XINFO STREAM and XINFO GROUPS (by group name) of a stream, as Redis gives them; None when
    the stream does not exist."""
    with translated_errors():
        if not bus.client.exists(stream):
            return None
        info = bus.client.xinfo_stream(stream)
        return info, {g["name"]: g for g in bus.client.xinfo_groups(stream)}


def count_after(bus: RedisStreamsBus, stream: str, entry_id: str) -> int:
    """How many entries of the stream have ids above entry_id."""
    if entry_id == LAST_ENTRY_ID:           # none can be (an exclusive range from it is refused)
        return 0
    with translated_errors():
        return len(bus.client.xrange(stream, "(" + entry_id, "+"))


def pending_count(bus: RedisStreamsBus, stream: str, group: str, upper: str, count: int) -> int:
    """How many of the group's pending entries have ids up to `upper` (XPENDING bounds: "(" for
    exclusive), counting at most `count`."""
    with translated_errors():
        return len(bus.client.xpending_range(stream, group, min="-", max=upper, count=count))


# -- a cluster's nodes (the dashboard's nodes panel) -----------------------------------------------

@dataclass(frozen=True)
class NodeInfo:
    """One node as CLUSTER NODES reports it, from whichever node answered: the view gossip has
    agreed on, so a node that died shows as `fail` here once the others have marked it."""
    node_id: str
    address: str                   # host:port clients use
    role: str                      # "primary" or "replica"
    primary_id: str                # the primary a replica follows ("": a primary)
    link: str                      # "connected", "fail", "pfail" (suspected) or "disconnected"
    slot_ranges: tuple[tuple[int, int], ...]

    @property
    def slots(self) -> int:
        return sum(end - start + 1 for start, end in self.slot_ranges)

    def serves(self, slot: int) -> bool:
        return any(start <= slot <= end for start, end in self.slot_ranges)


def nodes_of(reply: Mapping[str, dict]) -> list[NodeInfo]:
    """CLUSTER NODES' reply as redis-py parses it (address -> id, flags, primary id or "-", link
    state, slot ranges as [start] or [start, end]; slots being migrated are apart and left out),
    sorted by address."""
    found = []
    for address, n in reply.items():
        flags = set(n.get("flags", "").split(","))
        link = ("fail" if "fail" in flags else "pfail" if "fail?" in flags
                else "connected" if n.get("connected") else "disconnected")
        ranges = tuple((int(r[0]), int(r[-1])) for r in n.get("slots", ()) if r)
        found.append(NodeInfo(n.get("node_id", "?"), address, "replica" if "slave" in flags else "primary",
                              "" if n.get("master_id", "-") == "-" else n["master_id"], link, ranges))
    return sorted(found, key=lambda n: _address_key(n.address))


def _address_key(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port) if port.isdigit() else 0


def cluster_nodes(bus: RedisStreamsBus) -> list[NodeInfo]:
    """The cluster's nodes as one node sees them (a random one: the cluster client tries another,
    and relearns the slot map, when it is down). [] when the bus is not on a cluster."""
    if not bus.cluster:
        return []
    with translated_errors():
        return nodes_of(bus.client.execute_command("CLUSTER NODES"))


def slot_of(key_or_tag: str) -> int:
    """The cluster slot a key (or a partition's tag, `{p3}:`) hashes to."""
    return key_slot(key_or_tag.encode())

"""What the dashboard shows, read from Redis: a Snapshot of dataclasses, gathered read-only through
bus.inspect. Rendering is choreo.ops.dashboard's business; nothing here draws."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from choreo.bus import dead_letters, inspect, keys as bus_keys, layout
from choreo.bus.connect import redact
from choreo.bus.contract import BusUnavailable, GroupMissing
from choreo.bus.redis_streams import RedisStreamsBus
from choreo.bus.trim import parse_id
from choreo.measure.load import percentile
from choreo.workers import SERVICES, keys
from choreo.workers.order import COMPLETED
from choreo.workers.service import Service

# Liveness comes from heartbeats (bus.heartbeat), never from XINFO CONSUMERS idle times: those
# count from the last delivery, and a quiet worker gets none. A live worker's loop reads at least
# every block_ms <= 1 s and its heartbeat says when; a heartbeat whose last read is older than
# this belongs to a wedged loop, and does not count as a live consumer.
STALE_AFTER_S = 10.0
# Entries idle this long since their last delivery are past the workers' claim idle (15 s by
# default) twice over: nobody is finishing them.
STUCK_AFTER_S = 30.0
# p50/p99 are over the RECENT_COMPLETIONS latest completions among the ORDERS_SCANNED newest
# orders: under load the newest orders are mostly still pending, so look further back.
RECENT_COMPLETIONS = 500
ORDERS_SCANNED = 5000
RECENT_EVENTS = 10

# -- the snapshot ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamRow:
    stream: str
    length: int
    entries_added: int | None
    per_s: float | None            # None on the first frame: there is no interval yet
    newest_age_s: float | None     # None: no entry ever added
    last_id: str


@dataclass(frozen=True)
class GroupRow:
    stream: str
    group: str
    consumers: int
    live_consumers: int
    pending: int
    lag: int | None                # None: Redis cannot say (shown "?", never 0)
    oldest_pending_age_s: float | None
    max_deliveries: int
    max_idle_s: float
    state: str


@dataclass(frozen=True)
class ConsumerRow:
    group: str                     # the service
    name: str
    host: str                      # from its heartbeat ("-": it has none)
    pid: str
    state: str                     # reading, handling, backing-off, ...; "gone": no heartbeat
    pending: int                   # summed over the streams the consumer reads
    read_age_s: float | None       # since its loop last read (heartbeat); None: never, or gone
    stale: bool                    # no live heartbeat, or one whose loop stopped reading


@dataclass(frozen=True)
class DeadLetterRow:
    service: str
    stream: str
    count: int
    newest_error: str
    newest_age_s: float | None


@dataclass(frozen=True)
class EventRow:
    at: str
    stream: str
    type: str
    order_id: str
    entry_id: str


@dataclass(frozen=True)
class OrdersView:
    by_status: dict[str, int] = field(default_factory=dict)
    completed_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    sampled: int = 0               # completions the percentiles are over


@dataclass(frozen=True)
class NodeRow:
    address: str
    role: str                      # primary or replica
    follows: str                   # a replica's primary's address ("-": a primary; "?": unknown)
    link: str                      # connected, fail, pfail (suspected by the node asked), disconnected
    slots: int
    partitions: list[int]          # the partitions whose slot this node serves


@dataclass(frozen=True)
class Snapshot:
    url: str                       # already redacted
    connected: bool = True
    error: str = ""
    server_version: str = ""
    ping_ms: float | None = None
    server_time_ms: int = 0
    taken_at: float = 0.0          # local wall clock, for the header's "refreshed" time
    streams: list[StreamRow] = field(default_factory=list)
    groups: list[GroupRow] = field(default_factory=list)
    consumers: list[ConsumerRow] = field(default_factory=list)
    orders: OrdersView | None = field(default_factory=OrdersView)   # None: an app without orders
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    # Partitions of the deployment (bus.layout): streams and groups are rows per partition's
    # stream; orders and dead letters are summed over the partitions.
    partitions: int = 1
    # A cluster's nodes (empty off a cluster), as the node that answered CLUSTER NODES sees them.
    nodes: list[NodeRow] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


# -- gathering -------------------------------------------------------------------------------------

def declared_streams(services: dict[str, Service] = SERVICES) -> list[str]:
    """Every partition's stream of every declared event type."""
    types = {t for s in services.values() for t in (*s.consumes, *s.emits)}
    return sorted(stream for t in types for stream in bus_keys.streams(t))


def gather(bus: RedisStreamsBus, url: str | None, previous: Snapshot | None = None,
           services: dict[str, Service] = SERVICES, clock=time.time, orders: bool = True) -> Snapshot:
    """Read everything the dashboard shows. Rates are over the interval since `previous`.
    LayoutError if the deployment records another partition count (its keys are not where this
    process looks: the figures would be a part of them), checked at every read: a live view or an
    exporter started while Redis was down has not checked it yet."""
    server = inspect.server(bus)
    bus.check_layout()
    now_ms = server.time_ms
    prev = previous if previous and previous.connected and previous.server_time_ms else None
    infos = [i for i in (inspect.stream_info(bus, s) for s in declared_streams(services)) if i]
    groups = [(i, g) for i in infos for g in inspect.groups(bus, i.stream)]
    consumers = [c for i, g in groups for c in inspect.consumers(bus, i.stream, g.group)]
    beats = {name: inspect.heartbeats(bus, name) for name in services}
    return Snapshot(
        url=redact(url), server_version=server.version, ping_ms=server.ping_ms,
        server_time_ms=now_ms, taken_at=clock(),
        streams=[stream_row(i, now_ms, prev) for i in infos],
        groups=[group_row(bus, i, g, beats.get(g.group, []), now_ms) for i, g in groups],
        consumers=consumer_rows(consumers, beats),
        orders=orders_view(bus, now_ms, prev) if orders else None,
        dead_letters=[dead_letter_row(bus, s, now_ms) for s in services],
        events=recent_events(bus, [i.stream for i in infos]), partitions=layout.current().partitions,
        nodes=node_rows(inspect.cluster_nodes(bus), layout.current()))


def node_rows(nodes: list[inspect.NodeInfo], at: layout.Layout) -> list[NodeRow]:
    """Each node, with the partitions whose slot it serves: a partition's keys all carry its tag,
    so they all hash to the tag's slot (and on a cluster keys are always tagged)."""
    by_id = {n.node_id: n.address for n in nodes}
    slots = {p: inspect.slot_of(at.tag(p)) for p in at.all()}
    return [NodeRow(n.address, n.role, by_id.get(n.primary_id, "?") if n.primary_id else "-", n.link,
                    n.slots, [p for p, slot in slots.items() if n.serves(slot)]) for n in nodes]


def _per_s(now: float | None, before: float | None, now_ms: int, prev: Snapshot | None) -> float | None:
    if prev is None or now is None or before is None or now_ms <= prev.server_time_ms:
        return None
    return max(0.0, (now - before) / ((now_ms - prev.server_time_ms) / 1000))


def _age_s(now_ms: int, entry_id: str | None) -> float | None:
    if not entry_id or entry_id == "0-0":
        return None
    return max(0.0, (now_ms - inspect.entry_ms(entry_id)) / 1000)


def stream_row(info: inspect.StreamInfo, now_ms: int, prev: Snapshot | None) -> StreamRow:
    # entries-added, not length: trimming lowers the length but not what was added.
    added = info.entries_added if info.entries_added is not None else info.length
    before = next((s.entries_added if s.entries_added is not None else s.length
                   for s in (prev.streams if prev else []) if s.stream == info.stream), None)
    if prev is not None and before is None:
        before = 0                  # the stream appeared during the interval
    return StreamRow(info.stream, info.length, info.entries_added,
                     _per_s(added, before, now_ms, prev), _age_s(now_ms, info.last_id), info.last_id)


def reading(beat: inspect.HeartbeatInfo) -> bool:
    return beat.read_age_s is not None and beat.read_age_s < STALE_AFTER_S


def group_row(bus: RedisStreamsBus, info: inspect.StreamInfo, g: inspect.GroupInfo,
              beats: list[inspect.HeartbeatInfo], now_ms: int) -> GroupRow:
    """Every worker of a service reads all of its streams: the group's live consumers are the
    service's heartbeats whose loop is reading."""
    p = inspect.pending(bus, info.stream, g.group)
    live = sum(1 for b in beats if reading(b))
    behind = parse_id(g.last_delivered_id) < parse_id(info.last_id)
    return GroupRow(info.stream, g.group, g.consumers, live, p.count, g.lag,
                    _age_s(now_ms, p.oldest_id), p.max_deliveries, p.max_idle_ms / 1000,
                    group_state(live, p.count, p.max_idle_ms / 1000, behind))


def group_state(live_consumers: int, pending: int, max_idle_s: float, behind: bool) -> str:
    """NO CONSUMERS first (it explains the others), then STUCK, then LAGGING.
    `behind` compares the group's last-delivered id with the stream's last id, which holds even
    where XINFO's lag counter is nil."""
    if live_consumers == 0:
        return "NO CONSUMERS"
    if pending and max_idle_s >= STUCK_AFTER_S:
        return "STUCK"
    return "LAGGING" if behind else "OK"


def consumer_rows(consumers: list[inspect.ConsumerInfo],
                  beats: dict[str, list[inspect.HeartbeatInfo]]) -> list[ConsumerRow]:
    """One row per consumer process (a worker reads all its streams under one name): every live
    heartbeat, and every consumer the groups know that has none (gone, perhaps holding entries)."""
    pending: dict[tuple[str, str], int] = {}
    for c in consumers:
        pending[(c.group, c.name)] = pending.get((c.group, c.name), 0) + c.pending
    rows = {(b.service, b.consumer): ConsumerRow(b.service, b.consumer, b.host, b.pid, b.state,
                                                 pending.get((b.service, b.consumer), 0),
                                                 b.read_age_s, not reading(b))
            for found in beats.values() for b in found}
    for (group, name), count in pending.items():
        rows.setdefault((group, name), ConsumerRow(group, name, "-", "-", "gone", count, None, True))
    return [rows[k] for k in sorted(rows)]


def orders_view(bus: RedisStreamsBus, now_ms: int, prev: Snapshot | None) -> OrdersView:
    by_status: dict[str, int] = {}
    for counts in bus.read_hashes(keys.every(keys.orders_by_status)):      # summed over partitions
        for k, v in counts.items():
            if k != "_v" and (n := inspect.int_or(v, None)) is not None:      # a hand-written "abc": not shown
                by_status[k] = by_status.get(k, 0) + n
    by_status = {k: n for k, n in by_status.items() if n}
    latencies = sorted(recent_latencies_ms(bus))
    before = prev.orders.by_status.get(COMPLETED, 0) if prev and prev.orders else None
    return OrdersView(by_status, _per_s(by_status.get(COMPLETED, 0), before, now_ms, prev),
                      percentile(latencies, 50) if latencies else None,
                      percentile(latencies, 99) if latencies else None, len(latencies))


def recent_latencies_ms(bus: RedisStreamsBus) -> list[int]:
    """created -> completed of the latest completions (by end time) among the newest orders."""
    ids = inspect.newest_members_of(bus, keys.every(keys.orders_index), ORDERS_SCANNED)
    rows = inspect.hash_fields(bus, [keys.order(i) for i in ids],
                               ["status", "created_at_ms", "ended_at_ms"])
    times = ((inspect.int_or(start, None), inspect.int_or(end, None))
             for status, start, end in rows if status == COMPLETED)
    done = sorted(((end, end - start) for start, end in times if start is not None and end is not None),
                  reverse=True)
    return [latency for _, latency in done[:RECENT_COMPLETIONS]]


def dead_letter_row(bus: RedisStreamsBus, service: str, now_ms: int) -> DeadLetterRow:
    newest, count = dead_letters.newest_and_count(bus, service)
    stream = bus_keys.any_partition(bus_keys.dead_letters(service))        # every partition's
    if newest is None:
        return DeadLetterRow(service, stream, 0, "", None)
    return DeadLetterRow(service, stream, count, newest.error, _age_s(now_ms, newest.dlq_id))


def recent_events(bus: RedisStreamsBus, streams: list[str], count: int = RECENT_EVENTS) -> list[EventRow]:
    entries = [d for s in streams for d in inspect.newest_entries(bus, s, count)]
    entries.sort(key=lambda d: parse_id(d.entry_id), reverse=True)
    return [EventRow(_clock_time(inspect.entry_ms(d.entry_id)), d.stream, d.fields.get("type", "?"),
                     d.fields.get("order_id", "?"), d.entry_id) for d in entries[:count]]


def _clock_time(ms: float) -> str:
    """An entry id's time of day; one no clock could have made (an id written by hand, years
    ahead) as its milliseconds."""
    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    except (ValueError, OverflowError, OSError):
        return f"{int(ms)} ms"


def gather_or_keep(bus: RedisStreamsBus, url: str | None, previous: Snapshot | None,
                   services: dict[str, Service] = SERVICES, orders: bool = True) -> Snapshot:
    """A snapshot that never raises: while Redis is down, the last figures marked disconnected."""
    try:
        return gather(bus, url, previous, services, orders=orders)
    except BusUnavailable as exc:
        base = previous or Snapshot(url=redact(url))
        return dataclasses.replace(base, connected=False, error=str(exc), taken_at=time.time())
    except GroupMissing:
        # A stream or group vanished between two reads of one gather; the next one sees it whole.
        return previous or Snapshot(url=redact(url), taken_at=time.time())

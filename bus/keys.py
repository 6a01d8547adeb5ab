"""Every Redis key name the bus uses, spelled once. Users read these with redis-cli.

Streams, dead-letter streams, dedup sets and traces exist once per partition (bus.layout): with
partitions (or on a cluster) their names carry the partition's hash tag after the prefix,
`events:{p3}:OrderCreated`; with one partition on a plain Redis they read `events:OrderCreated`.
"""

import re
from functools import lru_cache

from choreo.bus import layout

STREAM_PREFIX = "events:"
# The deployment's CHOREO_PARTITIONS, written by the first process that writes events and checked
# by every later one (RedisStreamsBus.agree_layout): processes that disagree would publish an
# order's events where its consumers do not look.
PARTITIONS = "choreo:partitions"
DLQ_PREFIX = "dlq:"


def stream(event_type: str, partition: int = 0) -> str:
    """The stream carrying one event type in one partition: events:<EventType>."""
    return STREAM_PREFIX + layout.current().tag(partition) + event_type


def streams(event_type: str) -> list[str]:
    """The event type's stream in every partition."""
    return [stream(event_type, p) for p in layout.current().all()]


def stream_for(event_type: str, instance_id: str) -> str:
    """The stream an event about `instance_id` (an order) goes to: its partition's."""
    return stream(event_type, layout.current().partition_of(instance_id))


# Pure functions of a stream's name, asked for every entry read: remembered per name (a worker
# reads a few dozen streams; the bound keeps odd names from growing it).
@lru_cache(maxsize=4096)
def event_type_of(stream_key: str) -> str:
    if not stream_key.startswith(STREAM_PREFIX):
        return ""
    return layout.split_tag(stream_key[len(STREAM_PREFIX):])[1]


@lru_cache(maxsize=4096)
def partition_of(key: str) -> int:
    """The partition a tagged key belongs to (0 for an untagged one)."""
    _, _, rest = key.partition(":")
    return layout.split_tag(rest)[0] or 0


def any_partition(key: str) -> str:
    """A key's name with its partition made a glob, for ACL patterns: `events:{p3}:OrderCreated`
    gives `events:{p*}:OrderCreated`; an untagged name is returned as it is."""
    prefix, _, rest = key.partition(":")
    partition, tail = layout.split_tag(rest)
    return key if partition is None else f"{prefix}:{{p*}}:{tail}"


# Settled records filed together: a record key of a filed kind ending in a sequential id
# (`reservation:7`, `reservation:{p3}:130`) that its service settles for good is moved into one
# hash per BUCKET ids of its kind and partition, as a field named by the id (bus.ops.File,
# workers.unit_of_work.settle). The kinds are the services' (workers.service.Service.files): only
# their absent keys are looked for in a bucket.
BUCKET = 64
SETTLED = "settled:"
# A key's name up to its first ":" (e.g. "reservation") -> the fields it files by position
# (bus.filing); a kind absent here is not filed.
FILED_KINDS: dict[str, tuple[str, ...]] = {}
_FILEABLE = re.compile(r"(([^:]+):(?:.*:)?)(\d{1,18})")


def filed(key: str) -> tuple[str, str] | None:
    """Where the record at `key` goes once settled: (bucket hash, field), or None for a key of a
    kind no service files, or one that does not end in ":<digits>" (ids of another shape keep
    their own key). Buckets hold about BUCKET orders each whatever the partitions: ids are spread
    over them, so the bucket number counts BUCKET * partitions ids.
    `reservation:7` -> ("reservation:settled:0", "7")."""
    parts = _fileable(key)
    if parts is None or parts[1] not in FILED_KINDS:
        return None
    head, _, digits = parts
    return f"{head}{SETTLED}{int(digits) // (BUCKET * layout.current().partitions)}", digits


# A handled entry asks filed() of the same few keys several times (its reads, writes and settling):
# the match is remembered per key name, which decides it alone.
@lru_cache(maxsize=4096)
def _fileable(key: str) -> tuple[str, str, str] | None:
    """(the key up to its id, its kind, its id's digits), or None for a key that files nowhere."""
    m = _FILEABLE.fullmatch(key)
    if m is None or m[1].endswith(SETTLED):
        return None
    return m[1], m[2], m[3]


def dead_letters(group: str, partition: int = 0) -> str:
    """A service's dead-letter stream in one partition: dlq:<service>."""
    return DLQ_PREFIX + layout.current().tag(partition) + group


def all_dead_letters(group: str) -> list[str]:
    return [dead_letters(group, p) for p in layout.current().all()]


def seen(group: str, partition: int = 0) -> str:
    """Dedup ids: a sorted set of the event ids <group> committed, each scored by the epoch second
    after which it may be forgotten (bus/commit.lua). One per partition."""
    return f"seen:{layout.current().tag(partition)}{group}"


def seen_for(group: str, instance_id: str) -> str:
    """The dedup set of the instance's partition."""
    return seen(group, layout.current().partition_of(instance_id))


TRACE_PREFIX = "trace:"


def trace(order_id: str) -> str:
    """The "<stream> <entry-id>" of every event published about one order: a hash of them as
    fields (bus/commit.lua; a list in earlier versions), read by inspect.trace_refs."""
    return f"{TRACE_PREFIX}{layout.current().tag_of(order_id)}{order_id}"


def heartbeat(service: str, consumer: str) -> str:
    """A live process's hash (service, consumer, host, pid, version, state, ...), with a TTL of a
    few renewal periods: it exists only while the process keeps renewing it (bus.heartbeat)."""
    return f"heartbeat:{_liveness_tag(service)}:{consumer}"


def heartbeats(service: str) -> str:
    """Sorted set of the consumer names that renewed a heartbeat of `service` lately, scored by
    the epoch ms of their last renewal: where readers find the heartbeat keys without a SCAN."""
    return f"heartbeats:{_liveness_tag(service)}"


def _liveness_tag(service: str) -> str:
    """On a tagged layout a heartbeat and its index share a slot (`{payment}`): renewed together
    in one MULTI."""
    return f"{{{service}}}" if layout.current().tagged else service

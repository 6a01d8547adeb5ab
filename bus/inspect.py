"""Read-only views of streams, groups, pending lists and entries, for the CLI and the dashboard.
Nothing here writes; every call is safe against a live system."""

from __future__ import annotations

from dataclasses import dataclass

from bus import keys
from bus.contract import Delivery
from bus.redis_streams import RedisStreamsBus, translated_errors


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
    """The entries named by (stream, id), one round trip; trimmed ones are left out."""
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for stream, entry_id in refs:
            pipe.xrange(stream, entry_id, entry_id)
        found = pipe.execute()
    return [Delivery(stream, rows[0][0], rows[0][1]) for (stream, _), rows in zip(refs, found) if rows]


def list_items(bus: RedisStreamsBus, key: str) -> list[str]:
    with translated_errors():
        return bus.client.lrange(key, 0, -1)

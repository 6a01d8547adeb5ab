"""Partitions: how one deployment's keys are spread so that Redis Cluster can hold them.

An instance (an order) belongs to partition crc32(instance id) mod P, where P is
CHOREO_PARTITIONS (default 1). Every stream, dead-letter stream, dedup set and per-instance key
carries its partition's hash tag, `{p<N>}`, right after its prefix (`events:{p3}:OrderCreated`,
`order:{p3}:7`), so one instance's commit touches one slot. With P = 1 on a plain Redis the keys
carry no tag and read exactly as they always have; on a cluster (a `?cluster=true` REDIS_URL) they
are tagged even with P = 1, since a commit must stay in one slot there.

Every process of a deployment must agree on P: it decides which stream an event goes to. It is
read from the environment once; `use` sets it for a process that is told otherwise (tests).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import parse_qs, urlsplit

MAX_PARTITIONS = 1024


class LayoutError(ValueError):
    """CHOREO_PARTITIONS holds a value no deployment can use."""


@dataclass(frozen=True)
class Layout:
    partitions: int = 1
    cluster: bool = False

    def __post_init__(self):
        # Every key name is built through tag(), several times per handled entry: made once.
        tags = tuple(f"{{p{p}}}:" for p in range(self.partitions)) if self.tagged else ()
        object.__setattr__(self, "_tags", tags)

    @property
    def tagged(self) -> bool:
        """Whether keys carry their partition's hash tag."""
        return self.partitions > 1 or self.cluster

    def partition_of(self, instance_id: str) -> int:
        if self.partitions == 1:
            return 0
        return zlib.crc32(str(instance_id).encode()) % self.partitions

    def tag(self, partition: int) -> str:
        """What follows a key's prefix: `{p3}:`, or nothing when keys are not tagged."""
        if not self._tags:
            return ""
        return self._tags[partition] if 0 <= partition < len(self._tags) else f"{{p{partition}}}:"

    def tag_of(self, instance_id: str) -> str:
        return self.tag(self.partition_of(instance_id))

    def all(self) -> range:
        return range(self.partitions)


def split_tag(rest: str) -> tuple[int | None, str]:
    """(partition, what follows) of a key's part after its prefix: `{p3}:OrderCreated` gives
    (3, "OrderCreated"); an untagged one (None, rest)."""
    if rest.startswith("{p"):
        close = rest.find("}:")
        if close > 2 and rest[2:close].isdigit():
            return int(rest[2:close]), rest[close + 2:]
    return None, rest


def from_env(env: Mapping[str, str] | None = None) -> Layout:
    env = os.environ if env is None else env
    raw = env.get("CHOREO_PARTITIONS", "") or "1"
    try:
        partitions = int(raw)
    except ValueError:
        raise LayoutError(f"CHOREO_PARTITIONS must be an integer, got {raw[:40]!r}") from None
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise LayoutError(f"CHOREO_PARTITIONS must be 1..{MAX_PARTITIONS}, got {partitions}")
    return Layout(partitions, cluster_url(env.get("REDIS_URL")))


def cluster_url(url: str | None) -> bool:
    """Whether a Redis URL asks for the cluster client (`?cluster=true`)."""
    if not url:
        return False
    try:
        values = parse_qs(urlsplit(url).query).get("cluster", [])
    except ValueError:
        return False
    return any(v.lower() in ("1", "true", "yes") for v in values)


_current: Layout | None = None


def current() -> Layout:
    global _current
    if _current is None:
        _current = from_env()
    return _current


def use(layout: Layout | None) -> Layout | None:
    """Make `layout` this process's (None: read the environment again on next use); returns the
    one it replaces."""
    global _current
    previous, _current = _current, layout
    return previous

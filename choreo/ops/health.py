"""`choreo health SERVICE`: is the service alive and keeping up? For a liveness or readiness probe,
a systemd ExecStartPost, a cron check: exit 0 healthy, 1 not, and one line saying why.

Healthy means both:
- a live heartbeat (bus.heartbeat) whose consumer loop read within max_silence_s: the process is
  running, reaching Redis and not wedged (XINFO's idle times cannot say this: they count from the
  last delivery, and a quiet worker has none);
- the oldest entry pending in any of the service's groups is younger than max_pending_age_s:
  what it took on is being finished, not retried forever or held by a dead consumer;
- and so is the oldest entry none of its consumers has been handed yet: every stream is read
  (with partitions, a partition no worker serves would otherwise go unnoticed).
The timers process (SERVICE `timers`) has no groups: its sweeper's reads are its reads.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from choreo.bus import inspect
from choreo.bus.contract import GroupMissing
from choreo.bus.redis_streams import RedisStreamsBus


@dataclass(frozen=True)
class Health:
    service: str
    healthy: bool
    reason: str
    max_silence_s: float
    max_pending_age_s: float
    oldest_pending_age_s: float | None = None
    oldest_pending_stream: str | None = None
    consumers: list[inspect.HeartbeatInfo] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.service}: {'healthy' if self.healthy else 'unhealthy'}: {self.reason}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def oldest_pending(bus: RedisStreamsBus, group: str, streams: list[str]) -> tuple[float | None, str | None]:
    """The age (by the server's clock) of the oldest entry pending in `group` on any of `streams`,
    and its stream; (None, None) when nothing is pending (or the group is not there yet)."""
    now_ms = inspect.server(bus).time_ms
    oldest: tuple[float | None, str | None] = (None, None)
    for stream in streams:
        try:
            p = inspect.pending(bus, stream, group)
        except GroupMissing:
            continue
        if p.oldest_id:
            age = max(0.0, (now_ms - inspect.entry_ms(p.oldest_id)) / 1000)
            if oldest[0] is None or age > oldest[0]:
                oldest = (age, stream)
    return oldest


def oldest_unread(bus: RedisStreamsBus, group: str, streams: list[str]) -> tuple[float | None, str | None]:
    """The age of the oldest entry on any of `streams` that `group` has not been handed yet,
    and its stream: nobody reads it, or the service is behind."""
    now_ms = inspect.server(bus).time_ms
    oldest: tuple[float | None, str | None] = (None, None)
    for stream in streams:
        entry = inspect.oldest_unread(bus, stream, group)
        if entry:
            age = max(0.0, (now_ms - inspect.entry_ms(entry)) / 1000)
            if oldest[0] is None or age > oldest[0]:
                oldest = (age, stream)
    return oldest


def check(bus: RedisStreamsBus, service: str, streams: list[str], max_silence_s: float,
          max_pending_age_s: float) -> Health:
    beats = inspect.heartbeats(bus, service)
    age, stream = oldest_pending(bus, service, streams)
    base = dict(service=service, max_silence_s=max_silence_s, max_pending_age_s=max_pending_age_s,
                oldest_pending_age_s=age, oldest_pending_stream=stream, consumers=beats)
    if not beats:
        return Health(healthy=False, reason="no live heartbeat: no process running, or none "
                      "renewed its heartbeat within its TTL (stopped, frozen or cut off)", **base)
    reading = [b for b in beats if b.read_age_s is not None and b.read_age_s <= max_silence_s]
    if not reading:
        shown = "; ".join(f"{b.consumer} {b.state}, last read "
                          f"{'never' if b.read_age_s is None else f'{b.read_age_s:.1f}s ago'}"
                          for b in beats[:3])
        return Health(healthy=False, reason=f"no consumer read within {max_silence_s:g}s ({shown})",
                      **base)
    if age is not None and age > max_pending_age_s:
        return Health(healthy=False, reason=f"oldest pending entry on {stream} is {age:.1f}s old "
                      f"(max {max_pending_age_s:g}s)", **base)
    unread, unread_stream = oldest_unread(bus, service, streams)
    if unread is not None and unread > max_pending_age_s:
        return Health(healthy=False, reason=f"oldest unread entry on {unread_stream} is {unread:.1f}s "
                      f"old (max {max_pending_age_s:g}s): no live consumer reads that stream "
                      f"(with partitions: is every partition served?)", **base)
    freshest = min(b.read_age_s for b in reading)
    pending = "nothing pending" if age is None else f"oldest pending {age:.1f}s"
    return Health(healthy=True, reason=f"{len(reading)} of {len(beats)} live consumers reading, "
                  f"last read {freshest:.1f}s ago, {pending}", **base)

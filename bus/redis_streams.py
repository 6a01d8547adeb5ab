"""The bus over redis-py: consumer groups, batched reads, the atomic commit, reclaiming."""

from __future__ import annotations

import contextlib
from importlib import resources
from typing import Iterable, Sequence

import redis

from bus.contract import BusError, BusUnavailable, Commit, Delivery, GroupMissing, Outcome


def _lua(name: str) -> str:
    return resources.files("bus").joinpath(name).read_text()


@contextlib.contextmanager
def translated_errors():
    """Map redis-py's exceptions onto the bus's own, so callers never import redis."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise BusUnavailable(str(exc) or type(exc).__name__) from exc
    except redis.ResponseError as exc:
        # UNBLOCKED: the stream was deleted while XREADGROUP waited on it (e.g. FLUSHALL).
        if str(exc).startswith(("NOGROUP", "UNBLOCKED")):
            raise GroupMissing(str(exc)) from exc
        raise BusError(f"Redis refused a command: {exc}") from exc


def encode_batch(group: str, commits: Sequence[Commit]) -> list:
    argv: list = [group, len(commits)]
    for c in commits:
        stream, entry_id = c.ack or ("", "")
        argv += [stream, entry_id, c.seen, c.seen_ttl_s or 1, len(c.checks)]
        for key, version in c.checks.items():
            argv += [key, version]
        argv.append(len(c.ops))
        for op in c.ops:
            argv += [op[0], len(op) - 1, *op[1:]]
    return argv


class RedisStreamsBus:
    def __init__(self, client: redis.Redis):
        self.client = client
        self._commit = client.register_script(_lua("commit.lua"))
        self._lease = client.register_script(_lua("lease.lua"))
        self._forget = client.register_script(_lua("forget_consumer.lua"))
        # Entries that XAUTOCLAIM found deleted (trimmed) while still pending; reported, not looped on.
        self.trimmed_while_pending = 0
        self._timers = None                 # the rq queue, made on first use

    def schedule(self, calls) -> None:
        from bus.scheduler import schedule, timer_queue
        if self._timers is None:
            self._timers = timer_queue(self.client)
        schedule(self._timers, calls)

    # -- setup ---------------------------------------------------------------------------------
    def ensure_groups(self, group: str, streams: Iterable[str]) -> None:
        with translated_errors():
            for stream in streams:
                try:
                    self.client.xgroup_create(stream, group, id="0", mkstream=True)
                except redis.ResponseError as exc:
                    if not str(exc).startswith("BUSYGROUP"):
                        raise

    # -- reading -------------------------------------------------------------------------------
    def read_new(self, group, consumer, streams, count, block_ms) -> list[Delivery]:
        with translated_errors():
            reply = self.client.xreadgroup(group, consumer, {s: ">" for s in streams},
                                           count=count, block=block_ms if block_ms > 0 else None)
        return [Delivery(stream, entry_id, fields or {}) for stream, entries in reply or []
                for entry_id, fields in entries]

    def read_own_pending(self, group, consumer, after, count) -> list[Delivery]:
        with translated_errors():
            reply = self.client.xreadgroup(group, consumer, dict(after), count=count)
            found = [(stream, entries) for stream, entries in reply or [] if entries]
            return self._with_delivery_counts(group, consumer, found)

    def claim_stale(self, group, consumer, streams, min_idle_ms, count) -> list[Delivery]:
        found = []
        with translated_errors():
            for stream in streams:
                reply = self.client.xautoclaim(stream, group, consumer, min_idle_ms, "0-0", count=count)
                entries = reply[1]
                if len(reply) > 2:
                    self.trimmed_while_pending += len(reply[2])
                if entries:
                    found.append((stream, entries))
            return self._with_delivery_counts(group, consumer, found)

    def retry_due(self, group, consumer, streams, backoff_ms, count) -> list[Delivery]:
        """This consumer's pending entries whose backoff (by times delivered) has passed, claimed
        again to itself, which counts a new delivery."""
        found = []
        with translated_errors():
            for stream in streams:
                pending = self.client.xpending_range(stream, group, "-", "+", count,
                                                     consumername=consumer, idle=backoff_ms(1))
                due = [p["message_id"] for p in pending
                       if p["time_since_delivered"] >= backoff_ms(p["times_delivered"])]
                if not due:
                    continue
                entries = self.client.xclaim(stream, group, consumer, backoff_ms(1), due)
                if entries:
                    found.append((stream, entries))
            return self._with_delivery_counts(group, consumer, found)

    def renew(self, group, consumer, deliveries: Sequence[Delivery]) -> int:
        by_stream: dict[str, list[str]] = {}
        for d in deliveries:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        with translated_errors():
            return sum(self._lease(args=[stream, group, consumer, *ids])
                       for stream, ids in by_stream.items())

    def forget_idle_consumers(self, group, streams, min_idle_ms) -> list[str]:
        removed = []
        with translated_errors():
            for stream in streams:
                if not self.client.exists(stream):
                    continue
                for c in self.client.xinfo_consumers(stream, group):
                    if c["pending"] == 0 and c["idle"] >= min_idle_ms and \
                            self._forget(args=[stream, group, c["name"]]) == 1:
                        removed.append(f"{stream}/{c['name']}")
        return removed

    def _with_delivery_counts(self, group, consumer, found) -> list[Delivery]:
        """Attach XPENDING's times-delivered: the count survives restarts, an in-process one would not."""
        deliveries = []
        for stream, entries in found:
            ids = [entry_id for entry_id, _ in entries]
            pending = self.client.xpending_range(stream, group, min=ids[0], max=ids[-1],
                                                 count=len(ids), consumername=consumer)
            times = {p["message_id"]: p["times_delivered"] for p in pending}
            deliveries += [Delivery(stream, entry_id, fields or {}, times.get(entry_id, 1))
                           for entry_id, fields in entries if entry_id in times]
        return deliveries

    def allocate_ids(self, sequence: str, n: int) -> range:
        """n fresh integers from a counter (INCRBY), e.g. order ids."""
        with translated_errors():
            last = self.client.incrby(sequence, n)
        return range(last - n + 1, last + 1)

    def read_hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        if not keys:
            return []
        with translated_errors():
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return pipe.execute()

    # -- writing -------------------------------------------------------------------------------
    def commit(self, group: str, commits: Sequence[Commit]) -> list[Outcome]:
        if not commits:
            return []
        with translated_errors():
            statuses = self._commit(args=encode_batch(group, commits))
        return [Outcome(int(s)) for s in statuses]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> "RedisStreamsBus":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

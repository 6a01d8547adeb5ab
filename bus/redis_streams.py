"""The bus over redis-py: consumer groups, batched reads, the atomic commit, reclaiming."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from importlib import resources
from typing import Callable, Iterable, Sequence

import hiredis
import redis
from redis.crc import key_slot

from choreo.bus import filing, keys, layout
from choreo.bus.contract import (HOLD_OPS, BusError, BusUnavailable, Commit, CredentialsRefused,
                                 Delivery, GroupMissing, Hold, Outcome, PermissionsMissing)


# A heartbeat's name stays in heartbeats:<service> this long after its last renewal (by the
# writer's clock: an hour absorbs any skew between hosts); the heartbeat key itself decides liveness.
HEARTBEAT_INDEX_MS = 3_600_000
# On a cluster, streams of several partitions cannot be read in one blocking XREADGROUP (each
# partition is its own slot): they are read together without blocking, and an empty round waits
# this long. One server reads them all in one XREADGROUP that blocks, as with one partition.
IDLE_POLL_MS = 10


def _lua(name: str) -> str:
    return resources.files("choreo.bus").joinpath(name).read_text()


# What a cluster answers while a primary fails over or a slot moves (most are ResponseErrors in
# redis-py, so named before it): a reason to wait, not a refusal.
CLUSTER_IN_FLUX = (redis.exceptions.ClusterError, redis.exceptions.TryAgainError,
                   redis.exceptions.ReadOnlyError, redis.exceptions.SlotNotCoveredError)


PIPELINE_ERROR = " of pipeline caused error: "
# The script's statuses (bus/commit.lua): a dict lookup, where Outcome(status) costs an Enum call.
OUTCOMES = {o.value: o for o in Outcome}


@contextlib.contextmanager
def translated_errors():
    """Map redis-py's exceptions onto the bus's own, so callers never import redis."""
    try:
        yield
    except redis.exceptions.AuthenticationError as exc:     # (a ConnectionError to redis-py)
        raise CredentialsRefused(f"Redis refused the user name and password ({exc}): check the "
                                 f"user and password in the Redis URL") from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise BusUnavailable(str(exc) or type(exc).__name__) from exc
    except redis.exceptions.NoPermissionError as exc:
        raise PermissionsMissing(str(exc)) from exc
    except CLUSTER_IN_FLUX as exc:
        # A failover or a slot moving: the cluster's answer for now, never the entry's fault (a
        # BusError would dead-letter it): the worker backs off and tries again.
        raise BusUnavailable(f"Redis Cluster is failing over or moving a slot ({type(exc).__name__}: "
                             f"{exc})") from exc
    except redis.exceptions.AskError as exc:            # MOVED or ASK, to a client not for a cluster
        raise BusError(f"Redis Cluster answered MOVED/ASK ({exc}): on a cluster REDIS_URL needs "
                       f"?cluster=true (docs/cluster.md)") from exc
    except redis.ResponseError as exc:
        # UNBLOCKED: the stream was deleted while XREADGROUP waited on it (e.g. FLUSHALL). In a
        # pipeline redis-py puts "Command # n (...) of pipeline caused error: " before Redis's words.
        if str(exc).rpartition(PIPELINE_ERROR)[2].startswith(("NOGROUP", "UNBLOCKED")):
            raise GroupMissing(str(exc)) from exc
        raise BusError(f"Redis refused a command: {exc}") from exc
    except redis.exceptions.RedisClusterException as exc:    # the cluster client's own refusals
        raise BusError(f"Redis Cluster client: {exc}") from exc


def same_server(client: redis.Redis, decode: bool) -> redis.Redis:
    """A client on the same server (pool class and address, so fakeredis too) that returns str
    (decode) or bytes. On a cluster: a cluster client on the same nodes."""
    if isinstance(client, redis.RedisCluster):
        node = client.get_default_node()
        kwargs = {k: v for k, v in client.nodes_manager.connection_kwargs.items()
                  if k not in ("host", "port", "decode_responses")}
        return redis.RedisCluster(host=node.host, port=node.port, decode_responses=decode,
                                  startup_nodes=list(client.nodes_manager.startup_nodes.values()),
                                  **kwargs)
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": decode}
    return NamingClient(connection_pool=type(pool)(connection_class=pool.connection_class, **kwargs))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_entry(stream: str, entry_id, fields) -> Delivery:
    """An entry as redis-py's stream commands give it (fields a dict of bytes), or as Redis sends
    it (a flat list of names and values, read_new's)."""
    entry_id = _text(entry_id)
    if fields is None:                      # deleted (trimmed) while pending
        return Delivery(stream, entry_id, {})
    pairs = zip(fields[::2], fields[1::2]) if isinstance(fields, list) else fields.items()
    try:
        return Delivery(stream, entry_id, {k.decode(): v.decode() for k, v in pairs})
    except UnicodeDecodeError as exc:
        pairs = zip(fields[::2], fields[1::2]) if isinstance(fields, list) else fields.items()
        shown = {k.decode(errors="backslashreplace"): v.decode(errors="backslashreplace")
                 for k, v in pairs}
        return Delivery(stream, entry_id, shown, error=f"not UTF-8: {exc.reason} at byte {exc.start}")


class _Places(dict):
    """Each distinct key's place in KEYS (1-based), given in order of first use; "" is 0."""

    def __missing__(self, name: str) -> str:
        place = self[name] = str(len(self))
        return place


# Numbers go into ARGV as text, made here: the same bytes on the wire, but hiredis packs an int
# at twice the cost of a str, and a batch's ARGV is thousands of words, a third of them numbers.
_COUNTS = [str(n) for n in range(256)]


def _count(n: int) -> str:
    return _COUNTS[n] if n < 256 else str(n)


def encode_batch(group: str, commits: Sequence[Commit]) -> tuple[list[str], list]:
    """(KEYS, ARGV) of bus/commit.lua for a batch: every distinct key once in KEYS, and ARGV naming
    each by its place there (1-based; 0 for none), its counts and places as text."""
    places = _Places({"": "0"})
    key = places.__getitem__                # a key seen before costs one dict lookup

    argv: list = [group, _count(len(commits)), "0"]
    for c in commits:
        stream, entry_id = c.ack or ("", "")
        if c.seen:
            argv += [key(stream), entry_id, key(c.seen), c.seen_id, str(c.seen_ttl_s or 1), _count(len(c.checks))]
        else:                           # no dedup id: no id nor time for it (bus/commit.lua)
            argv += [key(stream), entry_id, "0", _count(len(c.checks))]
        for name, version in c.checks.items():
            argv += [key(name), version]
        argv.append(_count(len(c.ops)))
        for op in c.ops:
            words = op.words(key)
            argv += [words[0], _count(len(words) - 1), *words[1:]]
    return list(places)[1:], argv


def by_partition(streams: Iterable[str]) -> list[list[str]]:
    """Streams grouped by partition (bus.layout), each group readable in one command."""
    groups: dict[int, list[str]] = {}
    for stream in streams:
        groups.setdefault(keys.partition_of(stream), []).append(stream)
    return list(groups.values())


def first_key(commit: Commit) -> str:
    """The first key a commit touches, as encode_batch would list it: its ack's stream, else the
    first hash it checks, else its first op's key ("" for none)."""
    if commit.ack:
        return commit.ack[0]
    if commit.checks:
        return next(iter(commit.checks))
    for op in commit.ops:
        return getattr(op, "key", None) or getattr(op, "stream", "")
    return ""


def pipelined(client, commands: Sequence[tuple]) -> list:
    """The replies to `commands` (each a tuple of words), sent in one round trip on one of the
    client's connections; a reply Redis refused raises, as a pipeline's execute() raises it, once
    every reply is read. What redis-py's pipeline does per command besides (its bookkeeping and
    callbacks) cost a worker more than the command itself: a batch's prefetch sends ~80 HGETALLs.
    Not for a cluster client (its commands go to several nodes): use its pipeline."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([b"".join(hiredis.pack_command(c) for c in commands)])
        replies, refused = [], None
        for n, command in enumerate(commands, 1):
            try:
                reply = conn.read_response()
            except redis.ResponseError as exc:      # the others are still to be read
                reply = exc
            if isinstance(reply, redis.ResponseError) and refused is None:
                if len(commands) > 1 or wrong_type(reply):
                    # Which one, as redis-py's pipeline says it (of one command too, where a
                    # WRONGTYPE would not name its key): in place, so a kind made of its
                    # message (MOVED's slot and node) stays what it is.
                    named(reply, command, n)
                refused = reply
            replies.append(reply)
    except BaseException:
        conn.disconnect()           # replies may be left unread on it
        raise
    finally:
        pool.release(conn)
    if refused is not None:
        raise refused
    return replies


def named(exc: redis.ResponseError, command: Sequence, n: int = 1) -> None:
    """Put the command's words (and so its key) before Redis's message, in place, as redis-py's
    pipeline does: `Command # n (HGETALL orders:by_status) of pipeline caused error: …`."""
    words = " ".join(map(str, command))
    words = words if len(words) <= 200 else words[:199] + "…"
    exc.args = (f"Command # {n} ({words}){PIPELINE_ERROR}{exc.args[0] if exc.args else ''}",
                *exc.args[1:])


def wrong_type(exc: BaseException) -> bool:
    """A WRONGTYPE that does not say yet which command (and key) met it."""
    said = str(exc)
    return said.startswith("WRONGTYPE") and PIPELINE_ERROR not in said


class NamingClient(redis.Redis):
    """redis-py's client, whose WRONGTYPE errors name the command and key that met them (a key
    of another type, written by hand, is the one a user must find): Redis's own message does
    not, and redis-py names the command only in a pipeline."""

    def execute_command(self, *args, **options):
        try:
            return super().execute_command(*args, **options)
        except redis.ResponseError as exc:
            if wrong_type(exc):
                named(exc, args)
            raise


def _hash(reply) -> dict[str, str]:
    """HGETALL's reply as a dict: a flat list of names and values (RESP2), or a map (RESP3)."""
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))


def _replies(client, commands: Sequence[tuple]) -> list:
    """pipelined(), or on a cluster its client's pipeline, which sends each node its commands."""
    if not isinstance(client, redis.RedisCluster):
        return pipelined(client, commands)
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute()


def read_records(client, keys_: Sequence[str], chunk: int = 2000) -> list[dict[str, str]]:
    """Every field of each hash, or for one that is absent, of the settled record filed in its
    stead (bus.keys.filed: no `_v`, it never changes again); {} where neither is. One round trip
    per `chunk` keys, and one more for the absent ones that may be filed."""
    out: list[dict[str, str]] = []
    for i in range(0, len(keys_), chunk):
        out += map(_hash, _replies(client, [("HGETALL", key) for key in keys_[i:i + chunk]]))
    homes = [(place, home) for place, (key, fields) in enumerate(zip(keys_, out))
             if not fields and (home := keys.filed(key))]
    for i in range(0, len(homes), chunk):
        part = homes[i:i + chunk]
        for (place, _), value in zip(part, _replies(client, [("HGET", *home) for _, home in part])):
            out[place] = filing.unpack(keys_[place], value)
    return out


def by_slot(commits: Sequence[Commit]) -> list[list[int]]:
    """The places of the commits, grouped by the cluster slot of their first key (a commit's
    keys share one slot: its partition's or, for stock, its product's), in order within each."""
    groups: dict[int, list[int]] = {}
    for place, commit in enumerate(commits):
        groups.setdefault(key_slot(first_key(commit).encode()), []).append(place)
    return list(groups.values())


def _same_layout(stored, ours: int) -> None:
    if stored != str(ours):
        raise layout.LayoutError(
            f"this deployment's keys are laid out for CHOREO_PARTITIONS={str(stored)[:20]} "
            f"({keys.PARTITIONS}), this process has {ours}: every process must agree "
            f"(to change it, see docs/cluster.md, \"Choosing P, and changing it\")")


class RedisStreamsBus:
    def __init__(self, client: redis.Redis):
        self.client = client                # decode_responses=True: everything but entry fields
        # On Redis Cluster a batch is committed one slot at a time (bus.layout).
        self.cluster = isinstance(client, redis.RedisCluster)
        self.raw = same_server(client, decode=False)        # bytes: stream entries, decoded one by one
        self._commit = client.register_script(_lua("commit.lua"))
        self._lease = client.register_script(_lua("lease.lua"))
        self._forget = client.register_script(_lua("forget_consumer.lua"))
        self._hold = client.register_script(_lua("hold.lua"))
        # WAIT after each commit for this many replicas (CHOREO_WAIT_REPLICAS; 0: never), at most
        # wait_timeout_ms; commits that timed out short of them are counted.
        self.wait_replicas, self.wait_timeout_ms, self.short_waits = 0, 1000, 0
        # Entries that XAUTOCLAIM found deleted (trimmed) while still pending; reported, not looped on.
        self.trimmed_while_pending = 0
        # Whether this bus has agreed its partition count with the deployment (agree_layout):
        # asked before its first commit, so no writer publishes where no reader looks.
        self.layout_agreed = False

    # -- setup ---------------------------------------------------------------------------------
    def ensure_groups(self, group: str, streams: Iterable[str]) -> None:
        with translated_errors():
            for stream in streams:
                try:
                    self.client.xgroup_create(stream, group, id="0", mkstream=True)
                except redis.ResponseError as exc:
                    if not str(exc).startswith("BUSYGROUP"):
                        raise

    def agree_layout(self) -> None:
        """Record this process's partition count if none is (SET NX), else check it matches:
        layout.LayoutError, naming both, when it does not. Every writer does, before its first
        commit (commit() asks, once per bus): an event published under another count goes to
        streams no worker of the deployment reads."""
        ours = layout.current().partitions
        with translated_errors():
            self.client.set(keys.PARTITIONS, ours, nx=True)
            stored = self.client.get(keys.PARTITIONS)
        _same_layout(stored, ours)
        self.layout_agreed = True

    def check_layout(self) -> None:
        """The read-only half of agree_layout, for readers (audit, health, dlq, status, the
        dashboard): LayoutError when the deployment records another partition count, whose keys
        this process would not find (an audit clean of streams it never looked at). Nothing
        recorded, or a user who may not read the record (the trimmer), passes."""
        try:
            with translated_errors():
                stored = self.client.get(keys.PARTITIONS)
        except CredentialsRefused:
            raise
        except PermissionsMissing:
            return
        if stored is not None:
            _same_layout(stored, layout.current().partitions)

    # -- reading -------------------------------------------------------------------------------
    # Entries are read as bytes and decoded one by one: an entry that is not UTF-8 becomes a
    # Delivery with `error` set (dead-lettered by the worker), instead of failing the whole reply.
    def read_together(self, streams: Iterable[str]) -> list[list[str]]:
        """The streams one read can cover together: all of them on one server; on a cluster,
        each partition's apart (its own slot: a read cannot span slots, IDLE_POLL_MS above)."""
        return by_partition(streams) if self.cluster else [list(streams)]

    def read_new(self, group, consumer, streams, count, block_ms) -> list[Delivery]:
        groups = self.read_together(streams)
        if len(groups) == 1:
            # As Redis sends it (pipelined): redis-py's reading of each entry into a dict of
            # bytes, which decode_entry then made again of text, cost a worker more than Redis
            # took to send it.
            wait = ("BLOCK", block_ms) if block_ms > 0 else ()
            with translated_errors(), self.routed():
                reply, = pipelined(self.reader_of(streams[0]), [
                    ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, *wait, "STREAMS",
                     *streams, *(">",) * len(streams))])
            if isinstance(reply, dict):     # RESP3: a map of stream to entries
                reply = reply.items()
            return [decode_entry(_text(stream), entry_id, fields) for stream, entries in reply or []
                    for entry_id, fields in entries]
        # One XREADGROUP per partition, all in one pipeline (one per node on a cluster).
        with translated_errors():
            replies = self.read_partitions(
                groups, lambda pipe, part: pipe.xreadgroup(group, consumer, {s: ">" for s in part},
                                                           count=count))
        found = [decode_entry(_text(stream), entry_id, fields) for reply in replies
                 for stream, entries in reply or [] for entry_id, fields in entries]
        if not found and block_ms > 0:
            time.sleep(min(block_ms, IDLE_POLL_MS) / 1000)
        return found

    def read_own_pending(self, group, consumer, after, count) -> list[Delivery]:
        after = dict(after)
        with translated_errors():
            replies = self.read_partitions(
                by_partition(after),
                lambda pipe, part: pipe.xreadgroup(group, consumer, {s: after[s] for s in part},
                                                   count=count))
            found = [decode_entry(_text(stream), entry_id, fields) for reply in replies
                     for stream, entries in reply or [] for entry_id, fields in entries]
            return self._with_delivery_counts(group, found)

    def read_partitions(self, groups: list[list[str]], add: Callable) -> list:
        """Replies (bytes) of one read per group of streams, each group one partition's:
        add(pipe, group) puts the read in a pipeline. On a cluster each node's reads go in a plain
        pipeline to that node: the cluster client would first ask COMMAND GETKEYS where the keys
        of every XREADGROUP and XREAD are, two round trips each."""
        if not self.cluster:
            pipe = self.raw.pipeline(transaction=False)
            for part in groups:
                add(pipe, part)
            return pipe.execute()
        replies: list = [None] * len(groups)
        with self.routed():
            for node, places in self._per_node([part[0] for part in groups], self.raw):
                pipe = node.pipeline(transaction=False)
                for place in places:
                    add(pipe, groups[place])
                for place, reply in zip(places, pipe.execute()):
                    replies[place] = reply
        return replies

    def reader_of(self, key: str):
        """What reads `key`'s stream: the bytes client, or on a cluster its node's own client."""
        return self._per_node([key], self.raw)[0][0] if self.cluster else self.raw

    @contextlib.contextmanager
    def routed(self):
        """Around commands sent to a node the cluster client chose: when that node is gone or no
        longer serves the slot (a failover, a slot moved), the clients learn the slot map anew
        before the error goes on (the worker backs off and tries again)."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._learn_slots()
            raise
        except (redis.exceptions.AskError, *CLUSTER_IN_FLUX) as exc:     # MovedError is an AskError
            if self.cluster:
                self._learn_slots()
                raise BusUnavailable(f"the cluster moved a slot ({exc}); reading the slot map again") from exc
            raise

    def _learn_slots(self) -> None:
        if self.cluster:
            for client in (self.client, self.raw):
                with contextlib.suppress(Exception):
                    client.nodes_manager.initialize()

    def claim_stale(self, group, consumer, streams, min_idle_ms, count) -> list[Delivery]:
        with translated_errors():
            pipe = self.raw.pipeline(transaction=False)
            for stream in streams:
                pipe.xautoclaim(stream, group, consumer, min_idle_ms, "0-0", count=count)
            found = []
            for stream, reply in zip(streams, pipe.execute()):
                if len(reply) > 2:
                    self.trimmed_while_pending += len(reply[2])
                found += [decode_entry(stream, entry_id, fields) for entry_id, fields in reply[1]]
            return self._with_delivery_counts(group, found)

    def retry_due(self, group, consumer, streams, backoff_ms, count) -> list[Delivery]:
        """This consumer's pending entries whose backoff (by times delivered) has passed, claimed
        again to itself, which counts a new delivery. One round trip when nothing is due."""
        with translated_errors():
            pipe = self.client.pipeline(transaction=False)
            for stream in streams:
                pipe.xpending_range(stream, group, "-", "+", count, consumername=consumer,
                                    idle=backoff_ms(1))
            due = {stream: [p["message_id"] for p in pending
                            if p["time_since_delivered"] >= backoff_ms(p["times_delivered"])]
                   for stream, pending in zip(streams, pipe.execute())}
            found = []
            for stream, ids in due.items():
                if ids:
                    entries = self.raw.xclaim(stream, group, consumer, backoff_ms(1), ids)
                    found += [decode_entry(stream, entry_id, fields) for entry_id, fields in entries]
            return self._with_delivery_counts(group, found)

    def renew(self, group, consumer, deliveries: Sequence[Delivery]) -> int:
        by_stream: dict[str, list[str]] = {}
        for d in deliveries:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        with translated_errors():
            return sum(self._lease(keys=[stream], args=[group, consumer, *ids])
                       for stream, ids in by_stream.items())

    def forget_idle_consumers(self, group, streams, min_idle_ms) -> list[str]:
        removed = []
        with translated_errors():
            for stream in streams:
                if not self.client.exists(stream):
                    continue
                for c in self.client.xinfo_consumers(stream, group):
                    if c["pending"] == 0 and c["idle"] >= min_idle_ms and \
                            self._forget(keys=[stream], args=[group, c["name"]]) == 1:
                        removed.append(f"{stream}/{c['name']}")
        return removed

    def _with_delivery_counts(self, group, found: list[Delivery]) -> list[Delivery]:
        """Attach XPENDING's times-delivered, looked up per id (one round trip): the count
        survives restarts, an in-process one would not. Entries no longer pending are dropped."""
        if not found:
            return []
        pipe = self.client.pipeline(transaction=False)
        for d in found:
            pipe.xpending_range(d.stream, group, min=d.entry_id, max=d.entry_id, count=1)
        counts = pipe.execute()
        return [dataclasses.replace(d, deliveries=rows[0]["times_delivered"])
                for d, rows in zip(found, counts) if rows]

    # -- liveness (bus.heartbeat) ---------------------------------------------------------------
    def beat(self, service: str, consumer: str, fields: dict[str, str], ttl_ms: int) -> None:
        """Renew a heartbeat: the hash and its TTL in one MULTI (never a hash without a TTL), and
        its name in the service's index, which forgets names not renewed for HEARTBEAT_INDEX_MS."""
        key, index = keys.heartbeat(service, consumer), keys.heartbeats(service)
        now_ms = int(fields.get("beat_ms") or 0)
        with translated_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, ttl_ms)
            pipe.zadd(index, {consumer: now_ms})
            pipe.zremrangebyscore(index, "-inf", now_ms - HEARTBEAT_INDEX_MS)
            pipe.pexpire(index, HEARTBEAT_INDEX_MS)
            pipe.execute()

    def end_beat(self, service: str, consumer: str) -> None:
        with translated_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(keys.heartbeat(service, consumer))
            pipe.zrem(keys.heartbeats(service), consumer)
            pipe.execute()

    def allocate_ids(self, sequence: str, n: int) -> range:
        """n fresh integers from a counter (INCRBY), e.g. order ids."""
        with translated_errors():
            last = self.client.incrby(sequence, n)
        return range(last - n + 1, last + 1)

    def keep_above(self, sequence: str, taken: int) -> None:
        """The counter is at least `taken` afterwards (below 2^63): allocate_ids hands out only
        ids above it. INCRBY only (what the user drawing ids may run), in Python's exact
        integers: ids drawn between the two steps only push it further."""
        with translated_errors():
            now = self.client.incrby(sequence, 0)
            if taken > now:
                self.client.incrby(sequence, taken - now)

    def read_hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        if not keys:
            return []
        with translated_errors():
            return read_records(self.client, keys)

    # -- writing -------------------------------------------------------------------------------
    def commit(self, group: str, commits: Sequence[Commit]) -> list[Outcome]:
        if not commits:
            return []
        if not self.layout_agreed:
            try:
                self.agree_layout()
            except CredentialsRefused:
                raise
            except PermissionsMissing:      # a user of the operator's own making, without the
                self.check_layout()         # record's SET (rendered ones have it): as far as it may
            self.layout_agreed = True
        if self.cluster:
            groups = by_slot(commits)
            if len(groups) > 1:
                outcomes: list[Outcome | None] = [None] * len(commits)
                for places in groups:
                    try:
                        slot_outcomes = self.commit(group, [commits[p] for p in places])
                    except BusError as exc:     # the slots before it stay committed: say which
                        for place, outcome in zip(places, exc.outcomes or ()):
                            outcomes[place] = outcome
                        exc.outcomes = outcomes
                        raise
                    for place, outcome in zip(places, slot_outcomes):
                        outcomes[place] = outcome
                return outcomes
        keys_, argv = encode_batch(group, commits)
        try:
            with translated_errors():
                statuses = self._run_commit(keys_, argv)
        except PermissionsMissing as exc:
            self._explain_refusal(group, commits, keys_, argv, exc)
        outcomes: list[Outcome | None] = []
        for commit, status in zip(commits, statuses):
            if isinstance(status, str) and status.startswith("NOPERM"):
                refused = PermissionsMissing(status)    # nothing of it written; earlier ones applied
                refused.outcomes = outcomes + [None] * (len(commits) - len(outcomes))
                raise refused
            if isinstance(status, str):
                commit.refusal = status
                outcomes.append(Outcome.REFUSED)
            else:
                outcomes.append(OUTCOMES[int(status)])
        return outcomes

    def _run_commit(self, keys_: list[str], argv: list):
        """The script; with wait_replicas, followed on the same connection by WAIT, which
        returns once that many replicas have what this connection wrote (or after
        wait_timeout_ms: then the commit stands, counted in short_waits, and may be lost if its
        primary dies before a replica has it)."""
        if not self.wait_replicas:
            return self._evalsha(self._commit, keys_, argv)
        node = (self.client.get_redis_connection(self.client.get_node_from_key(keys_[0]))
                if self.cluster and keys_ else self.client)
        pipe = node.pipeline(transaction=False)
        self._commit(keys=keys_, args=argv, client=pipe)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        with self.routed():
            statuses, acknowledged = pipe.execute()
        if int(acknowledged) < self.wait_replicas:
            self.short_waits += 1
        return statuses

    def _evalsha(self, script, keys_: list[str], argv: list):
        """The script run as its Script object would (EVALSHA, loaded again after NOSCRIPT),
        with its number of keys as text: every word a str, the packer joins them all at once
        (bus.connect.joined_words). A cluster client routes by its own Script."""
        if self.cluster:
            return script(keys=keys_, args=argv)
        try:
            return self.client.execute_command("EVALSHA", script.sha, str(len(keys_)), *keys_, *argv)
        except redis.exceptions.NoScriptError:
            script.sha = self.client.script_load(script.script)
            return self.client.execute_command("EVALSHA", script.sha, str(len(keys_)), *keys_, *argv)

    def _explain_refusal(self, group, commits, keys_, argv, refused: PermissionsMissing):
        """Redis refused the EVALSHA itself: one of KEYS is a key the user may not touch, and
        its NOPERM names none. Nothing of the batch ran. The script, given the key names in ARGV
        and no KEYS, asks the ACL what it asks before writing (it touches no key) and names the
        first command refused; the commits before that one are committed, as when the script
        refuses a commit itself, and the refusal raised. Always raises PermissionsMissing."""
        with translated_errors():
            found = self._commit(keys=[], args=[group, len(commits), len(keys_), *keys_, *argv[3:]])
        if not found:
            raise PermissionsMissing(f"{refused}: EVALSHA of the commit script on its keys "
                                     f"({', '.join(keys_[:8])}{', ...' if len(keys_) > 8 else ''})")
        number, reason = int(found[0]), found[1]
        applied = self.commit(group, commits[:number - 1]) if number > 1 else []
        refused = PermissionsMissing(reason)    # nothing of it written; earlier ones applied
        refused.outcomes = applied + [None] * (len(commits) - len(applied))
        raise refused

    def holds(self, requests: Sequence[Hold], retention_s: int) -> list[str]:
        """Each request is one EVALSHA of bus/hold.lua (its stock and hold keys in KEYS: one slot),
        pipelined per node. A step the script refuses (a key of the wrong type, a field that is
        not an integer) has written nothing and raises BusError; the batch's other steps may have
        been made (each is idempotent: the handler's next try makes them again, changing nothing)."""
        requests = [Hold(*r) for r in requests]
        for r in requests:
            if r.op not in HOLD_OPS:
                raise ValueError(f"unknown hold op {r.op!r}")
        if not requests:
            return []
        out: list[str] = [""] * len(requests)
        with translated_errors(), self.routed():
            # One pipeline per node (a cluster's own pipeline refuses EVALSHA), then WAIT on it
            # when commits wait for replicas: a hold is a write the order's commit relies on.
            for node, places in self._per_node([r.stock for r in requests]):
                pipe = node.pipeline(transaction=False)
                for place in places:
                    r = requests[place]
                    self._hold(keys=[r.stock, r.hold], args=[r.op, int(r.qty), int(retention_s)],
                               client=pipe)
                if self.wait_replicas:
                    pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                replies = pipe.execute()
                if self.wait_replicas and int(replies.pop()) < self.wait_replicas:
                    self.short_waits += 1
                for place, status in zip(places, replies):
                    out[place] = _text(status)
        return out

    def _per_node(self, keys_: Sequence[str], client=None) -> list[tuple[redis.Redis, list[int]]]:
        """The places of keys_ grouped by the node that holds each (one group, `client` itself,
        on a plain Redis), with a plain client of that node (`client`'s: self.client or raw)."""
        client = self.client if client is None else client
        if not self.cluster:
            return [(client, list(range(len(keys_))))]
        groups: dict[str, tuple[redis.Redis, list[int]]] = {}
        for place, key in enumerate(keys_):
            node = client.get_node_from_key(key)
            groups.setdefault(node.name, (client.get_redis_connection(node), []))[1].append(place)
        return list(groups.values())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
            self.raw.close()

    def __enter__(self) -> "RedisStreamsBus":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

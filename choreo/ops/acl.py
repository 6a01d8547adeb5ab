"""The choreography's Redis users, derived from the services' declarations (bus.acl renders and
checks them). One user per service, plus:

    timers     runs the rq worker: rq's own keys, and publishing the events timers publish
    trimmer    trims the declared streams (workers do not trim: they would need XTRIM on streams
               other services publish), and prunes orders:index of orders that have expired
    dashboard  reads everything, writes nothing (dashboard, status, trace, audit, dlq list/show)
    admin      everything (setup, dlq replay and purge, acl check)

A service's user may XADD only to the streams of the events it publishes and to its own
dead-letter stream; read, acknowledge and claim only the streams it consumes; touch only the key
patterns it owns and its own dedup markers. What it must be refused is the same data read the
other way: every other stream, every other service's keys, and the dangerous commands.

With partitions (bus.layout) a stream, dead-letter stream, dedup set and trace exist once per
partition: a grant names them all with one pattern, `events:{p*}:OrderCreated` (bus.keys's
any_partition). Without, the rules read exactly as they always have.
"""

from __future__ import annotations

import os
from typing import Sequence

from choreo.bus import keys as bus_keys, layout
from choreo.bus.acl import Grant, Role, Verdict, sample
from choreo.scheduling.timers import armed_keys
from choreo.workers import keys
from choreo.workers.deadlines import EVENT as DEADLINE_EVENT, TIMERS
from choreo.workers.service import Service
from choreo.workers.unit_of_work import timer_id

# What every client of ours runs without keys: the connection, scripts (Redis checks each command
# a script runs against the caller), pipelines, and its own permission check at start. A script
# gets every key it touches in KEYS, which EVALSHA must pass together, read and write, in one
# selector: `scripted` grants EVALSHA alone on the keys a role's scripts touch; what each command
# of the script may do to them is still the role's other selectors' say.
# (SCRIPT EXISTS: a pipeline of script calls, e.g. stock holds, asks first whether they are loaded.)
CLIENT = ("+ping", "+hello", "+select", "+evalsha", "+script|load", "+script|exists", "+multi",
          "+exec", "+discard", "+acl|whoami", "+acl|dryrun", "+time")
# A service's user commits: WAIT after each commit with CHOREO_WAIT_REPLICAS (it blocks only the
# caller). The timers' user has it in +@all; the trimmer never commits.
COMMITS = ("+wait",)
# What redis-py's cluster client asks every node it connects to, on a cluster only: the slot map
# and the command table (COMMAND, COMMAND GETKEYS: where XREADGROUP's keys are).
CLUSTER_CLIENT = ("+cluster|slots", "+cluster|shards", "+command")


def client_rules() -> tuple[str, ...]:
    return CLIENT + (CLUSTER_CLIENT if layout.current().cluster else ())
# XREAD and XREVRANGE read what the group reads anyway: `choreo load`, as the order user, learns
# outcomes by watching the streams that end orders without a group (choreo.measure.load).
CONSUME = ("xreadgroup", "xread", "xrevrange", "xack", "xautoclaim", "xclaim", "xpending",
           "xgroup|create", "xgroup|delconsumer", "xinfo|consumers", "xinfo|groups", "exists", "type")
PUBLISH = ("xadd", "xinfo|stream", "type")   # XINFO STREAM: commit.lua asks a stream can take one more
SEEN = ("zadd", "zremrangebyscore", "zscore", "type")     # a service's own dedup set (commit.lua)
DOMAIN = ("hget", "hgetall", "hmget", "hset", "hdel", "hincrby", "rpush", "zadd", "incrby",
          "expire", "exists", "type")
# A trace: a hash of "<stream> <id>" fields (a list before); each commit tracing there keeps it
# the retention from then (workers.unit_of_work._trace_expiries), and the order's owner ends it.
TRACE = ("hset", "rpush", "expire", "type")
# Arming a timer, one selector per key so no command reaches a key it has no business with (a
# DEL of the whole scheduled registry would disarm every order's deadline).
ARM = (("hset", "del"), ("zadd", "zrem"), ("sadd",))
# The trimmer also prunes orders:index of expired orders (bus.trim.prune_index): it may look
# whether an order's key still exists, never read or write one.
PRUNE = ("zrangebyscore", "zrem")
TRIM = ("xtrim", "xinfo|groups", "xinfo|stream", "xpending", "xrange", "xrevrange", "exists", "type")
DANGEROUS = (sample("flushall"), sample("config|set"), sample("keys"), sample("script|flush"),
             sample("function|flush"), sample("move", "*"))
# The deployment's partition count, recorded by the first writer, checked by every other
# (RedisStreamsBus.agree_layout).
LAYOUT = Grant(("set", "get"), (bus_keys.PARTITIONS,))
# A reader's half (RedisStreamsBus.check_layout): the trimmer trims what its count names.
LAYOUT_READ = Grant(("get",), (bus_keys.PARTITIONS,), read_only=True)
# Liveness (bus.heartbeat): a process renews its own heartbeat hash and its name in the index.
HEARTBEAT = ("hset", "pexpire", "del")
HEARTBEAT_INDEX = ("zadd", "zremrangebyscore", "zrem", "pexpire")
# The order saga's timer events (App.timer_events of choreo.workers:APP), when none are given.
SAGA_TIMER_EVENTS = (DEADLINE_EVENT,)


def pattern(key: str) -> str:
    """A key of one partition as the pattern of all of them (itself when keys are untagged)."""
    return bus_keys.any_partition(key)


def partition_patterns(keys_) -> tuple[str, ...]:
    return tuple(dict.fromkeys(map(pattern, keys_)))


def traces() -> str:
    return pattern(bus_keys.trace("*"))


def owns_orders(service: Service) -> bool:
    """Whether the service owns the saga's order hashes (its OWNED patterns are untagged globs,
    which match every partition's keys)."""
    return keys.OWNED["order"][0] in service.owns


def scripted(patterns) -> Grant:
    return Grant(("evalsha",), tuple(dict.fromkeys(patterns)))


def heartbeat_grants(service: str) -> list[Grant]:
    """Only the heartbeats of `service`: a worker cannot pose as another service's live one."""
    return [Grant(HEARTBEAT, (bus_keys.heartbeat(service, "*"),)),
            Grant(HEARTBEAT_INDEX, (bus_keys.heartbeats(service),))]


def heartbeat_refusals(service: str) -> list[tuple[str, ...]]:
    return [sample("hset", bus_keys.heartbeat(service, "*")), sample("zadd", bus_keys.heartbeats(service))]


def publishes(service: Service, timer_events=SAGA_TIMER_EVENTS) -> tuple[str, ...]:
    """Event types the service's own user XADDs: what its handlers emit and what it creates on a
    command; events a timer publishes (the app's timer_events) go out under the timers user."""
    return tuple(t for t in (*service.emits, *service.creates) if t not in timer_events)


def armed_timers(service: Service, timer_events=SAGA_TIMER_EVENTS) -> tuple[str, ...]:
    """The timer events this service arms (publish_later): rq job ids `<EventType>-*`."""
    return tuple(t for t in service.creates if t in timer_events)


def arms_timers(service: Service, timer_events=SAGA_TIMER_EVENTS) -> bool:
    return bool(armed_timers(service, timer_events))


def all_streams(services: Sequence[Service]) -> list[str]:
    types = {t for s in services for t in (*s.consumes, *s.emits, *s.creates)}
    return [pattern(bus_keys.stream(t)) for t in sorted(types)]


def service_role(service: Service, services: Sequence[Service] = (),
                 timer_events=SAGA_TIMER_EVENTS) -> Role:
    """The user of one service; `services` (the whole choreography) adds what it must be refused;
    `timer_events` are the app's (App.timer_events)."""
    own = [pattern(bus_keys.stream(t)) for t in publishes(service, timer_events)]
    grants = [Grant(PUBLISH, (*own, pattern(bus_keys.dead_letters(service.name)))),
              Grant(CONSUME, partition_patterns(service.streams)),
              Grant(SEEN, (pattern(bus_keys.seen(service.name)),)), *heartbeat_grants(service.name),
              LAYOUT]
    if own or owns_orders(service):
        grants.append(Grant(TRACE, (traces(),)))
    if service.owns:
        grants.append(Grant(DOMAIN, service.owns))
    if service.deletes:             # forgotten holds (bus/hold.lua), deleted by their script
        grants.append(Grant(("del",), service.deletes))
    # The commit, lease and forget-consumer scripts: every key above but heartbeats and rq's.
    grants.append(scripted(k for g in grants for k in g.keys
                           if g.commands not in (HEARTBEAT, HEARTBEAT_INDEX) and g is not LAYOUT))
    for event in armed_timers(service, timer_events):
        grants += [Grant(commands, (key,)) for commands, key in zip(ARM, armed_keys(timer_id(event, "*")))]
    if owns_orders(service):
        # place-order --order-id: an id is free once the other services' records of an earlier
        # order with it are gone too (choreo.orders.place_orders reads them, a settled one in
        # its bucket).
        earlier = tuple(pattern(k("*")) for k in (keys.reservation, keys.payment, keys.shipment))
        grants.append(Grant(("hgetall", "hget"), earlier, read_only=True, checked=False))
    return Role(service.name, f"the {service.name} service", tuple(grants), (*client_rules(), *COMMITS),
                refuses=tuple(refusals(service, services, timer_events)))


def refusals(service: Service, services: Sequence[Service],
             timer_events=SAGA_TIMER_EVENTS) -> list[tuple[str, ...]]:
    streams = all_streams(services)
    mine = {pattern(bus_keys.stream(t)) for t in publishes(service, timer_events)}
    consumed = partition_patterns(service.streams)
    out = [sample("xadd", s) for s in streams if s not in mine]
    out += [sample("xreadgroup", s, service.name) for s in streams if s not in consumed]
    for other in services:
        if other.name != service.name:
            out.append(sample("xadd", pattern(bus_keys.dead_letters(other.name))))
            out.append(sample("zadd", pattern(bus_keys.seen(other.name))))
            out += [sample(c, pattern) for pattern in other.owns for c in ("hset", "expire")]
            out += heartbeat_refusals(other.name)
    out += heartbeat_refusals(TIMERS)
    for stream in consumed[:1]:
        out += [sample(c, stream, service.name) for c in ("xgroup|destroy", "xgroup|setid", "xtrim")]
    if arms_timers(service, timer_events):
        _, registry, queues = armed_keys(timer_id(armed_timers(service, timer_events)[0], "*"))
        out += [sample("del", registry), sample("del", queues), sample("hset", registry)]
    return out + list(DANGEROUS)


def roles(services: Sequence[Service], timer_events=SAGA_TIMER_EVENTS) -> list[Role]:
    """Every user of the choreography; `timer_events` are the app's (App.timer_events)."""
    owners = [p for s in services for p in s.owns]
    streams = all_streams(services)
    writes = [sample("xadd", streams[0]), sample("hset", owners[0]), sample("del", owners[0]),
              sample("xack", streams[0], "g")]
    # The saga's deadline job reads the order before publishing; generic timers read nothing.
    order_keys = next((s.owns for s in services if DEADLINE_EVENT in s.creates
                       and DEADLINE_EVENT in timer_events), ())
    fired = tuple(pattern(bus_keys.stream(t)) for t in timer_events)
    # The trimmer prunes the saga's orders:index; for another app it only trims streams.
    saga = any(owns_orders(s) for s in services)
    index, expired, order = (pattern(keys.orders_index()), pattern(keys.orders_expired()),
                             pattern(keys.order("*")))
    # `choreo timers --rearm` lists the orders and reads their status and deadline; unchecked
    # (it says so itself if refused): timers users rendered before it still start.
    reads_orders = (Grant(("hget", "hgetall", "type"), order_keys, read_only=True),
                    Grant(("hmget",), order_keys, read_only=True, checked=False),
                    Grant(("zrange",), (index,), read_only=True, checked=False)) if order_keys else ()
    seen_timers = pattern(bus_keys.seen(TIMERS))
    prune = ((Grant(PRUNE, (index,)), Grant(("incrby",), (expired,)),
              Grant(("exists",), (order,), read_only=True)) if saga else ())
    return [
        *(service_role(s, services, timer_events) for s in services),
        Role("timers", "runs the rq worker that fires timers (publishes the app's timer events)",
             # A timer's event is traced in trace:<id>, which its commit expires (workers.timers).
             (*((Grant(PUBLISH, fired), Grant(TRACE, (traces(),))) if fired else ()),
              Grant(SEEN, (seen_timers,)), *heartbeat_grants(TIMERS), *reads_orders, LAYOUT,
              scripted([*fired, *((traces(),) if fired else ()), seen_timers, *order_keys])),
             # rq's own keys, with what rq uses; not the server-wide scripting (SCRIPT FLUSH,
             # FUNCTION …) every worker's commit script depends on, nor MOVE/RENAME out of rq:*.
             # Nor the keyless reads that list other keys' names (SCAN, RANDOMKEY) or sizes.
             root=("+@all", "-@dangerous", "-@scripting", "+script|exists", "-move", "-rename",
                   "-renamenx", "-scan", "-randomkey", "-dbsize", "-memory", "+info",
                   *client_rules(), "~rq:*", "&rq:*"),
             needs=(sample("hset", "rq:job:*"), sample("zadd", "rq:scheduled:*")),
             refuses=(*(sample("xadd", s) for s in streams if s not in fired),
                      *(sample("hset", p) for p in owners),
                      *(r for s in services for r in heartbeat_refusals(s.name)),
                      sample("scan", "*"), sample("randomkey"), sample("dbsize"), *DANGEROUS)),
        Role("trimmer", "trims the declared streams as far as every group allows"
             + ("; prunes expired orders from the index" if saga else ""),
             (Grant(TRIM, tuple(streams)), *prune, LAYOUT_READ,
              *((scripted((index, expired, order)),) if saga else ())),
             client_rules(),
             refuses=(writes[0], writes[1], writes[2], sample("xreadgroup", streams[0], "g"),
                      sample("zrem", pattern(keys.orders_by_status())), sample("expire", owners[0]),
                      *DANGEROUS)),
        Role("dashboard", "reads everything, writes nothing",
             # CLUSTER NODES: the dashboard's nodes panel on a cluster (a read, but not in @read)
             root=("+@read", "-@dangerous", "+info", "+time", "+ping", "+hello", "+select",
                   "+acl|whoami", "+cluster|nodes",
                   *(CLUSTER_CLIENT if layout.current().cluster else ()), "%R~*"),
             needs=(sample("xrange", streams[0]), sample("hgetall", owners[0]), sample("info"),
                    sample("scan", "events:*"), sample("xinfo|groups", streams[0]),
                    sample("zrange", bus_keys.heartbeats(services[0].name)),
                    sample("hgetall", bus_keys.heartbeat(services[0].name, "*")),
                    sample("pttl", bus_keys.heartbeat(services[0].name, "*"))),
             refuses=(*writes, sample("xtrim", streams[0]), *heartbeat_refusals(services[0].name),
                      *DANGEROUS)),
        Role("admin", "setup, dlq replay and purge, acl check: everything",
             root=("+@all", "~*", "&*"),
             needs=(sample("xadd", streams[0]), sample("xtrim", streams[0]),
                    sample("xgroup|destroy", streams[0], "g"))),
    ]


def passwords(names: Sequence[str], env=None, file: str | None = None) -> dict[str, str]:
    """Each user's password: CHOREO_ACL_PASSWORD_<USER> in the environment, else a line
    `<user> <password>` of `file`. A missing one is an error naming where to put it."""
    env = os.environ if env is None else env
    found: dict[str, str] = {}
    if file:
        with open(file) as f:
            for line in f:
                user, _, password = line.strip().partition(" ")
                if user and not user.startswith("#") and password.strip():
                    found[user] = password.strip()
    for name in names:
        found[name] = env.get(f"CHOREO_ACL_PASSWORD_{name.upper()}") or found.get(name, "")
    missing = [n for n in names if not found[n]]
    if missing:
        raise ValueError(f"no password for {', '.join(missing)}: set CHOREO_ACL_PASSWORD_<USER> "
                         f"or give --password-file with lines '<user> <password>'")
    return found


def verdict_table(verdicts: Sequence[Verdict]):
    """`choreo acl check`'s table: one row per sample command, the server's reason when refused."""
    from rich.table import Table
    from rich.text import Text
    table = Table("user", "command", "expected", "server", "", box=None, pad_edge=False)
    for v in verdicts:
        table.add_row(Text(v.user), Text(" ".join(v.command)),
                      "allowed" if v.expected else "refused",
                      "allowed" if v.allowed else "refused",
                      Text("ok", style="green") if v.ok else Text("MISMATCH", style="bold red"))
    return table

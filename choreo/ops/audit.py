"""`choreo audit`: check the design's invariants (docs/design.md) against what is in Redis.

Gather (a few pipelined round trips, fast for 10k orders), then pure checks over the snapshot,
each returning the violations it found as one line each.

Two kinds of check. Those that hold after every single commit, because the state they compare is
written in one atomic commit (stock = available + reserved + sold; reserved = the RESERVED
reservations; payments:totals = the payment hashes; a booked shipment is never refunded), are
always violations. Those that only hold once the saga has settled (every cancelled order
refunded and released, charged - refunded = the completed orders' totals) are checked only when
nothing is in flight: no PENDING order, no unread or pending entry. With --strict (for a run
that has drained) everything is checked and anything still in flight is itself a violation.

Ended orders expire (docs/keys.md, "Retention"): once an order is older than the retention window its
keys, and its services' keys, may be gone. Such an absence is not a violation; what the checks
compare then comes from aggregates that never expire: stock hashes, payments:totals,
orders:totals (completed_cents) and orders:expired (ids pruned from the index). While no order is
old enough to have expired, every check is as exact as it always was.

With partitions (bus.layout) each aggregate exists once per partition: the checks compare their
sums, each partition's index is read with its own orders:expired, and an order found in another
partition's index than its own is a violation. Streams and groups are every partition's.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from choreo.bus import dead_letters, inspect, keys as bus_keys, layout
from choreo.bus.redis_streams import RedisStreamsBus
from choreo.bus.trim import after, declared_groups, parse_id
from choreo.workers import keys
from choreo.workers.order import PENDING, TERMINAL

CHUNK = 2000
# The hashes keyed by one id, by kind; their key patterns come from workers.keys.
DOMAIN_KINDS = {"order": keys.order, "reservation": keys.reservation, "payment": keys.payment,
                "shipment": keys.shipment, "stock": keys.stock}
# Each kind's prefix, up to its first ":" (what follows may be a partition's tag, bus.layout).
PREFIX_KIND = {key_of("").partition(":")[0] + ":": kind for kind, key_of in DOMAIN_KINDS.items()}
DOMAIN_KEY = re.compile("^(" + "|".join(map(re.escape, PREFIX_KIND)) + r")(\{p\d+\}:)?([^:]+)$")
# hold:{stock:<product>}:<order id>, from workers.keys.hold.
HOLD_KEY = re.compile("^" + re.escape(keys.hold("PRODUCT", "ORDER"))
                      .replace("PRODUCT", r"([^}:]+)").replace("ORDER", r"([^:]+)") + "$")


@dataclass(frozen=True)
class GroupState:
    stream: str
    group: str
    exists: bool
    unread: int
    pending: int
    lost: tuple[str, ...] = ()       # entries deleted before this group acknowledged them


@dataclass
class Snapshot:
    index: list[str]
    created_ms: dict[str, float] = field(default_factory=dict)     # index scores
    horizon_ms: float = 0.0          # orders created before this may have expired
    pruned: int = 0                  # orders:expired: expired ids already gone from the index
    orders_totals: dict[str, str] = field(default_factory=dict)
    expiring: set[str] = field(default_factory=set)   # orphan service keys that carry a TTL
    orders: dict[str, dict] = field(default_factory=dict)
    reservations: dict[str, dict] = field(default_factory=dict)
    payments: dict[str, dict] = field(default_factory=dict)
    shipments: dict[str, dict] = field(default_factory=dict)
    stocks: dict[str, dict] = field(default_factory=dict)
    by_status: dict[str, str] = field(default_factory=dict)
    totals: dict[str, str] = field(default_factory=dict)
    groups: list[GroupState] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    # (product, order id) -> hold hash, in the tagged layout (docs/partitions.md)
    holds: dict[tuple[str, str], dict] = field(default_factory=dict)
    tagged: bool = False             # stock moves by holds (bus.layout), not by order commits
    quiet: bool = True               # no entry was published while the snapshot was read
    # Orders in another partition's orders:index than their own: (order id, that index).
    misindexed: list[tuple[str, str]] = field(default_factory=list)
    # What the gathering found that the saga never writes (a counter that is not a count).
    malformed: list[str] = field(default_factory=list)

    def aged(self, oid: str) -> bool:
        """Whether this order is old enough for its keys, or its services' keys, to be gone."""
        return self.created_ms.get(oid, self.horizon_ms + 1) <= self.horizon_ms

    @property
    def expired(self) -> int:
        """Orders known to have expired: pruned from the index, or indexed with no hash left."""
        return self.pruned + sum(1 for oid in self.index
                                 if oid not in self.orders and self.aged(oid))

    @property
    def may_have_expired(self) -> bool:
        return self.pruned > 0 or any(self.aged(oid) for oid in self.index)

    @property
    def in_flight(self) -> tuple[int, int, int]:
        """(PENDING orders, unread entries, pending entries)."""
        return (sum(1 for o in self.orders.values() if o.get("status") == PENDING),
                sum(g.unread for g in self.groups), sum(g.pending for g in self.groups))


# -- gathering -----------------------------------------------------------------------------------

def domain_keys(bus: RedisStreamsBus) -> dict[str, set]:
    """kind -> ids of every order/reservation/payment/shipment/stock hash, and "hold" ->
    (product, order id) of every hold, one SCAN pass."""
    found: dict[str, set] = {kind: set() for kind in (*DOMAIN_KINDS, "hold")}
    for key in inspect.all_keys(bus):
        m = DOMAIN_KEY.match(key)
        if m:
            found[PREFIX_KIND[m[1]]].add(m[3])
        elif (h := HOLD_KEY.match(key)):
            found["hold"].add((h[1], h[2]))
    return found


def hashes(bus: RedisStreamsBus, names: list[str]) -> list[dict]:
    return inspect.hashes(bus, names, CHUNK)


def gather(bus: RedisStreamsBus, services: Iterable, retention_s: float = 86400,
           clock=time.time, orders: bool = True) -> Snapshot:
    """Streams first, domain state, then the streams' entries-added again: if nothing was
    drained-and-then-published in between, the domain reads saw no commit at all (a drained
    bus runs no handler), so the cross-key checks are comparing one consistent moment."""
    declared = sorted(declared_groups(services).items())
    before = streams_added(bus, [s for s, _ in declared])
    snap = Snapshot(index=[])
    for stream, groups in declared:
        snap.groups += stream_groups(bus, stream, groups)
    if orders:                      # the saga's domain state; another app has streams and groups
        gather_domain(bus, snap)
        # Taken once the hashes are read, not before: a key found missing at any moment of the
        # reads belongs to an order created before (that moment - retention), and the reads can
        # take longer than a short retention (a soak's 1 s), so an earlier horizon called fresh
        # expiries missing.
        snap.horizon_ms = (clock() - retention_s) * 1000
        snap.by_status, snap.totals, snap.orders_totals = (
            summed(inspect.hashes(bus, keys.every(aggregate)))
            for aggregate in (keys.orders_by_status, keys.payment_totals, keys.orders_totals))
    snap.dead_letters = {name: dead_letters.count(bus, name)
                         for name in sorted({g for _, gs in declared for g in gs})}
    snap.quiet = streams_added(bus, [s for s, _ in declared]) == before
    return snap


def summed(partitions: list[dict]) -> dict[str, str]:
    """An aggregate hash added up over its partitions (a count that is not a number is kept as
    read, from the first partition holding it, for the checks to report)."""
    if len(partitions) == 1:
        return partitions[0]
    out: dict[str, str] = {}
    for h in partitions:
        for name, value in h.items():
            try:
                out[name] = str(int(out.get(name, 0)) + int(value))
            except ValueError:
                out.setdefault(name, value)
    return out


def summed_name(aggregate) -> str:
    """How a check names an aggregate: its key, or with partitions `orders:{p*}:by_status`."""
    return bus_keys.any_partition(aggregate(0))


def streams_added(bus: RedisStreamsBus, streams: list[str]) -> list[int]:
    """entries-added of each stream (0 if absent): it only grows, whatever is trimmed."""
    return inspect.entries_added(bus, streams)


def gather_domain(bus: RedisStreamsBus, snap: Snapshot) -> None:
    """Every order-keyed hash (indexed or not, so strays show up) and every stock hash. The index
    is read after the SCAN, so an order placed meanwhile is in the index, not a stray."""
    found = domain_keys(bus)
    for p in layout.current().all():
        created_ms, pruned = index_and_pruned(bus, partition=p)
        try:
            pruned = whole(pruned, keys.orders_expired(p))
        except NotWhole as exc:
            snap.malformed.append(str(exc))
            pruned = 0
        snap.misindexed += [(oid, keys.orders_index(p)) for oid in created_ms
                            if layout.current().partition_of(oid) != p]
        snap.created_ms.update(created_ms)
        snap.pruned += pruned
    snap.index = list(snap.created_ms)
    ids = sorted(set(snap.index) | found["order"] | found["reservation"] | found["payment"]
                 | found["shipment"])
    for key_of, into in ((keys.order, snap.orders), (keys.reservation, snap.reservations),
                         (keys.payment, snap.payments), (keys.shipment, snap.shipments)):
        into.update((i, h) for i, h in zip(ids, hashes(bus, [key_of(i) for i in ids])) if h)
    snap.expiring = expiring_orphans(bus, snap)
    pids = sorted(found["stock"])
    snap.stocks = dict(zip(pids, hashes(bus, [keys.stock(p) for p in pids])))
    pairs = sorted(found["hold"])
    snap.holds = {pair: h for pair, h in zip(pairs, hashes(bus, [keys.hold(*p) for p in pairs])) if h}
    snap.tagged = layout.current().tagged


def index_and_pruned(bus: RedisStreamsBus, tries: int = 20,
                     partition: int = 0) -> tuple[dict[str, float], str]:
    """orders:index and orders:expired as of one moment. The trimmer moves an id from the one to
    the other in one script, so read apart, an id pruned in between was counted twice as expired
    (a soak with a 1 s trimmer: 400 too many). The counter is read either side of the index, again
    until it did not move (no MULTI: the dashboard user, which audits, may only read). One
    partition's pair: the prune script moves ids within one."""
    return inspect.index_and_counter(bus, keys.orders_index(partition), keys.orders_expired(partition),
                                     tries)


def expiring_orphans(bus: RedisStreamsBus, snap: Snapshot) -> set[str]:
    """Keys of reservations, payments and shipments without their order that carry a TTL (or
    expired since they were read): the leftovers of an expired order, which expire in their own
    time (only a few at any moment)."""
    orphans = [key_of(oid) for found, key_of in ((snap.reservations, keys.reservation),
                                                 (snap.payments, keys.payment),
                                                 (snap.shipments, keys.shipment))
               for oid in found if oid not in snap.orders]
    # One filed (bus.keys.filed) has no key of its own (PTTL -2): its bucket's TTL is its own.
    # Gone by now (-2 where it was read a moment ago) is expired meanwhile, not a leak: only a
    # record without an expiry (-1) is.
    homes = {key: home[0] for key in orphans if (home := bus_keys.filed(key))}
    asked = list(dict.fromkeys([*orphans, *homes.values()]))
    ttls = dict(zip(asked, inspect.ttls_ms(bus, asked)))
    return {key for key in orphans
            if (ttls[homes[key]] if key in homes and ttls[key] == -2 else ttls[key]) != -1}


def stream_groups(bus: RedisStreamsBus, stream: str, declared: list[str]) -> list[GroupState]:
    found = inspect.stream_and_groups(bus, stream)
    if found is None:
        return []           # nothing was ever published on it
    info, existing = found
    return [group_state(bus, stream, info, existing.get(name), name) for name in declared]


def group_state(bus: RedisStreamsBus, stream: str, info: dict, g: dict | None,
                name: str) -> GroupState:
    """A missing group is treated as one at 0-0 that has read nothing: created now, it would
    want every entry ever added."""
    last = g["last-delivered-id"] if g else "0-0"
    lag = g.get("lag") if g else info.get("entries-added")
    unread = inspect.count_after(bus, stream, last) if last != "0-0" else info["length"]
    gone_pending = trimmed_pending(bus, stream, name, info, g["pending"]) if g else 0
    return GroupState(stream, name, g is not None, unread, g["pending"] if g else 0,
                      lost_entries(info, last, lag, unread, gone_pending))


def lost_entries(info: dict, last: str, lag: int | None, unread: int, gone_pending: int) -> tuple:
    """Ways an entry this group needed can have vanished. lag counts entries added after what
    the group read (Redis's own counters, blind to deletion), so more lag than entries still
    there means some were trimmed unread; XDEL instead raises max-deleted-entry-id (Redis 7.0
    leaves it alone on XTRIM, hence both). Trimming takes entries from the head of the stream,
    so it can have taken one after last-delivered-id only if the first entry left is past it (or
    none is left, and one was added past it): without that, more lag than unread entries is a
    stale entries-read, not a loss (a Redis 7.0 replica does not advance it: after a failover
    or a resync the lag read high on streams every group had read to the end)."""
    lost = []
    first = info.get("first-entry")
    head = parse_id(first[0]) if first else parse_id(info.get("last-generated-id", "0-0"))
    trimmed_past = head > after(last) if first else head > parse_id(last)
    if lag is not None and lag > unread and trimmed_past:
        lost.append(f"{lag - unread} entries after its last-delivered-id {last} were deleted "
                    f"before it read them")
    elif parse_id(info.get("max-deleted-entry-id", "0-0")) >= after(last):
        lost.append(f"entries after its last-delivered-id {last} were deleted before it read "
                    f"them (max-deleted-entry-id {info['max-deleted-entry-id']})")
    if gone_pending:
        lost.append(f"{gone_pending} pending entries were deleted before they were acknowledged")
    newest = info.get("last-generated-id", "0-0")
    if parse_id(last) > parse_id(newest):
        # (XGROUP SETID by hand): every entry added from now on is below it, delivered to no one
        lost.append(f"its last-delivered-id {last} is past the stream's last entry {newest}: "
                    f"no entry added before the clock passes it will be delivered to it")
    return tuple(lost)


def trimmed_pending(bus: RedisStreamsBus, stream: str, group: str, info: dict, pending: int) -> int:
    """Pending entries whose ids are below the stream's first entry (trimmed away)."""
    if not pending:
        return 0
    first = info.get("first-entry")
    upper = "(" + first[0] if first else "+"
    return inspect.pending_count(bus, stream, group, upper, pending)


# -- checks (pure) -------------------------------------------------------------------------------

class NotWhole(ValueError):
    """A count the saga writes holds something else (a hand-written key): a violation, named."""


# A whole number as Redis reads one (HINCRBY's string2ll): ASCII digits, no sign but '-', no
# leading zero nor -0, no '_' nor space (Python's int() takes `1_000`, ` 7` and other scripts'
# digits), within 64 bits.
WHOLE = re.compile(r"0|-?[1-9][0-9]{0,18}")


def whole(value, where: str) -> int:
    if isinstance(value, int) or (isinstance(value, str) and WHOLE.fullmatch(value)
                                  and -2 ** 63 <= int(value) < 2 ** 63):
        return int(value)
    raise NotWhole(f"{where} is not a whole number: {str(value)[:40]!r}")


def check_orders(snap: Snapshot, strict: bool) -> list[str]:
    out = []
    indexed = set(snap.index)
    for oid in sorted(indexed - set(snap.orders)):
        if not snap.aged(oid):
            out.append(f"order {oid}: in {keys.of_order(keys.orders_index, oid)} but {keys.order(oid)} "
                       f"is missing")
    for oid, order in sorted(snap.orders.items()):
        status = order.get("status")
        if oid not in indexed:
            out.append(f"order {oid}: {keys.order(oid)} exists but is not in "
                       f"{keys.of_order(keys.orders_index, oid)}")
        if status not in TERMINAL and status != PENDING:
            out.append(f"order {oid}: status {status!r} is neither terminal nor PENDING")
        elif strict and status == PENDING:
            out.append(f"order {oid}: still PENDING after the run drained")
    for oid, index in snap.misindexed:
        out.append(f"order {oid}: in {index} but it belongs in {keys.of_order(keys.orders_index, oid)}")
    for found, key_of in ((snap.reservations, keys.reservation), (snap.payments, keys.payment),
                          (snap.shipments, keys.shipment)):
        for oid in sorted(set(found) - set(snap.orders)):
            if key_of(oid) not in snap.expiring:
                out.append(f"order {oid}: {key_of(oid)} exists but {keys.order(oid)} does not")
    return out


def check_counters(snap: Snapshot) -> list[str]:
    """Each status's counter = its order hashes. Once orders have expired, a terminal counter
    may exceed its hashes, by exactly the number expired in all."""
    counted = Counter(o.get("status") for o in snap.orders.values())
    out = []
    lenient = snap.may_have_expired
    for status in sorted(set(counted) | set(snap.by_status), key=str):
        stored = whole(snap.by_status.get(status, 0), f"{summed_name(keys.orders_by_status)} {status}")
        if stored > counted.get(status, 0) and lenient and status in TERMINAL:
            continue
        if stored != counted.get(status, 0):
            out.append(f"{summed_name(keys.orders_by_status)}: {status}={stored} but {counted.get(status, 0)} "
                       f"order hashes are {status}")
    gone = sum(whole(snap.by_status.get(s, 0), f"{summed_name(keys.orders_by_status)} {s}")
               - counted.get(s, 0) for s in TERMINAL)
    if lenient and gone != snap.expired:
        out.append(f"{summed_name(keys.orders_by_status)}: {gone} more ended orders counted than order "
                   f"hashes, but {snap.expired} orders have expired")
    return out


def reserved_by_product(snap: Snapshot) -> Counter:
    reserved: Counter = Counter()
    for res in snap.reservations.values():
        if res.get("status") == "RESERVED":
            for line in json.loads(res.get("lines", "[]")):
                reserved[str(line["product_id"])] += int(line["quantity"])
    return reserved


def stock_counts(stock: dict) -> dict[str, int] | None:
    try:
        return {f: int(stock.get(f, 0)) for f in ("start", "available", "reserved", "sold")}
    except ValueError:
        return None


def check_stock(snap: Snapshot) -> list[str]:
    """Each stock hash on its own: every commit moves units between its fields atomically."""
    out = []
    for pid, stock in sorted(snap.stocks.items()):
        name, n = keys.stock(pid), stock_counts(stock)
        if n is None:
            out.append(f"{name}: a count is not a whole number: {stock}")
            continue
        out += [f"{name}: {f} is negative ({v})" for f, v in n.items() if v < 0]
        if n["start"] != n["available"] + n["reserved"] + n["sold"]:
            out.append(f"{name}: start {n['start']} != available {n['available']} + reserved "
                       f"{n['reserved']} + sold {n['sold']}")
    return out


def check_reserved(snap: Snapshot) -> list[str]:
    """stock reserved = the RESERVED reservations (same commits, but read at different moments)."""
    reserved = reserved_by_product(snap)
    out = []
    for pid, stock in sorted(snap.stocks.items()):
        n = stock_counts(stock)
        if n is not None and n["reserved"] != reserved.get(pid, 0):
            out.append(f"{keys.stock(pid)}: reserved {n['reserved']} but RESERVED reservations "
                       f"hold {reserved.get(pid, 0)}")
    return out


def check_holds(snap: Snapshot) -> list[str]:
    """Tagged layout (docs/partitions.md): per product, the RESERVED holds add up to the stock's
    reserved (each hold step moves both at once, but they are read at different moments), and
    every RESERVED hold is a RESERVED reservation's line and the other way round: a hold left
    RESERVED by an order that did not reserve is stock leaked."""
    held: Counter = Counter()
    out = []
    for (pid, oid), hold in sorted(snap.holds.items()):
        if hold.get("status") == "RESERVED":
            held[pid] += whole(hold.get("qty", 0), f"{keys.hold(pid, oid)} qty")
    for pid, stock in sorted(snap.stocks.items()):
        n = stock_counts(stock)
        if n is not None and n["reserved"] != held.get(pid, 0):
            out.append(f"{keys.stock(pid)}: reserved {n['reserved']} but its RESERVED holds "
                       f"hold {held.get(pid, 0)}")
    wanted: dict[tuple[str, str], int] = {}
    for oid, res in snap.reservations.items():
        if res.get("status") == "RESERVED":
            for line in json.loads(res.get("lines", "[]")):
                pair = (str(line["product_id"]), oid)
                wanted[pair] = wanted.get(pair, 0) + int(line["quantity"])
    reserved = {pair: whole(h.get("qty", 0), f"{keys.hold(*pair)} qty") for pair, h in snap.holds.items()
                if h.get("status") == "RESERVED"}
    for pair in sorted(set(wanted) | set(reserved)):
        name = keys.hold(*pair)
        if pair not in wanted:
            out.append(f"{name}: RESERVED ({reserved[pair]}) but {keys.reservation(pair[1])} "
                       f"is {snap.reservations.get(pair[1], {}).get('status', 'absent')}: leaked")
        elif reserved.get(pair) != wanted[pair]:
            out.append(f"{keys.reservation(pair[1])}: RESERVED {wanted[pair]} of product "
                       f"{pair[0]} but its hold is "
                       f"{snap.holds.get(pair, {}).get('status', 'absent')} {reserved.get(pair, '')}".rstrip())
    return out


def check_totals(snap: Snapshot) -> list[str]:
    """payments:totals against the payment hashes (same commits, read at different moments)."""
    charged = sum(whole(p.get("amount_cents", 0), f"{keys.payment(oid)} amount_cents")
                  for oid, p in snap.payments.items()
                  if p.get("status") in ("CHARGED", "REFUNDED"))
    refunded = sum(whole(p.get("amount_cents", 0), f"{keys.payment(oid)} amount_cents")
                   for oid, p in snap.payments.items()
                   if p.get("status") == "REFUNDED")
    out = []
    for name, stored, summed in (("charged_cents", snap.totals.get("charged_cents", 0), charged),
                                 ("refunded_cents", snap.totals.get("refunded_cents", 0), refunded)):
        # Expired payment hashes leave the totals ahead of what is left, never behind.
        stored = whole(stored, f"{summed_name(keys.payment_totals)} {name}")
        if stored != summed and not (snap.may_have_expired and stored > summed):
            out.append(f"{summed_name(keys.payment_totals)}: {name}={stored} but payment hashes add up to {summed}")
    return out


def check_payments(snap: Snapshot) -> list[str]:
    """Per order, what can never be true, whatever is in flight: a completed order without its
    charge or shipment, an order both shipped and refunded, a shipped order that did not complete.
    (Orders are read before payments and shipments, and those states are final.)"""
    out = []
    for oid, order in sorted(snap.orders.items()):
        out += order_payment_violations(oid, order, snap.payments.get(oid),
                                        snap.shipments.get(oid), snap.aged(oid))
    return out


def order_payment_violations(oid: str, order: dict, pay: dict | None, ship: dict | None,
                             aged: bool = False) -> list[str]:
    """aged: the order is old enough that an absent payment or shipment may have expired."""
    if aged and (pay is None or ship is None):
        return []
    pay, ship = pay or {}, ship or {}
    out = []
    status, booked = order.get("status"), ship.get("status") == "BOOKED"
    if booked and pay.get("status") == "REFUNDED":
        out.append(f"order {oid}: both shipped (shipment BOOKED) and refunded")
    if booked and status in TERMINAL and status != "COMPLETED":
        out.append(f"order {oid}: shipment BOOKED but the order ended {status}")
    if status == "COMPLETED":
        if pay.get("status") != "CHARGED" or pay.get("amount_cents") != order.get("total_cents"):
            out.append(f"order {oid}: COMPLETED with total {order.get('total_cents')} but payment "
                       f"is {pay.get('status', 'absent')} {pay.get('amount_cents', '')}".rstrip())
        if not booked:
            out.append(f"order {oid}: COMPLETED but shipment is {ship.get('status', 'absent')}")
    return out


def check_settled(snap: Snapshot) -> list[str]:
    """Only meaningful once nothing is in flight: compensations done, money adds up."""
    out = []
    completed = 0
    for oid, order in sorted(snap.orders.items()):
        status = order.get("status")
        pay, res = snap.payments.get(oid, {}), snap.reservations.get(oid, {})
        if status == "COMPLETED":
            completed += whole(order.get("total_cents", 0), f"{keys.order(oid)} total_cents")
            if res.get("status") != "SOLD" and not (snap.aged(oid) and not res):
                out.append(f"order {oid}: COMPLETED but reservation is {res.get('status', 'absent')}")
        elif status in TERMINAL:
            if pay.get("status") == "CHARGED":
                out.append(f"order {oid}: {status} but its payment is still CHARGED (no refund)")
            if res.get("status") == "RESERVED":
                out.append(f"order {oid}: {status} but its stock is still RESERVED")
    paid = summed_name(keys.payment_totals)
    net = (whole(snap.totals.get("charged_cents", 0), f"{paid} charged_cents")
           - whole(snap.totals.get("refunded_cents", 0), f"{paid} refunded_cents"))
    recorded = whole(snap.orders_totals.get("completed_cents", completed),
                     f"{summed_name(keys.orders_totals)} completed_cents")
    if net != completed and not snap.may_have_expired:
        out.append(f"money: charged - refunded = {net} cents but completed orders total "
                   f"{completed} cents")
    elif snap.may_have_expired and net != recorded:
        # Only once orders may have expired is orders:totals the measure: a store older than
        # the counter (completions before it existed) is checked against the orders themselves.
        out.append(f"money: charged - refunded = {net} cents but {summed_name(keys.orders_totals)} records "
                   f"{recorded} cents of completed orders")
    return out


def check_streams(snap: Snapshot, strict: bool) -> list[str]:
    out = []
    for g in snap.groups:
        where = f"{g.stream} group {g.group}"
        out += [f"{where}: {lost}" for lost in g.lost]
        if not g.exists and (strict or g.unread):
            out.append(f"{where}: declared but missing ({g.unread} entries it has never read)")
        elif strict and (g.unread or g.pending):
            out.append(f"{where}: {g.unread} unread and {g.pending} pending after the run drained")
    return out


@dataclass(frozen=True)
class AuditReport:
    violations: list[str]
    settled: bool
    summary: str


def audit(snap: Snapshot, strict: bool = False, orders: bool = True) -> AuditReport:
    """The saga's invariants (orders: True) and every app's: what its streams and groups hold."""
    settled = snap.quiet and not any(snap.in_flight)
    violations = check_streams(snap, strict)
    if orders:
        violations = (snap.malformed + _safely(check_orders, snap, strict) + _safely(check_stock, snap)
                      + _safely(check_payments, snap) + violations)
        if settled or strict:
            violations += (_safely(check_counters, snap) + _safely(check_reserved, snap)
                           + _safely(check_totals, snap) + _safely(check_settled, snap))
            if snap.tagged or snap.holds:
                violations += _safely(check_holds, snap)
    return AuditReport(violations, settled, summarize(snap, settled, orders))


def _safely(check, *args) -> list[str]:
    """A check's violations; one that meets a value the saga never writes (hand-written with
    redis-cli: a count that is not a number, lines that are not JSON) says so as a violation of
    its own, and the other checks still run."""
    try:
        return check(*args)
    except NotWhole as exc:
        return [str(exc)]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return [f"{check.__name__.removeprefix('check_')}: stopped at a value the saga never writes "
                f"({type(exc).__name__}: {str(exc)[:120]})"]


def summarize(snap: Snapshot, settled: bool, orders: bool = True) -> str:
    statuses = Counter(o.get("status") for o in snap.orders.values())
    shown = " ".join(f"{s}={n}" for s, n in sorted(statuses.items(), key=lambda kv: str(kv[0])))
    pending_orders, unread, pending = snap.in_flight
    flight = ("settled: nothing in flight" if settled else
              f"in flight: {pending_orders} orders PENDING, {unread} unread, {pending} pending "
              f"entries{'' if snap.quiet else ', events published while auditing'} "
              f"(cross-key and settlement checks wait until drained)")
    dead = sum(snap.dead_letters.values())
    if not orders:
        return (f"{len(snap.groups)} stream groups; {dead} dead letters; " +
                ("settled: nothing in flight" if settled else
                 f"in flight: {unread} unread, {pending} pending entries"))
    return (f"{len(snap.orders)} orders ({shown or 'none'}); {len(snap.stocks)} products "
            f"conserved; {len(snap.groups)} stream groups; {dead} dead letters; {flight}")


def run_audit(bus: RedisStreamsBus, services: Iterable, strict: bool, out, err,
              retention_s: float = 86400, app=None) -> int:
    """The saga's checks when the app is the saga (App.orders), every app's stream checks, and
    the app's own (App.audit: a function of the bus returning violations, one line each)."""
    orders = app.orders if app is not None else True
    report = audit(gather(bus, services, retention_s, orders=orders), strict, orders)
    if app is not None and app.audit is not None:
        own = list(app.audit(bus))
        report = AuditReport(report.violations + own, report.settled, report.summary)
    for line in report.violations:
        out(f"VIOLATION {line}")
    if report.violations:
        err(f"choreo audit: {len(report.violations)} violation(s); {report.summary}")
        return 1
    out(f"audit clean: {report.summary}")
    return 0

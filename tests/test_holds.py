"""Stock by holds, in the tagged layout (docs/partitions.md): bus/hold.lua's steps, the inventory
service reserving through them (racing workers, a crash between the holds and the commit, a
dead-lettered OrderCreated), and what `choreo audit` checks of them. Against a real redis-server."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from choreo.bus import keys as bus_keys, layout
from choreo.bus.connect import open_bus
from choreo.bus.contract import BusError, Hold
from choreo.bus.envelope import Envelope
from choreo.bus.layout import Layout
from choreo.config.settings import Settings
from choreo.ops import audit
from choreo.orders import OrderRequest, place_orders
from choreo.workers import SERVICES, keys
from choreo.workers.inventory import reserve_stock, seed_stock
from choreo.workers.runtime import Worker
from choreo.workers.service import On
from choreo.workers.unit_of_work import BatchView
from tests.helpers import pending_count, record, wait_for



def dead_letters(bus) -> int:
    return sum(bus.client.xlen(k) for k in bus_keys.all_dead_letters("inventory"))


def created() -> list[str]:
    """OrderCreated's stream in every partition of the layout in force."""
    return bus_keys.streams("OrderCreated")

SCARCE = 103                        # 5 in stock (config.catalogue)
STOCK, HOLD = keys.stock(SCARCE), keys.hold(SCARCE, "7")


@pytest.fixture
def tagged():
    previous = layout.use(Layout(partitions=4))
    yield
    layout.use(previous)


def stock(bus, pid=SCARCE) -> dict[str, int]:
    return {k: int(v) for k, v in bus.client.hgetall(keys.stock(pid)).items()}


def hold_keys(bus) -> list[str]:
    return sorted(bus.client.scan_iter(match="hold:*"))


def settings(**kw) -> Settings:
    return Settings(**{"retry_base_ms": 60_000, "retry_max_ms": 60_000, "claim_idle_ms": 60_000,
                       "block_ms": 50, **kw})


def inventory(bus, name="inventory-test-1", service=None, **kw) -> Worker:
    w = Worker(service or SERVICES["inventory"], bus, settings(**kw), name)
    w.start()
    return w


def place(bus, quantities: dict[str, list[tuple[int, int]]]) -> None:
    place_orders(bus, [OrderRequest(o, [{"product_id": p, "quantity": q} for p, q in lines])
                       for o, lines in quantities.items()])


# -- bus/hold.lua ------------------------------------------------------------------------------

def test_reserve_moves_available_to_reserved_once_and_bumps_the_version(real_bus):
    real_bus.client.hset(STOCK, mapping={"start": 5, "available": 5, "reserved": 0, "sold": 0})
    assert real_bus.holds([Hold(STOCK, HOLD, "reserve", 3)], 60) == ["RESERVED"]
    assert real_bus.holds([Hold(STOCK, HOLD, "reserve", 3), Hold(STOCK, HOLD, "reserve", 1)], 60) \
        == ["RESERVED", "RESERVED"]                     # idempotent: the hold decides, not qty
    assert stock(real_bus) == {"start": 5, "available": 2, "reserved": 3, "sold": 0, "_v": 1}
    assert real_bus.client.hgetall(HOLD) == {"status": "RESERVED", "qty": "3"}
    assert real_bus.client.ttl(HOLD) == -1              # a live hold never expires


def test_reserve_short_writes_a_sticky_short_hold_and_no_stock(real_bus):
    real_bus.client.hset(STOCK, mapping={"start": 5, "available": 2, "reserved": 3, "sold": 0})
    assert real_bus.holds([Hold(STOCK, HOLD, "reserve", 3)], 60) == ["SHORT"]
    real_bus.client.hset(STOCK, "available", 10)        # stock back: the decision still stands
    assert real_bus.holds([Hold(STOCK, HOLD, "reserve", 3)], 60) == ["SHORT"]
    assert stock(real_bus)["available"] == 10 and "_v" not in stock(real_bus)
    assert 0 < real_bus.client.ttl(HOLD) <= 60
    assert real_bus.holds([Hold(keys.stock(999), keys.hold(999, "7"), "reserve", 1)], 60) == ["SHORT"]
    assert not real_bus.client.exists(keys.stock(999))  # an unknown product: short, not created


@pytest.mark.parametrize("op, status, moved", [
    ("release", "RELEASED", {"available": 5, "reserved": 0, "sold": 0}),
    ("sell", "SOLD", {"available": 2, "reserved": 0, "sold": 3})])
def test_release_and_sell_settle_a_reserved_hold_once(real_bus, op, status, moved):
    real_bus.client.hset(STOCK, mapping={"start": 5, "available": 5, "reserved": 0, "sold": 0})
    real_bus.holds([Hold(STOCK, HOLD, "reserve", 3)], 60)
    assert real_bus.holds([Hold(STOCK, HOLD, op), Hold(STOCK, HOLD, op)], 60) == [status, status]
    assert stock(real_bus) == {"start": 5, **moved, "_v": 2}
    assert real_bus.client.hget(HOLD, "status") == status and 0 < real_bus.client.ttl(HOLD) <= 60
    other = "sell" if op == "release" else "release"
    assert real_bus.holds([Hold(STOCK, HOLD, other), Hold(STOCK, HOLD, "reserve", 3)], 60) == [status] * 2
    assert stock(real_bus)["_v"] == 2                   # nothing moved
    assert real_bus.holds([Hold(STOCK, keys.hold(SCARCE, "8"), op)], 60) == [""]    # no hold


def test_forget_gives_back_and_deletes_so_a_replay_starts_afresh(real_bus):
    real_bus.client.hset(STOCK, mapping={"start": 5, "available": 5, "reserved": 0, "sold": 0})
    short = keys.hold(SCARCE, "8")
    assert real_bus.holds([Hold(STOCK, HOLD, "reserve", 4), Hold(STOCK, short, "reserve", 4)], 60) \
        == ["RESERVED", "SHORT"]
    assert real_bus.holds([Hold(STOCK, HOLD, "forget"), Hold(STOCK, short, "forget"),
                           Hold(STOCK, HOLD, "forget")], 60) == ["RESERVED", "SHORT", ""]
    assert hold_keys(real_bus) == []
    assert stock(real_bus) == {"start": 5, "available": 5, "reserved": 0, "sold": 0, "_v": 2}
    assert real_bus.holds([Hold(STOCK, short, "reserve", 4)], 60) == ["RESERVED"]   # afresh
    real_bus.holds([Hold(STOCK, short, "sell")], 60)
    assert real_bus.holds([Hold(STOCK, short, "forget")], 60) == ["SOLD"]           # sold stays
    assert stock(real_bus)["sold"] == 4 and real_bus.client.exists(short)


def test_a_step_redis_would_refuse_writes_nothing(real_bus):
    real_bus.client.hset(STOCK, mapping={"start": 5, "available": "five", "reserved": 0})
    with pytest.raises(BusError, match="not an integer"):
        real_bus.holds([Hold(STOCK, HOLD, "reserve", 1)], 60)
    real_bus.client.delete(STOCK)
    real_bus.client.rpush(HOLD, "x")
    with pytest.raises(BusError, match="holds a list"):
        real_bus.holds([Hold(STOCK, HOLD, "reserve", 1)], 60)
    with pytest.raises(ValueError):
        real_bus.holds([Hold(STOCK, HOLD, "steal", 1)], 60)
    assert not real_bus.client.exists(STOCK) and real_bus.client.type(HOLD) == "list"


# -- inventory in the tagged layout ------------------------------------------------------------

def test_untagged_inventory_writes_no_holds(real_bus):
    w = inventory(real_bus)
    place(real_bus, {"1": [(SCARCE, 2)]})
    w.poll(block_ms=5)
    assert real_bus.client.hget(keys.reservation("1"), "status") == "RESERVED"
    assert hold_keys(real_bus) == [] and stock(real_bus)["reserved"] == 2


def test_tagged_inventory_reserves_by_holds_and_settles_them(real_bus, tagged):
    w = inventory(real_bus)
    place(real_bus, {"1": [(SCARCE, 2), (101, 1), (SCARCE, 1)]})
    w.poll(block_ms=5)
    place(real_bus, {"2": [(SCARCE, 3), (101, 1)]})     # another partition: placed after, to race none
    w.poll(block_ms=5)
    assert real_bus.client.hget(keys.reservation("1"), "status") == "RESERVED"
    assert real_bus.client.hgetall(keys.hold(SCARCE, "1")) == {"status": "RESERVED", "qty": "3"}
    assert real_bus.client.hgetall(keys.reservation("2"))["reason"] == \
        "not enough stock for product 103"                      # as the untagged path says it
    assert real_bus.client.hget(keys.hold(101, "2"), "status") == "RELEASED"
    assert stock(real_bus) | {"_v": 0} == {"start": 5, "available": 2, "reserved": 3, "sold": 0, "_v": 0}
    e = Envelope.new("ShippingArranged", "1", "shipping", {"tracking_id": "T1"})
    arranged = bus_keys.stream_for("ShippingArranged", "1")
    real_bus.client.xadd(arranged, e.fields())
    w.commit_batch([d for d in real_bus.read_new("inventory", w.consumer, [arranged], 10, 0)])
    assert record(real_bus.client, keys.reservation("1")).get("status") == "SOLD"
    assert real_bus.client.hget(keys.hold(SCARCE, "1"), "status") == "SOLD"
    assert {k: v for k, v in stock(real_bus).items() if k != "_v"} == \
        {"start": 5, "available": 2, "reserved": 0, "sold": 3}


def _run_inventory_workers(url: str, n: int, orders: int, stop: threading.Event) -> list[threading.Thread]:
    threads = []
    for i in range(n):
        bus = open_bus(url)
        w = inventory(bus, f"inventory-race-{i}", block_ms=20)
        t = threading.Thread(target=w.run, args=(stop,), daemon=True)
        t.start()
        threads.append(t)
    return threads


def test_racing_tagged_inventory_workers_never_oversell_and_conserve_stock(real_bus, redis_url, tagged):
    place(real_bus, {str(i): [(SCARCE, 1 + i % 2), (101, 1)] for i in range(1, 41)})
    stop = threading.Event()
    threads = _run_inventory_workers(redis_url, 4, 40, stop)
    try:
        wait_for(lambda: len(real_bus.client.keys("reservation:*")) == 40 and
                 sum(pending_count(real_bus.client, s, "inventory") for s in created()) == 0, timeout=30,
                 what="every order decided")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    statuses = [real_bus.client.hgetall(keys.reservation(str(i))) for i in range(1, 41)]
    taken = sum(1 + i % 2 for i, r in zip(range(1, 41), statuses) if r["status"] == "RESERVED")
    s = stock(real_bus)
    assert s["available"] >= 0 and s["reserved"] == taken <= 5
    assert s["start"] == s["available"] + s["reserved"] + s["sold"] == 5
    assert 5 - taken < 2                                        # short only when truly short
    snap = audit.gather(real_bus, SERVICES.values())
    assert snap.tagged and audit.check_stock(snap) + audit.check_holds(snap) == []


def test_racing_tagged_inventory_processes_never_oversell(procs, real_bus, tagged):
    place(real_bus, {str(i): [(SCARCE, 1)] for i in range(1, 31)})
    for slot in (1, 2, 3):
        procs.worker("inventory", slot, CHOREO_PARTITIONS=4)
    wait_for(lambda: len(real_bus.client.keys("reservation:*")) == 30 and
             sum(pending_count(real_bus.client, s, "inventory") for s in created()) == 0, timeout=60,
             what="every order decided")
    reserved = [i for i in range(1, 31)
                if real_bus.client.hget(keys.reservation(str(i)), "status") == "RESERVED"]
    assert len(reserved) == 5
    assert sorted(k.rsplit(":", 1)[1] for k in real_bus.client.keys(keys.hold(SCARCE, "*"))
                  if real_bus.client.hget(k, "status") == "RESERVED") == sorted(map(str, reserved))
    assert stock(real_bus)["available"] == 0 and stock(real_bus)["reserved"] == 5


def _crash(w: Worker, bus) -> None:
    """Handle what is new, holds and all, and die before the commit (the entries stay pending)."""
    view = BatchView(bus)
    for d in bus.read_new("inventory", w.consumer, created(), 10, 0):
        w.handle(d, w.parse(d), view)


def _redeliver(w: Worker, bus) -> None:
    w.commit_batch(bus.read_own_pending("inventory", w.consumer, {s: "0" for s in created()}, 10))


def test_a_crash_between_the_holds_and_the_commit_reserves_once(real_bus, tagged):
    w = inventory(real_bus)
    place(real_bus, {"1": [(SCARCE, 2)], "2": [(SCARCE, 2), (101, 1)], "3": [(SCARCE, 2), (101, 3)]})
    _crash(w, real_bus)
    assert not real_bus.client.exists(keys.reservation("1"))       # nothing committed
    assert stock(real_bus)["reserved"] == 4                        # holds made: 1 and 2
    _crash(w, real_bus)                                            # nothing new: no-op
    _redeliver(w, real_bus)
    _redeliver(w, real_bus)
    assert [real_bus.client.hget(keys.reservation(o), "status") for o in "123"] == \
        ["RESERVED", "RESERVED", "REJECTED"]
    assert real_bus.client.hget(keys.reservation("3"), "reason") == "not enough stock for product 103"
    assert {k: v for k, v in stock(real_bus).items() if k != "_v"} == \
        {"start": 5, "available": 1, "reserved": 4, "sold": 0}
    assert real_bus.client.hget(keys.hold(101, "3"), "status") == "RELEASED"
    assert sum(pending_count(real_bus.client, s, "inventory") for s in created()) == 0


def test_a_rejection_redelivered_after_its_release_gives_the_same_reason(real_bus, tagged):
    w = inventory(real_bus)
    real_bus.client.hset(keys.stock(SCARCE), mapping={"start": 5, "available": 1, "reserved": 4, "sold": 0})
    place(real_bus, {"1": [(101, 1), (SCARCE, 2)]})
    _crash(w, real_bus)                         # reserved 101, short 103, released 101, died
    _redeliver(w, real_bus)                     # 101's hold now RELEASED: still SHORT of 103
    assert real_bus.client.hget(keys.reservation("1"), "reason") == "not enough stock for product 103"
    assert stock(real_bus, 101)["reserved"] == 0


def test_a_compensation_first_releases_the_holds_of_an_uncommitted_try(real_bus, tagged):
    w = inventory(real_bus)
    place(real_bus, {"1": [(SCARCE, 2)]})
    _crash(w, real_bus)                                            # holds RESERVED
    failed = Envelope.new("ShippingFailed", "1", "shipping", {"reason": "deadline passed"})
    real_bus.client.xadd(bus_keys.stream_for("ShippingFailed", "1"), failed.fields())
    w.commit_batch(real_bus.read_new("inventory", w.consumer, [bus_keys.stream_for("ShippingFailed", "1")],
                                     10, 0))
    assert record(real_bus.client, keys.reservation("1")).get("status") == "RELEASED"
    _redeliver(w, real_bus)
    assert real_bus.client.hget(keys.hold(SCARCE, "1"), "status") == "RELEASED"
    assert stock(real_bus)["reserved"] == 0 and stock(real_bus)["available"] == 5


def _raises_after_holds(event, uow):
    reserve_stock(event, uow)
    raise RuntimeError("after the holds")


def test_a_dead_lettered_order_created_leaks_no_hold(real_bus, tagged):
    inv = SERVICES["inventory"]
    broken = dataclasses.replace(inv, consumes={**inv.consumes, "OrderCreated": dataclasses.replace(
        inv.consumes["OrderCreated"], handle=_raises_after_holds)})
    w = inventory(real_bus, service=broken, max_deliveries=1)
    place(real_bus, {"1": [(SCARCE, 2), (101, 1)], "2": [(SCARCE, 9)]})
    w.poll(block_ms=5)
    assert dead_letters(real_bus) == 2
    assert hold_keys(real_bus) == []
    assert {k: v for k, v in stock(real_bus).items() if k != "_v"} == \
        {"start": 5, "available": 5, "reserved": 0, "sold": 0}
    assert not real_bus.client.exists(keys.reservation("1"))


def test_an_order_created_given_up_by_the_crash_guard_leaks_no_hold(real_bus, tagged):
    w = inventory(real_bus, max_deliveries=1)
    place(real_bus, {"1": [(SCARCE, 2)]})
    _crash(w, real_bus)
    assert stock(real_bus)["reserved"] == 2
    (d,) = real_bus.read_own_pending("inventory", w.consumer, {s: "0" for s in created()}, 10)
    w.commit_batch([dataclasses.replace(d, deliveries=99)])        # past 3 × max_deliveries
    assert dead_letters(real_bus) == 1
    assert hold_keys(real_bus) == [] and stock(real_bus)["available"] == 5


def test_a_dead_letter_keeps_the_holds_of_a_recorded_reservation(real_bus, tagged):
    w = inventory(real_bus, max_deliveries=1)
    place(real_bus, {"1": [(SCARCE, 2)]})
    w.poll(block_ms=5)
    one = bus_keys.stream_for("OrderCreated", "1")
    (_, fields), = real_bus.client.xrange(one)
    real_bus.client.xadd(one, fields)                              # the same event, a new entry
    (d,) = real_bus.read_new("inventory", w.consumer, [one], 10, 0)
    w.commit_batch([dataclasses.replace(d, deliveries=99)])
    assert real_bus.client.hget(keys.hold(SCARCE, "1"), "status") == "RESERVED"
    assert stock(real_bus)["reserved"] == 2


def test_audit_reports_a_leaked_hold(real_bus, tagged):
    seed_stock(real_bus)
    real_bus.holds([Hold(STOCK, HOLD, "reserve", 2)], 60)
    snap = audit.gather(real_bus, SERVICES.values())
    assert audit.check_holds(snap) == [
        f"{HOLD}: RESERVED (2) but {keys.reservation('7')} is absent: leaked"]
    assert any("leaked" in line for line in audit.audit(snap).violations)


def test_a_final_hold_outlives_the_dedup_markers_so_a_late_duplicate_takes_nothing(real_bus, tagged):
    """A rejected order's SHORT hold lives as long as its event id is remembered (the longer of
    CHOREO_RETENTION_S and CHOREO_SEEN_TTL_S): an OrderCreated arriving again after the
    reservation expired finds the hold decided, and its DUPLICATE commit leaves stock alone."""
    w = inventory(real_bus, retention_s=60, seen_ttl_s=3600)
    place(real_bus, {"1": [(SCARCE, 9)]})
    w.poll(block_ms=5)
    assert real_bus.client.hget(keys.hold(SCARCE, "1"), "status") == "SHORT"
    assert 60 < real_bus.client.ttl(keys.hold(SCARCE, "1")) <= 3600
    real_bus.client.delete(keys.reservation("1"))          # the reservation's retention passed
    before = stock(real_bus)
    one = bus_keys.stream_for("OrderCreated", "1")
    (_, fields), = real_bus.client.xrange(one)
    real_bus.client.xadd(one, fields)                      # the same event again, a new entry
    w.poll(block_ms=5)
    assert stock(real_bus) == before and real_bus.client.hget(keys.hold(SCARCE, "1"), "status") == "SHORT"


def test_settling_a_reservation_whose_hold_is_gone_records_nothing(real_bus, tagged):
    """A RESERVED reservation whose hold was forgotten: selling it would ship stock nobody holds.
    The handler raises instead (retried, then dead-lettered); the reservation stays RESERVED."""
    w = inventory(real_bus, max_deliveries=1)
    place(real_bus, {"1": [(SCARCE, 2)]})
    w.poll(block_ms=5)
    assert real_bus.holds([Hold(STOCK, keys.hold(SCARCE, "1"), "forget", 0)], 60) == ["RESERVED"]
    e = Envelope.new("ShippingArranged", "1", "shipping", {"tracking_id": "T1"})
    arranged = bus_keys.stream_for("ShippingArranged", "1")
    real_bus.client.xadd(arranged, e.fields())
    w.commit_batch(real_bus.read_new("inventory", w.consumer, [arranged], 10, 0))
    assert real_bus.client.hget(keys.reservation("1"), "status") == "RESERVED"
    assert stock(real_bus)["sold"] == 0
    (letter,) = [l for l in dead_letters_of(real_bus) if l.stream == arranged]
    assert "hold of product 103 is gone, not SOLD" in letter.error


def dead_letters_of(bus):
    from choreo.bus import dead_letters as store
    return store.read_all(bus, "inventory")


def test_a_stalled_workers_commit_between_a_dead_letters_forget_and_its_commit_keeps_its_holds(
        real_bus, redis_url, tagged):
    """Worker A reserves by holds and stalls before its commit; the entry, claimed past the crash
    guard, is given up by worker D, whose forget gave the stock back before its own commit; A's
    commit, landing in between, recorded the reservation RESERVED (the entry still pending: its
    XACK found it) with no hold behind it: that stock was sold twice. The forget is now made only
    once D's letter is committed: here D's commit conflicts with A's reservation, goes round,
    finds it RESERVED and forgets nothing, and A's reservation keeps its holds."""
    a = inventory(real_bus, name="inventory-a", max_deliveries=1)
    place(real_bus, {"1": [(SCARCE, 4)]})
    stream = bus_keys.stream_for("OrderCreated", "1")
    with open_bus(redis_url) as d_bus:
        d = inventory(d_bus, name="inventory-d", max_deliveries=1)
        a_commit, d_commit, a_outcomes = real_bus.commit, d_bus.commit, []

        def d_commits_after_a(group, commits):      # D has made its letter: A's commit lands first
            if not a_outcomes:
                a_outcomes.append(a_commit(*stalled_commit))
            return d_commit(group, commits)

        def a_stalls(group, commits):               # A's holds are made; D gives the entry up
            stalled_commit.extend([group, commits])
            (pending,) = real_bus.client.xpending_range(stream, "inventory", "-", "+", 1)
            for _ in range(3):                      # three claimers that died holding it
                real_bus.client.xclaim(stream, "inventory", "inventory-d", 0, [pending["message_id"]])
            d_bus.commit = d_commits_after_a
            d.commit_batch(d_bus.read_own_pending("inventory", "inventory-d", {stream: "0"}, 10))
            return a_outcomes[0]
        stalled_commit: list = []
        real_bus.commit = a_stalls
        a.poll(block_ms=5)
        real_bus.commit = a_commit
    assert real_bus.client.hget(keys.reservation("1"), "status") == "RESERVED"
    assert real_bus.client.hget(keys.hold(SCARCE, "1"), "status") == "RESERVED"
    assert {k: v for k, v in stock(real_bus).items() if k != "_v"} == \
        {"start": 5, "available": 1, "reserved": 4, "sold": 0}
    assert dead_letters(real_bus) == 0
    assert sum(pending_count(real_bus.client, s, "inventory") for s in created()) == 0


def _broken_service():
    inv = SERVICES["inventory"]
    return dataclasses.replace(inv, consumes={**inv.consumes, "OrderCreated": dataclasses.replace(
        inv.consumes["OrderCreated"], handle=_raises_after_holds)})


def test_a_dead_letters_forget_redis_did_not_take_is_made_by_a_later_poll(real_bus, tagged, monkeypatch):
    """The forget runs after the letter's commit; with Redis gone for a moment there, it was
    logged and dropped, and the holds stayed RESERVED for an order already given up. It is owed
    and made at the worker's next poll."""
    from choreo.bus.contract import BusUnavailable
    w = inventory(real_bus, service=_broken_service(), max_deliveries=1)
    place(real_bus, {"1": [(SCARCE, 2)]})
    holds, blips = real_bus.holds, []

    def blip(requests, retention_s):
        if any(r.op == "forget" for r in requests) and not blips:
            blips.append(requests)
            raise BusUnavailable("connection reset")
        return holds(requests, retention_s)
    monkeypatch.setattr(real_bus, "holds", blip)
    w.poll(block_ms=5)
    assert dead_letters(real_bus) == 1 and blips
    assert real_bus.client.hget(keys.hold(SCARCE, "1"), "status") == "RESERVED"     # owed
    w.poll(block_ms=5)                                                              # idle: pays it
    assert hold_keys(real_bus) == [] and stock(real_bus)["available"] == 5


def test_an_applied_letter_beside_a_refused_one_still_forgets_its_holds(real_bus, tagged, monkeypatch):
    """On a cluster each slot's commits are applied on their own, so a letter Redis refuses
    (its dead-letter stream broken) can come back between letters applied in other slots. The
    round raised at the refused one, so a later applied letter's forget was never made; and the
    batch then went one entry at a time, handling an applied one again, whose handler took its
    stock anew with no forget to follow."""
    w = inventory(real_bus, service=_broken_service(), max_deliveries=1)
    streams = [s for s in w.streams if s.endswith(":OrderCreated")]          # in the order read
    before, refused, after = (next(o for o in map(str, range(1, 99)) if bus_keys.stream_for("OrderCreated", o) == s)
                              for s in streams[:3])
    real_bus.client.set(bus_keys.dead_letters("inventory", layout.current().partition_of(refused)), "broken")
    place(real_bus, {before: [(SCARCE, 1)], refused: [(SCARCE, 1)], after: [(SCARCE, 2)]})
    commit = real_bus.commit
    monkeypatch.setattr(real_bus, "commit", lambda group, commits: [commit(group, [c])[0] for c in commits])
    with pytest.raises(BusError, match="cannot dead-letter"):
        w.poll(block_ms=5)
    assert not real_bus.client.exists(keys.hold(SCARCE, before), keys.hold(SCARCE, after))
    assert stock(real_bus)["reserved"] == 1                             # the refused one's, kept


def _slots_then_failing(bus, monkeypatch, error):
    """The bus commits a batch one slot at a time, as on a cluster (bus.redis_streams.by_slot),
    and the second slot's EVALSHA raises `error` (a failover, a script Redis refused): the first
    slot's commits stay applied."""
    run, commit, calls = bus._run_commit, bus.commit, []

    def second_fails(keys_, argv):
        calls.append(keys_)
        if len(calls) == 2:
            raise error
        return run(keys_, argv)

    def by_slot(group, commits):            # the bus's own split, for its commit alone
        bus.cluster = True
        try:
            return commit(group, commits)
        finally:
            bus.cluster = False
    monkeypatch.setattr(bus, "_run_commit", second_fails)
    monkeypatch.setattr(bus, "commit", by_slot)
    return calls


def _three_partitions(w) -> list[str]:
    """Three order ids whose OrderCreated land in the first three partitions the worker reads."""
    streams = [s for s in w.streams if s.endswith(":OrderCreated")]
    return [next(o for o in map(str, range(1, 99)) if bus_keys.stream_for("OrderCreated", o) == s)
            for s in streams[:3]]


def test_a_letter_applied_before_a_later_slot_fails_over_forgets_its_holds(real_bus, tagged, monkeypatch):
    """A commit that raised after its first slot was applied (a cluster's later slot failing
    over) said nothing of the letters it applied: redelivered, they came back DUPLICATE, which
    makes no hold step, and their holds stayed RESERVED for orders given up. The bus's error
    now says what was applied, and the worker makes those letters' steps."""
    from choreo.bus.contract import BusUnavailable
    w = inventory(real_bus, service=_broken_service(), max_deliveries=1)
    orders = _three_partitions(w)
    place(real_bus, {o: [(SCARCE, 1)] for o in orders})
    calls = _slots_then_failing(real_bus, monkeypatch, BusUnavailable("the slot is failing over"))
    with pytest.raises(BusUnavailable):
        w.poll(block_ms=5)
    assert len(calls) == 2 and dead_letters(real_bus) == 1
    _redeliver(w, real_bus)                 # as the worker does once Redis answers again
    assert dead_letters(real_bus) == 3
    assert hold_keys(real_bus) == [] and stock(real_bus)["available"] == 5


def test_a_letter_applied_before_a_later_slot_is_refused_is_not_handled_again(real_bus, tagged, monkeypatch):
    """A later slot's refusal (a BusError) sends the batch through one entry at a time to find the
    culprit: an applied letter's entry went through its handler again, which took its stock anew,
    and the letter came back DUPLICATE, forgetting nothing. Entries the commit settled are no
    longer handled again."""
    w = inventory(real_bus, service=_broken_service(), max_deliveries=1)
    orders = _three_partitions(w)
    place(real_bus, {o: [(SCARCE, 1)] for o in orders})
    _slots_then_failing(real_bus, monkeypatch, BusError("Redis refused a command: ERR a script error"))
    w.poll(block_ms=5)
    assert dead_letters(real_bus) == 3
    assert hold_keys(real_bus) == [] and stock(real_bus)["available"] == 5


def test_a_hold_step_redis_cannot_take_backs_the_worker_off_rather_than_fail_the_entry(
        real_bus, tagged, monkeypatch):
    """A hold step that met Redis away (the stock's slot failing over or migrating on a cluster:
    TRYAGAIN, ASK, a refused connection) raised out of the handler and was counted as the entry's
    failure: at max_deliveries it was dead-lettered, its stock effect lost (a sale never made,
    stock RESERVED for good). The worker now backs off with the entry pending, as for its reads."""
    from choreo.bus.contract import BusUnavailable
    w = inventory(real_bus, max_deliveries=1)
    place(real_bus, {"1": [(SCARCE, 2)]})
    holds, blips = real_bus.holds, []

    def migrating(requests, retention_s):
        if not blips:
            blips.append(requests)
            raise BusUnavailable("TRYAGAIN Multiple keys request during rehashing of slot")
        return holds(requests, retention_s)
    monkeypatch.setattr(real_bus, "holds", migrating)
    with pytest.raises(BusUnavailable):
        w.poll(block_ms=5)
    assert dead_letters(real_bus) == 0
    _redeliver(w, real_bus)
    assert dead_letters(real_bus) == 0
    assert real_bus.client.hget(keys.reservation("1"), "status") == "RESERVED"
    assert stock(real_bus)["reserved"] == 2

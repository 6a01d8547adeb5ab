"""Bounded memory: once an order has ended and each service's part of it is final, its keys expire
after CHOREO_RETENTION_S; until then they still make late events no-ops. Real redis-server (TTLs
and expiry are the point), in-process workers, a retention of seconds; every wait is on a condition."""

from __future__ import annotations

import pytest

from choreo.bus import keys as bus_keys
from choreo.bus.contract import Commit, Outcome
from choreo.bus.envelope import Envelope
from choreo.bus.ops import Expire, Publish, SetFields
from choreo.bus.trim import Index, prune_index, trim_streams
from choreo.ops.audit import run_audit
from choreo.cli import main
from choreo.orders import OrderRequest, place_orders
from choreo.config.settings import Settings
from tests.helpers import wait_for
from tests.inprocess import drain, start_workers
from choreo.workers import SERVICES, keys

RETENTION_S = 2
# One order per way to end: completed, rejected (out of stock), declined (card limit), shipping
# failed (parcel too big: charged, then refunded and released).
ORDERS = {"c": (101, 1), "r": (103, 6), "d": (102, 101), "s": (101, 60)}
ENDS = {"c": "COMPLETED", "r": "REJECTED", "d": "CANCELLED", "s": "CANCELLED"}
INDEX = Index(keys.orders_index(), keys.orders_expired(), keys.order)


def order_keys(oid: str) -> list[str]:
    return [keys.order(oid), bus_keys.trace(oid), keys.reservation(oid),
            keys.payment(oid), keys.shipment(oid)]


def place(bus, suffix: str) -> list[str]:
    requests = [OrderRequest(k + suffix, [{"product_id": p, "quantity": q}])
                for k, (p, q) in ORDERS.items()]
    return place_orders(bus, requests)


def settle(bus, workers, suffix: str) -> list[str]:
    ids = place(bus, suffix)
    drain(workers)
    statuses = [bus.client.hget(keys.order(i), "status") for i in ids]
    assert statuses == [ENDS[i[0]] for i in ids]
    return ids


def gone(bus, ids) -> bool:
    return not any(bus.client.exists(k) for i in ids for k in order_keys(i))


def lasting_keys(bus) -> set[str]:
    """Every key but the dedup markers (their retention is CHOREO_SEEN_TTL_S, not this one)."""
    return {k for k in bus.client.scan_iter(count=1000) if not k.startswith("seen:")}


def publish(bus, event: Envelope) -> None:
    """A late event: a new entry (new event id), as a publisher's retry or a slow producer makes."""
    assert bus.commit("", [Commit(ops=[Publish(bus_keys.stream(event.type), event.fields())])]) \
        == [Outcome.APPLIED]


@pytest.fixture
def workers(real_bus):
    return start_workers(real_bus, Settings(retention_s=RETENTION_S, block_ms=50))


def test_every_key_of_a_settled_order_expires_within_the_retention(real_bus, workers):
    ids = settle(real_bus, workers, "1")
    present = [k for i in ids for k in order_keys(i) if real_bus.client.exists(k)]
    # order, reservation, payment, shipment where each one acted; no trace key: each service
    # lists the event it published in its own record of the order
    assert len(present) >= 13 and not any(k.startswith("trace:") for k in present)
    ttls = {k: real_bus.client.pttl(k) for k in present}
    assert all(0 < ms <= RETENTION_S * 1000 for ms in ttls.values()), ttls
    wait_for(lambda: gone(real_bus, ids), timeout=15, what="the orders' keys to expire")


def test_memory_returns_to_the_same_keys_once_orders_have_expired(real_bus, workers):
    rounds = []
    for n in range(2):
        ids = settle(real_bus, workers, f"m{n}")
        wait_for(lambda: gone(real_bus, ids), timeout=15, what="the orders' keys to expire")
        assert prune_index(real_bus, INDEX, RETENTION_S) == len(ids)
        rounds.append(lasting_keys(real_bus))
    assert rounds[0] == rounds[1]
    assert real_bus.client.zcard(keys.orders_index()) == 0
    assert real_bus.client.get(keys.orders_expired()) == str(2 * len(ORDERS))


def test_late_events_within_the_window_change_nothing(real_bus, workers):
    ids = dict(zip(ORDERS, settle(real_bus, workers, "late")))
    stock = [real_bus.client.hgetall(keys.stock(p)) for p in (101, 102, 103)]
    totals = real_bus.client.hgetall(keys.payment_totals())
    # A rejected order's OrderCreated again: its reservation (REJECTED) must stop a second try.
    publish(real_bus, Envelope.new("OrderCreated", ids["r"], "order",
                                   {"lines": [{"product_id": 103, "quantity": 1}], "total_cents": 25_000}))
    # A deadline published just before the order completed: the shipment is BOOKED, keep it.
    publish(real_bus, Envelope.new("DeadlinePassed", ids["c"], "order", {}))
    # A deadline's compensation for the declined order: released, never charged, cancelled.
    publish(real_bus, Envelope.new("ShippingFailed", ids["d"], "shipping", {"reason": "late"}))
    drain(workers)
    assert [real_bus.client.hgetall(keys.stock(p)) for p in (101, 102, 103)] == stock
    assert real_bus.client.hgetall(keys.payment_totals()) == totals
    assert real_bus.client.hget(keys.order(ids["c"]), "status") == "COMPLETED"
    assert real_bus.client.hget(keys.shipment(ids["c"]), "status") == "BOOKED"
    assert real_bus.client.hget(keys.reservation(ids["r"]), "status") == "REJECTED"
    assert real_bus.client.hget(keys.payment(ids["d"]), "status") == "DECLINED"
    # Nothing was written without an expiry: the keys still go.
    wait_for(lambda: gone(real_bus, ids.values()), timeout=15, what="the orders' keys to expire")


def test_status_and_trace_of_an_expired_order_say_so(real_bus, workers, redis_url, capsys,
                                                     monkeypatch):
    ids = settle(real_bus, workers, "st")
    assert main(["status", ids[0], "--redis-url", redis_url]) == 0
    capsys.readouterr()
    wait_for(lambda: gone(real_bus, ids), timeout=15, what="the orders' keys to expire")
    monkeypatch.setenv("CHOREO_RETENTION_S", str(RETENTION_S))
    expected = (f"order {ids[0]}: not found — orders are kept CHOREO_RETENTION_S ({RETENTION_S} s) "
                f"after they end; this one may have expired\n")
    for verb in ("status", "trace"):
        assert main([verb, ids[0], "--redis-url", redis_url]) == 1
        assert capsys.readouterr().out == expected


def audit_lines(bus, strict=True) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = run_audit(bus, SERVICES.values(), strict, lines.append, lines.append, RETENTION_S)
    return code, lines


def test_audit_stays_clean_while_orders_expire_and_still_catches_lost_money(real_bus, workers):
    ids = settle(real_bus, workers, "a") + settle(real_bus, workers, "b")
    assert audit_lines(real_bus)[0] == 0
    wait_for(lambda: gone(real_bus, ids[:4]), timeout=15, what="the first orders to expire")
    code, lines = audit_lines(real_bus)
    assert code == 0, lines                                 # before the index is pruned
    prune_index(real_bus, INDEX, RETENTION_S)
    trim_streams(real_bus, SERVICES.values())
    code, lines = audit_lines(real_bus)
    assert code == 0 and lines[-1].startswith("audit clean"), lines
    real_bus.client.hincrby(keys.payment_totals(), "charged_cents", 1)
    code, lines = audit_lines(real_bus)
    assert code == 1 and any("orders:totals records" in line for line in lines), lines
    real_bus.client.hincrby(keys.payment_totals(), "charged_cents", -1)
    real_bus.client.hincrby(keys.orders_by_status(), "COMPLETED", 1)
    code, lines = audit_lines(real_bus)
    assert code == 1 and any("orders have expired" in line for line in lines), lines


def test_pruning_keeps_every_id_whose_order_still_exists(real_bus):
    c = real_bus.client
    c.zadd(keys.orders_index(), {"old-live": 1, "old-gone": 2, "young-gone": 4_000_000_000_000})
    c.hset(keys.order("old-live"), "status", "PENDING")
    assert prune_index(real_bus, INDEX, RETENTION_S, batch=1) == 1
    assert c.zrange(keys.orders_index(), 0, -1) == ["old-live", "young-gone"]
    assert c.get(keys.orders_expired()) == "1"


def test_an_expire_op_sets_a_ttl_and_a_bad_one_is_refused_untouched(any_bus):
    assert any_bus.commit("", [Commit(ops=[SetFields("k", {"f": "1"}), Expire("k", "60")])]) \
        == [Outcome.APPLIED]
    assert 0 < any_bus.client.ttl("k") <= 60
    bad = Commit(ops=[SetFields("j", {"f": "1"}), Expire("j", "soon")])
    assert any_bus.commit("", [bad]) == [Outcome.REFUSED]
    assert "not whole seconds" in bad.refusal and not any_bus.client.exists("j")


def test_a_given_id_is_refused_while_an_earlier_orders_records_remain(real_bus, workers, redis_url, capsys):
    """An order's record may expire before its settled reservation, payment and shipment, filed
    in buckets that live on while later orders file into them. A new order given that id would
    find them and be taken as decided (reserved, charged, booked: nothing done), and wait for
    ever: `place-order --order-id` refuses it, naming what remains, until they are gone."""
    from choreo.orders import OrderRejected
    place_orders(real_bus, [OrderRequest("700", [{"product_id": 101, "quantity": 1}])], given_ids=True)
    drain(workers)
    assert real_bus.client.hget(keys.order("700"), "status") == "COMPLETED"
    with pytest.raises(OrderRejected, match=r"order 700 already exists"):      # still there
        place_orders(real_bus, [OrderRequest("700", [{"product_id": 101, "quantity": 1}])], given_ids=True)
    real_bus.client.delete(keys.order("700"))                  # its own retention is over
    assert real_bus.read_hashes([keys.reservation("700")])[0]   # filed, in its bucket
    with pytest.raises(OrderRejected, match=r"order 700: an earlier order with this id still has "
                                            r"reservation:700, payment:700, shipment:700"):
        place_orders(real_bus, [OrderRequest("700", [{"product_id": 101, "quantity": 1}])], given_ids=True)
    capsys.readouterr()                                         # the workers' lines so far
    assert main(["place-order", "--product", "101", "--quantity", "1", "--order-id", "700",
                 "--redis-url", redis_url]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "choose another id" in err
    for k in ("reservation:settled:10", "payment:settled:10", "shipment:settled:10"):
        real_bus.client.delete(k)                               # their retention over too
    assert place_orders(real_bus, [OrderRequest("700", [{"product_id": 101, "quantity": 1}])],
                        given_ids=True) == ["700"]
    drain(workers)
    assert real_bus.client.hget(keys.order("700"), "status") == "COMPLETED"

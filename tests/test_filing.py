"""Settled records filed in buckets (bus.keys.filed, UnitOfWork.settle, commit.lua FILE): on a real
redis-server, what a settled reservation becomes, who still finds it, and the races the move must
not open."""

from __future__ import annotations

import json

import pytest

from redis.crc import key_slot

from choreo.bus import keys as bus_keys, layout
from choreo.bus.contract import Commit, Outcome
from choreo.bus.envelope import Envelope
from choreo.bus.ops import File, Publish, SetFields
from choreo.cli import main
from choreo.config.settings import Settings
from choreo.ops.audit import Snapshot, expiring_orphans, run_audit
from choreo.orders import OrderRequest, place_orders
from choreo.workers import SERVICES, keys
from choreo.workers.unit_of_work import BatchView, UnitOfWork
from tests.inprocess import drain, start_workers

RETENTION_S = 30


@pytest.fixture
def workers(real_bus):
    return start_workers(real_bus, Settings(retention_s=RETENTION_S, block_ms=50))


def run(bus, workers, orders: dict[str, tuple[int, int]]) -> None:
    place_orders(bus, [OrderRequest(oid, [{"product_id": p, "quantity": q}])
                       for oid, (p, q) in orders.items()])
    drain(workers)


def uow(bus) -> UnitOfWork:
    return UnitOfWork("inventory", (), BatchView(bus), retention_s=RETENTION_S,
                      record=keys.reservation)


def test_a_sold_reservation_moves_into_its_bucket_with_its_trace_and_every_reader_finds_it(
        real_bus, workers, redis_url, capsys):
    run(real_bus, workers, {"7": (101, 1), "70": (101, 1), "130": (103, 6)})    # 130: rejected
    c = real_bus.client
    assert c.hget(keys.order("7"), "status") == "COMPLETED"
    bucket = "reservation:settled:0"
    assert bus_keys.filed(keys.reservation("7")) == (bucket, "7")
    assert not c.exists(keys.reservation("7")) and not c.exists(keys.reservation("70"))
    sold = json.loads(c.hget(bucket, "7"))
    assert sold["status"] == "SOLD" and "lines" not in sold and "_v" not in sold
    (ref,) = [f for f in sold if " " in f]          # the InventoryChecked its service published
    assert ref.startswith(bus_keys.stream("InventoryChecked") + " ")
    assert 0 < c.pttl(bucket) <= RETENTION_S * 1000
    # A reservation whose own commit published (InventoryRejected) keeps its key and expiry.
    assert c.hget(keys.reservation("130"), "status") == "REJECTED"
    assert 0 < c.pttl(keys.reservation("130")) <= RETENTION_S * 1000
    # Readers: the bus, choreo status, choreo trace, the audit.
    assert real_bus.read_hashes([keys.reservation("7")])[0]["status"] == "SOLD"
    assert main(["status", "7", "--redis-url", redis_url]) == 0
    assert "reservation: status=SOLD" in capsys.readouterr().out
    assert main(["trace", "7", "--redis-url", redis_url]) == 0
    assert "InventoryChecked" in capsys.readouterr().out
    lines: list[str] = []
    assert run_audit(real_bus, SERVICES.values(), True, lines.append, lines.append, RETENTION_S) == 0, lines
    # Its order gone first (expired), the filed reservation is an orphan that expires with its
    # bucket, as one in its own key expires with it.
    snap = Snapshot(index=[], reservations={"7": sold, "130": {"status": "REJECTED"}})
    assert expiring_orphans(real_bus, snap) == {keys.reservation("7"), keys.reservation("130")}
    c.persist(bucket)
    assert expiring_orphans(real_bus, snap) == {keys.reservation("130")}
    # Read a moment ago and gone now, in its key or its bucket: expired meanwhile, not a leak.
    gone = Snapshot(index=[], reservations={"999": {"status": "SOLD"}}, payments={"o-5": {}})
    assert expiring_orphans(real_bus, gone) == {keys.reservation("999"), keys.payment("o-5")}


def test_a_late_order_created_finds_the_filed_reservation_and_takes_no_stock(real_bus, workers):
    run(real_bus, workers, {"8": (101, 2)})
    stock = real_bus.client.hgetall(keys.stock(101))
    again = Envelope.new("OrderCreated", "8", "order",
                         {"lines": [{"product_id": 101, "quantity": 2}], "total_cents": 3998})
    real_bus.commit("", [Commit(ops=[Publish(bus_keys.stream("OrderCreated"), again.fields())])])
    drain(workers)
    assert real_bus.client.hgetall(keys.stock(101)) == stock
    assert not real_bus.client.exists(keys.reservation("8"))


def test_a_commit_that_read_the_record_absent_is_refused_once_another_filed_it(real_bus):
    # A late OrderCreated's handler read nothing; meanwhile a compensation made and filed the
    # reservation in one commit (the key never existed): the reservation must not be made again.
    late = uow(real_bus)
    assert late.read(keys.reservation("9")) == {}
    assert late.checks["reservation:settled:0"] == "!9"
    first = uow(real_bus)
    first.read(keys.reservation("9"))
    first.set(keys.reservation("9"), status="RELEASED", reason="ShippingFailed before reservation")
    first.settle(keys.reservation("9"))
    assert real_bus.commit("", [first.to_commit()]) == [Outcome.APPLIED]
    assert not real_bus.client.exists(keys.reservation("9"))
    late.set(keys.reservation("9"), status="RESERVED", lines="[]")
    assert real_bus.commit("", [late.to_commit()]) == [Outcome.CONFLICT]
    assert not real_bus.client.exists(keys.reservation("9"))
    assert json.loads(real_bus.client.hget("reservation:settled:0", "9"))["status"] == "RELEASED"


def test_a_commit_that_read_the_record_in_its_key_is_refused_once_it_moved(real_bus):
    real_bus.client.hset(keys.reservation("10"), mapping={"status": "RESERVED", "lines": "[]", "_v": "1"})
    racer, settler = uow(real_bus), uow(real_bus)
    assert racer.read(keys.reservation("10"))["status"] == "RESERVED"
    settler.read(keys.reservation("10"))
    settler.set(keys.reservation("10"), status="SOLD")
    settler.drop(keys.reservation("10"), "lines")
    settler.settle(keys.reservation("10"))
    assert real_bus.commit("", [settler.to_commit()]) == [Outcome.APPLIED]
    racer.set(keys.reservation("10"), status="RELEASED")
    assert real_bus.commit("", [racer.to_commit()]) == [Outcome.CONFLICT]
    assert json.loads(real_bus.client.hget("reservation:settled:0", "10")) == {"status": "SOLD"}
    # Read again, it is the filed record: no version, and settling it again changes nothing.
    again = uow(real_bus)
    assert again.read(keys.reservation("10")) == {"status": "SOLD"}
    again.settle(keys.reservation("10"))
    assert not any(isinstance(op, File) for op in again.to_commit().ops)


def test_later_entries_of_a_batch_see_what_an_earlier_one_filed(real_bus):
    view = BatchView(real_bus)
    first = UnitOfWork("inventory", (), view, retention_s=RETENTION_S)
    first.read(keys.reservation("11"))
    first.set(keys.reservation("11"), status="RELEASED")
    first.settle(keys.reservation("11"))
    view.apply(first.commit_ops())
    second = UnitOfWork("inventory", (), view, retention_s=RETENTION_S)
    assert second.read(keys.reservation("11")) == {"status": "RELEASED"}
    assert keys.reservation("11") in first.to_commit().checks       # made once, not refiled
    assert any(isinstance(op, File) for op in first.to_commit().ops)


def test_an_unreadable_filed_value_is_a_record_that_exists_and_blocks_a_new_reservation(real_bus):
    real_bus.client.hset("reservation:settled:0", "12", "not json")
    assert real_bus.read_hashes([keys.reservation("12")]) == [{"unreadable": "not json"}]
    created = Envelope.new("OrderCreated", "12", "order",
                           {"lines": [{"product_id": 101, "quantity": 1}], "total_cents": 1999})
    handling = uow(real_bus)
    handling.cause = created
    SERVICES["inventory"].consumes["OrderCreated"].handle(created, handling)
    assert handling.ops == [] and handling.emitted == []        # decided already: nothing reserved


def test_a_file_into_a_key_of_another_type_is_refused_untouched(real_bus):
    real_bus.client.rpush("reservation:settled:0", "x")
    commit = Commit(ops=[SetFields("order:1", {"status": "X"}),
                         File("reservation:settled:0", "1", '{"status":"SOLD"}')])
    assert real_bus.commit("", [commit]) == [Outcome.REFUSED]
    assert "holds a list, not a hash" in commit.refusal
    assert not real_bus.client.exists("order:1")


def test_ids_of_other_kinds_or_shapes_file_nowhere():
    assert bus_keys.filed(keys.reservation("o-7")) is None          # not digits: kept in its key
    assert bus_keys.filed(keys.payment("7")) is None                # payment files nothing
    assert bus_keys.filed(keys.stock(101)) is None
    assert bus_keys.filed("reservation:settled:3") is None          # a bucket is no record
    assert bus_keys.filed(keys.reservation("200")) == ("reservation:settled:3", "200")


def test_a_bucket_shares_its_records_slot_and_holds_about_64_orders_per_partition():
    previous = layout.use(layout.Layout(partitions=4))
    try:
        for oid in ("5", "700", "123456"):
            bucket, field = bus_keys.filed(keys.reservation(oid))
            assert field == oid and bucket.startswith("reservation:{p")
            assert key_slot(bucket.encode()) == key_slot(keys.reservation(oid).encode())
        # 256 consecutive ids over four partitions: one bucket each, ~64 records in it
        buckets = {bus_keys.filed(keys.reservation(str(i)))[0] for i in range(256, 512)}
        assert len(buckets) == 4
    finally:
        layout.use(previous)

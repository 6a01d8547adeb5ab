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
from choreo.bus import filing
from choreo.bus.ops import Expire, File, Publish, SetFields
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
    n, status, ref = json.loads(c.hget(bucket, "7"))    # by position: status, its trace field
    assert n == 1
    assert status == "SOLD"                         # (no lines, no _v)
    sold = filing.unpack(keys.reservation("7"), c.hget(bucket, "7"))
    assert sold == {"status": "SOLD", ref: ""}      # the InventoryChecked its service published
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
    assert json.loads(real_bus.client.hget("reservation:settled:0", "9"))[:2] == [1, "RELEASED"]


def test_two_records_of_one_bucket_read_absent_are_both_checked(real_bus):
    both = uow(real_bus)
    both.read(keys.reservation("2"))
    both.read(keys.reservation("3"))
    assert both.checks["reservation:settled:0"] == "!2 3"
    real_bus.client.hset("reservation:settled:0", "3", '[1,"SOLD"]')
    both.set(keys.reservation("2"), status="RESERVED")
    assert real_bus.commit("", [both.to_commit()]) == [Outcome.CONFLICT]


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
    assert json.loads(real_bus.client.hget("reservation:settled:0", "10")) == [1, "SOLD"]
    # Read again, it is the filed record: no version, and settling it again changes nothing.
    again = uow(real_bus)
    assert again.read(keys.reservation("10")) == {"status": "SOLD"}
    again.settle(keys.reservation("10"))
    assert not any(isinstance(op, File) for op in again.to_commit().ops)


def test_a_write_to_a_filed_record_raises_whether_or_not_it_was_read(real_bus):
    settler = uow(real_bus)
    settler.read(keys.reservation("40"))
    settler.set(keys.reservation("40"), status="RELEASED")
    settler.settle(keys.reservation("40"))
    assert real_bus.commit("", [settler.to_commit()]) == [Outcome.APPLIED]
    for write in (lambda u: u.set(keys.reservation("40"), status="RESERVED"),
                  lambda u: u.drop(keys.reservation("40"), "status"),
                  lambda u: u.add(keys.reservation("40"), "n", 1)):
        with pytest.raises(ValueError, match="settled and filed"):
            write(uow(real_bus))                     # not read first: looked up all the same
        reader = uow(real_bus)
        reader.read(keys.reservation("40"))
        with pytest.raises(ValueError, match="settled and filed"):
            write(reader)
    blind = uow(real_bus)
    blind.set(keys.reservation("41"), status="RESERVED")     # neither key nor filed: a new one
    assert real_bus.commit("", [blind.to_commit()]) == [Outcome.APPLIED]


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
    assert bus_keys.filed(keys.order("7")) is None                  # the order files nothing
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


def test_a_completed_order_keeps_one_key_its_services_records_filed_by_position(
        real_bus, workers, redis_url, capsys):
    run(real_bus, workers, {"20": (101, 1)})
    c = real_bus.client
    assert [k for k in c.scan_iter() if k.endswith(":20")] == [keys.order("20")]
    raw = {kind: json.loads(c.hget(f"{kind}:settled:0", "20"))
           for kind in ("reservation", "payment", "shipment")}
    assert raw["reservation"][:2] == [1, "SOLD"]
    _, status, amount, charged_at, ref = raw["payment"]
    assert (status, amount) == ("CHARGED", "1999") and int(charged_at) > 0
    assert ref.startswith(bus_keys.stream("PaymentProcessed") + " ")
    _, status, tracking, booked_at, ref = raw["shipment"]
    assert status == "BOOKED" and tracking == c.hget(keys.order("20"), "tracking_id")
    payment, shipment = real_bus.read_hashes([keys.payment("20"), keys.shipment("20")])
    assert payment == {"status": "CHARGED", "amount_cents": "1999", "charged_at_ms": charged_at, ref_of(raw["payment"]): ""}
    assert shipment["status"] == "BOOKED" and shipment["booked_at_ms"] == booked_at
    assert main(["status", "20", "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "payment: status=CHARGED amount_cents=1999" in out and f"tracking_id={tracking}" in out
    assert main(["trace", "20", "--json", "--redis-url", redis_url]) == 0
    types = [e["type"] for e in json.loads(capsys.readouterr().out)["events"]]
    assert types == ["OrderCreated", "InventoryChecked", "PaymentProcessed", "ShippingArranged"]


def ref_of(items: list) -> str:
    return items[-1]


def test_a_refund_asked_of_a_filed_charge_is_dead_lettered_and_moves_no_money(real_bus, workers):
    run(real_bus, workers, {"21": (101, 1)})
    totals = real_bus.client.hgetall(keys.payment_totals())
    # A ShippingFailed replayed after the booking: nothing may refund a charge filed as final.
    late = Envelope.new("ShippingFailed", "21", "shipping", {"reason": "replayed"})
    real_bus.commit("", [Commit(ops=[Publish(bus_keys.stream("ShippingFailed"), late.fields())])])
    settings = Settings(retention_s=RETENTION_S, block_ms=50, max_deliveries=1)
    drain(start_workers(real_bus, settings, names=("payment",)))
    assert real_bus.client.hgetall(keys.payment_totals()) == totals
    (letter,) = real_bus.client.xrange(bus_keys.dead_letters("payment"))
    assert "settled and filed" in letter[1]["error"]
    assert real_bus.read_hashes([keys.payment("21")])[0]["status"] == "CHARGED"
    assert not real_bus.client.exists(keys.payment("21"))


def test_a_late_deadline_finds_the_filed_booking_and_cancels_nothing(real_bus, workers):
    run(real_bus, workers, {"22": (101, 1)})
    late = Envelope.new("DeadlinePassed", "22", "order", {})
    real_bus.commit("", [Commit(ops=[Publish(bus_keys.stream("DeadlinePassed"), late.fields())])])
    drain(workers)
    assert real_bus.read_hashes([keys.shipment("22")])[0]["status"] == "BOOKED"
    assert real_bus.client.xlen(bus_keys.stream("ShippingFailed")) == 0
    assert real_bus.client.hget(keys.order("22"), "status") == "COMPLETED"


def test_pack_keeps_values_by_position_and_unpack_gives_the_record_back():
    import choreo.workers  # noqa: F401  (declares the filed kinds)
    record = {"status": "BOOKED", "tracking_id": "TRK-1", "booked_at_ms": "17",
              "events:ShippingArranged 1-0": "", "reason": "odd \"one\""}
    packed = filing.pack("shipment:5", record)
    assert json.loads(packed) == [3, "BOOKED", "TRK-1", "17", "events:ShippingArranged 1-0",
                                  {"reason": 'odd "one"'}]
    assert filing.unpack("shipment:5", packed) == record
    assert filing.unpack("shipment:5", filing.pack("shipment:5", {"status": "FAILED"})) == {"status": "FAILED"}
    assert json.loads(filing.pack("shipment:5", {"status": "FAILED"})) == [3, "FAILED", None, None]
    # Filed when the kind had fewer fields: read by its own count, the rest after it as before.
    assert filing.unpack("shipment:5", '[2, "BOOKED", "TRK-1", "events:ShippingArranged 1-0"]') == \
        {"status": "BOOKED", "tracking_id": "TRK-1", "events:ShippingArranged 1-0": ""}
    assert filing.unpack("shipment:5", None) == {}
    for bad in ("not json", "{}", "[]", "[null]", "[0]", "[1, null]", '["A", "B"]', "[true, \"A\"]",
                '[4, "A", "B", "C", "D"]', '[3, "A", "B"]', "[1, 2, 3]", '[1, "A", 7]', '[0, {"a": 1}]'):
        assert filing.unpack("shipment:5", bad) == {"unreadable": bad}, bad


def test_a_record_traced_by_an_earlier_entry_of_the_batch_is_kept_in_its_key_with_its_trace(real_bus):
    # One batch: OrderCreated 30 reserves (InventoryChecked traced in reservation:30), then a
    # ShippingFailed 30 (a deadline) releases it. Filing it from the view would lose the trace
    # field the first commit makes; it stays in its key, with it.
    inventory = SERVICES["inventory"]
    inventory.on_start(real_bus)                    # the catalogue's stock
    view = BatchView(real_bus)
    handled = []
    for event in (Envelope.new("OrderCreated", "30", "order",
                               {"lines": [{"product_id": 101, "quantity": 1}], "total_cents": 1999}),
                  Envelope.new("ShippingFailed", "30", "shipping", {"reason": "deadline"})):
        u = UnitOfWork("inventory", inventory.emits, view, cause=event, retention_s=RETENTION_S,
                       record=keys.reservation)
        inventory.consumes[event.type].handle(event, u)
        view.apply(u.commit_ops())
        handled.append(u.to_commit())
    assert not any(isinstance(op, File) for op in handled[1].ops)
    assert real_bus.commit("", handled) == [Outcome.APPLIED, Outcome.APPLIED]
    c = real_bus.client
    assert c.hget(keys.reservation("30"), "status") == "RELEASED"
    assert any(f.startswith(bus_keys.stream("InventoryChecked") + " ") for f in c.hkeys(keys.reservation("30")))
    assert 0 < c.pttl(keys.reservation("30")) <= RETENTION_S * 1000


def test_an_expiry_set_twice_in_a_call_is_asked_once_and_a_key_made_after_one_still_gets_it(real_bus):
    # (Real Redis only: fakeredis deletes a key expired inside a script only after it.)
    any_bus = real_bus
    c = real_bus.client
    c.config_resetstat()
    commits = [Commit(ops=[Expire("made:1", 100), SetFields("made:1", {"a": "1"}), Expire("made:1", 100)]),
               Commit(ops=[File("bucket:0", "1", '["x"]'), Expire("bucket:0", 100),
                           File("bucket:0", "2", '["y"]'), Expire("bucket:0", 100),
                           Expire("bucket:0", 0), File("bucket:0", "3", '["z"]'), Expire("bucket:0", 100)])]
    assert any_bus.commit("", commits) == [Outcome.APPLIED, Outcome.APPLIED]
    assert 0 < c.ttl("made:1") <= 100
    assert c.hgetall("bucket:0") == {"3": '["z"]'} and 0 < c.ttl("bucket:0") <= 100
    # Asked of Redis: made:1's twice (the first found no key), the bucket's twice (once more
    # after it was deleted), and the delete: the second expiry of the same bucket was skipped.
    assert c.info("commandstats")["cmdstat_expire"]["calls"] == 5

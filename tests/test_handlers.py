"""Unit tests of the services' business logic: handlers called directly, no Redis at all."""

from __future__ import annotations

import json

import pytest

from choreo.bus.envelope import Envelope
from choreo.bus import keys as bus_keys
from choreo.bus.ops import AddTo, Count, DropFields, Publish, SetFields
from choreo.config.catalogue import CATALOGUE, RULES
from choreo.workers import SERVICES, keys, order
from choreo.workers.unit_of_work import BatchView, UndeclaredEvent, UnitOfWork


class DictBus:
    """Just enough of the bus for a BatchView: hashes from a dict."""

    def __init__(self, hashes=None):
        self.hashes = hashes or {}

    def read_hashes(self, keys_):
        return [dict(self.hashes.get(k, {})) for k in keys_]


def handle(service, event, hashes=None):
    uow = UnitOfWork(service.name, service.emits, BatchView(DictBus(hashes)), cause=event,
                     clock=lambda: 1_700_000_000.0, creates=service.creates)
    service.consumes[event.type].handle(event, uow)
    return uow


def writes(uow, op=SetFields):
    return [o for o in uow.ops if isinstance(o, op)]


def created(order_id="1", product=101, qty=2):
    total = CATALOGUE[product].price_cents * qty
    return Envelope.new("OrderCreated", order_id, "order",
                        {"lines": [{"product_id": product, "quantity": qty}], "total_cents": total})


def test_reserve_stock_moves_available_to_reserved_and_emits_checked():
    uow = handle(SERVICES["inventory"], created(qty=2), {"stock:101": {"available": "10", "_v": "3"}})
    assert [e.type for e in uow.emitted] == ["InventoryChecked"]
    assert AddTo("stock:101", "available", -2) in uow.ops
    assert AddTo("stock:101", "reserved", 2) in uow.ops
    assert uow.checks["stock:101"] == "3"           # the commit is guarded by the version read
    assert uow.emitted[0].causation_id == uow.cause.id


def test_reserve_stock_rejects_when_short_and_changes_no_stock():
    uow = handle(SERVICES["inventory"], created(qty=5), {"stock:101": {"available": "4"}})
    assert [e.type for e in uow.emitted] == ["InventoryRejected"]
    assert not writes(uow, AddTo)
    assert "101" in uow.emitted[0].data["reason"]


def test_reserve_stock_twice_for_same_order_does_nothing_the_second_time():
    uow = handle(SERVICES["inventory"], created(), {"reservation:1": {"status": "RESERVED"}})
    assert uow.ops == [] and uow.emitted == []


def test_release_returns_reserved_stock_and_is_a_no_op_when_repeated():
    lines = json.dumps([{"product_id": 101, "quantity": 2}])
    failed = Envelope.new("PaymentFailed", "1", "payment", {"reason": "declined"})
    uow = handle(SERVICES["inventory"], failed, {"reservation:1": {"status": "RESERVED", "lines": lines}})
    assert AddTo("stock:101", "available", 2) in uow.ops
    assert AddTo("stock:101", "reserved", -2) in uow.ops
    assert DropFields("reservation:1", ("lines",)) in uow.ops
    again = handle(SERVICES["inventory"], failed, {"reservation:1": {"status": "RELEASED", "lines": lines}})
    assert again.ops == []


def test_compensation_before_reservation_blocks_a_late_reservation():
    failed = Envelope.new("ShippingFailed", "1", "shipping", {})
    uow = handle(SERVICES["inventory"], failed, {})
    assert (writes(uow)[0].key, writes(uow)[0].fields["status"]) == ("reservation:1", "RELEASED")


def test_shipping_arranged_turns_reservation_into_sale():
    lines = json.dumps([{"product_id": 101, "quantity": 2}])
    arranged = Envelope.new("ShippingArranged", "1", "shipping", {"tracking_id": "T"})
    uow = handle(SERVICES["inventory"], arranged, {"reservation:1": {"status": "RESERVED", "lines": lines}})
    assert AddTo("stock:101", "sold", 2) in uow.ops
    assert AddTo("stock:101", "reserved", -2) in uow.ops
    # Settled, the reservation sheds its lines: only a RESERVED one's lines move stock.
    assert DropFields("reservation:1", ("lines",)) in uow.ops


def test_payment_charges_total_in_cents_and_counts_it():
    checked = Envelope.new("InventoryChecked", "1", "inventory",
                           {"lines": [{"product_id": 101, "quantity": 2}], "total_cents": 3998})
    uow = handle(SERVICES["payment"], checked)
    assert [e.type for e in uow.emitted] == ["PaymentProcessed"]
    assert Count(keys.payment_totals(), "charged_cents", 3998) in uow.ops


def test_payment_over_card_limit_is_declined_as_an_event_not_an_exception():
    checked = Envelope.new("InventoryChecked", "1", "inventory",
                           {"lines": [], "total_cents": RULES.card_limit_cents + 1})
    uow = handle(SERVICES["payment"], checked)
    assert [e.type for e in uow.emitted] == ["PaymentFailed"]
    assert not writes(uow, Count)


def test_refund_only_a_charged_payment():
    failed = Envelope.new("ShippingFailed", "1", "shipping", {"reason": "too big"})
    uow = handle(SERVICES["payment"], failed, {"payment:1": {"status": "CHARGED", "amount_cents": "500"}})
    assert Count(keys.payment_totals(), "refunded_cents", 500) in uow.ops
    assert handle(SERVICES["payment"], failed, {"payment:1": {"status": "REFUNDED"}}).ops == []


def test_shipping_books_with_a_tracking_id_derived_from_the_event():
    paid = Envelope.new("PaymentProcessed", "1", "payment", {"lines": [{"product_id": 101, "quantity": 2}]})
    a, b = handle(SERVICES["shipping"], paid), handle(SERVICES["shipping"], paid)
    assert a.emitted[0].type == "ShippingArranged"
    assert a.emitted[0].data["tracking_id"] == b.emitted[0].data["tracking_id"]


def test_shipping_fails_for_an_oversized_parcel():
    paid = Envelope.new("PaymentProcessed", "1", "payment",
                        {"lines": [{"product_id": 101, "quantity": RULES.parcel_max_items + 1}]})
    assert handle(SERVICES["shipping"], paid).emitted[0].type == "ShippingFailed"


@pytest.mark.parametrize("event_type,status", [("ShippingArranged", "COMPLETED"),
                                               ("InventoryRejected", "REJECTED"),
                                               ("PaymentFailed", "CANCELLED"),
                                               ("ShippingFailed", "CANCELLED")])
def test_order_ends_in_one_terminal_state_and_stays_there(event_type, status):
    event = Envelope.new(event_type, "1", "x", {})
    uow = handle(SERVICES["order"], event, {"order:1": {"status": "PENDING"}})
    assert Count(keys.orders_by_status(), status, 1) in uow.ops
    late = handle(SERVICES["order"], event, {"order:1": {"status": "COMPLETED" if status != "COMPLETED" else "CANCELLED"}})
    assert late.ops == []


def test_create_order_refuses_an_existing_id_and_unknown_products():
    svc = SERVICES["order"]
    uow = UnitOfWork("order", svc.creates, BatchView(DictBus({"order:7": {"status": "PENDING"}})))
    with pytest.raises(order.OrderRejected):
        order.create_order(uow, "7", [{"product_id": 101, "quantity": 1}])
    uow = UnitOfWork("order", svc.creates, BatchView(DictBus()))
    with pytest.raises(order.OrderRejected):
        order.create_order(uow, "8", [{"product_id": 999, "quantity": 1}])


def test_emitting_an_undeclared_event_is_refused():
    uow = UnitOfWork("payment", SERVICES["payment"].emits, BatchView(DictBus()), cause=created())
    with pytest.raises(UndeclaredEvent):
        uow.emit("ShippingArranged")


def test_a_handler_emits_for_its_causes_instance_and_only_a_handler_arms_timers():
    """Another order_id given in a handler was once replaced by the cause's without a word: the
    event went to the wrong instance. Refused now; so are timers armed or disarmed by a command
    (no instance in hand), which failed with an AttributeError."""
    from choreo.workers.unit_of_work import InvalidEvent
    uow = UnitOfWork("payment", SERVICES["payment"].emits, BatchView(DictBus()), cause=created("5"))
    for given in ({"order_id": "999"}, {"order_id": "not a valid id!"}, {"causation_id": "x"}):
        with pytest.raises(InvalidEvent, match="a handler emits for the instance of the event it handles"):
            uow.emit("PaymentFailed", reason="r", **given)
    assert uow.emit("PaymentFailed", order_id="5", reason="r").order_id == "5"   # its own: fine
    assert uow.emit("PaymentFailed", reason="r").order_id == "5"
    svc = SERVICES["order"]
    command = UnitOfWork("order", svc.emits, BatchView(DictBus()), creates=svc.creates)
    with pytest.raises(InvalidEvent, match="a command \\(no cause\\) cannot arm one"):
        command.publish_later("DeadlinePassed", 10 ** 12)
    with pytest.raises(InvalidEvent, match="a command \\(no cause\\) cannot"):
        command.disarm("DeadlinePassed")


def test_batch_view_sees_earlier_writes_with_bumped_versions():
    view = BatchView(DictBus({"stock:101": {"available": "5", "_v": "2"}}))
    view.get("stock:101")
    view.apply([AddTo("stock:101", "available", -3), SetFields("stock:101", {"x": "y"})])
    assert view.get("stock:101") == {"available": "2", "x": "y", "_v": "3"}    # one bump a commit
    view.apply([DropFields("stock:101", ("x", "absent"))])
    assert view.get("stock:101") == {"available": "2", "_v": "4"}


def test_every_consumed_stream_has_a_producer_that_declares_it():
    emitted = {t for s in SERVICES.values() for t in (*s.emits, *s.creates)}
    consumed = {t for s in SERVICES.values() for t in s.consumes}
    assert consumed == emitted


def test_a_counter_on_a_hash_the_handler_read_is_refused_as_it_would_race_unseen():
    """count() writes no version: on a hash a handler read, a racing commit that read the old
    value would pass its check. add() is the versioned one."""
    from choreo.workers.unit_of_work import UncheckedCounter
    uow = UnitOfWork("inventory", (), BatchView(DictBus({"stock:101": {"available": "5"}})))
    uow.read("stock:101")
    with pytest.raises(UncheckedCounter):
        uow.count("stock:101", "available", -1)
    uow.add("stock:101", "available", -1)
    uow.count("orders:by_status", "PENDING", 1)
    assert uow.ops == [AddTo("stock:101", "available", -1), Count("orders:by_status", "PENDING", 1)]


@pytest.mark.parametrize("record, disarmed", [
    ({"status": "PENDING", "_v": "1", "deadline_at_ms": "1700000300000"}, ["DeadlinePassed-1"]),
    ({"status": "PENDING", "_v": "1"}, []),
])
def test_an_order_ends_disarming_a_deadline_only_when_it_was_placed_with_one(record, disarmed):
    """Without a deadline there is no timer: asking rq anyway cost commands, and on a cluster
    with deadlines off (no CHOREO_TIMERS_URL) it failed and held the order service back."""
    arranged = Envelope.new("ShippingArranged", "1", "shipping", {"tracking_id": "TRK-1"})
    uow = handle(SERVICES["order"], arranged, {keys.order("1"): record})
    assert uow.disarmed == disarmed
    assert any(isinstance(o, SetFields) and o.fields.get("status") == "COMPLETED" for o in uow.ops)


def test_an_order_placed_with_a_deadline_records_it():
    uow = UnitOfWork("order", SERVICES["order"].creates, BatchView(DictBus()), clock=lambda: 1_700_000_000.0)
    order.create_order(uow, "1", [{"product_id": 101, "quantity": 1}], deadline_s=300)
    (record,) = [o for o in uow.ops if isinstance(o, SetFields) and o.key == keys.order("1")]
    assert int(record.fields["deadline_at_ms"]) == 1_700_000_300_000


def test_drop_names_the_fields_it_removes_and_never_the_version():
    uow = handle(SERVICES["inventory"], created(), {"stock:101": {"available": "10"}})
    for bad in ((), ("lines", "_v")):
        with pytest.raises(ValueError, match="never the version _v"):
            uow.drop("reservation:1", *bad)


def traced_in(uow) -> list[str]:
    """Where each publish of the unit's commit lists its event: the trace field's key."""
    return [op.trace for op in uow.to_commit().ops if isinstance(op, Publish)]


def test_a_publish_is_listed_in_the_record_its_commit_writes_not_in_a_trace_key():
    inventory = SERVICES["inventory"]
    uow = UnitOfWork(inventory.name, inventory.emits, BatchView(DictBus({"stock:101": {"available": "10"}})),
                     cause=created(), clock=lambda: 1_700_000_000.0, record=inventory.record)
    inventory.consumes["OrderCreated"].handle(uow.cause, uow)
    assert keys.reservation("1") in {o.key for o in writes(uow)}
    assert traced_in(uow) == [keys.reservation("1")]
    assert [o.trace for o in uow.ops if isinstance(o, Publish)] == [bus_keys.trace("1")]  # ops kept


def test_a_publish_whose_commit_writes_no_record_goes_to_the_trace_key():
    # A record this commit does not write may not exist: a trace field would make it, with no
    # expiry and no version. (And a unit without a record, as the timers', always uses trace:<id>.)
    inventory = SERVICES["inventory"]
    for record in (inventory.record, None):
        uow = UnitOfWork(inventory.name, inventory.emits, BatchView(DictBus()), cause=created(),
                         record=record)
        uow.emit("InventoryRejected", reason="test")
        uow.set(keys.reservation("2"), status="REJECTED")       # another order's record
        assert traced_in(uow) == [bus_keys.trace("1")]


def test_reads_leave_out_trace_fields_and_writes_refuse_them_and_the_version():
    ref = "events:InventoryChecked 1700000000000-0"
    uow = UnitOfWork("inventory", (), BatchView(DictBus({"reservation:1": {"status": "SOLD", ref: "",
                                                                         "_v": "2"}})))
    assert uow.read("reservation:1") == {"status": "SOLD"}
    for write in (lambda: uow.set("reservation:1", **{ref: ""}), lambda: uow.set("h", _v=9),
                  lambda: uow.add("h", "_v", 1), lambda: uow.count("t", "a b", 1),
                  lambda: uow.drop("reservation:1", ref)):
        with pytest.raises(ValueError, match="may not write"):
            write()
    assert not uow.ops


def test_a_timer_rq_cannot_name_is_this_entrys_failure_not_the_batchs():
    """An instance id with '.' (the envelope allows it; rq's job ids do not) made rq refuse the
    arming for the whole batch, as if Redis were away. publish_later refuses it, a failure of
    the entry in hand, retried and then dead-lettered with the reason."""
    import pytest
    from choreo.bus.envelope import Envelope
    from choreo.workers.unit_of_work import BatchView, InvalidEvent, UnitOfWork
    cause = Envelope.new("OrderCreated", "a.b", "order", {"lines": [], "total_cents": 1})
    uow = UnitOfWork("order", (), BatchView(None), cause=cause, creates=("DeadlinePassed",))
    with pytest.raises(InvalidEvent, match="rq's job ids are letters, digits"):
        uow.publish_later("DeadlinePassed", 1)
    assert uow.timers == []

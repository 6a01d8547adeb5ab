"""Order service: creates orders and ends each in exactly one terminal state."""

from __future__ import annotations


from choreo.bus import keys as bus_keys
from choreo.bus.envelope import encode_data
from choreo.config.catalogue import CATALOGUE
from choreo.workers import deadlines, keys
from choreo.workers.events import MAX_QUANTITY, valid_lines
from choreo.workers.service import On, Service
from choreo.scheduling.timers import JOB_ID
from choreo.workers.unit_of_work import UnitOfWork, timer_id

PENDING, COMPLETED, REJECTED, CANCELLED = "PENDING", "COMPLETED", "REJECTED", "CANCELLED"
TERMINAL = (COMPLETED, REJECTED, CANCELLED)


class OrderRejected(ValueError):
    """The order cannot be placed as asked (unknown product, bad quantity, id taken)."""


def create_order(uow: UnitOfWork, order_id: str, lines: list[dict], deadline_s: float = 0) -> None:
    """Command: write the order and publish OrderCreated, atomically (see choreo.commands)."""
    if uow.read(keys.order(order_id)):
        raise OrderRejected(f"order {order_id} already exists")
    if not valid_lines(lines):
        raise OrderRejected(f"order lines must be 1-100 of product id and quantity 1..{MAX_QUANTITY}")
    for line in lines:
        if line["product_id"] not in CATALOGUE:
            raise OrderRejected(f"unknown product {line['product_id']}")
    if deadline_s and not JOB_ID.fullmatch(timer_id("DeadlinePassed", order_id)):
        raise OrderRejected(f"order id {order_id!r} cannot name its deadline's timer: rq's job ids "
                            f"are letters, digits, '_' and '-'")
    total = sum(CATALOGUE[l["product_id"]].price_cents * l["quantity"] for l in lines)
    now = uow.now_ms()
    deadline = {"deadline_at_ms": now + int(deadline_s * 1000)} if deadline_s else {}
    # The record says whether a deadline was armed: only then has its end a timer to disarm.
    uow.set(keys.order(order_id), id=order_id, status=PENDING, lines=encode_data(lines),
            total_cents=total, created_at_ms=now, **deadline)
    uow.count(keys.of_order(keys.orders_by_status, order_id), PENDING, 1)
    uow.index(keys.of_order(keys.orders_index, order_id), now, order_id)
    uow.emit("OrderCreated", order_id=order_id, lines=lines, total_cents=total, **deadline)


def arm_deadline(event, uow: UnitOfWork) -> None:
    """Confirming OrderCreated: the order is durable; start its clock (see workers.deadlines)."""
    if event.data.get("deadline_at_ms") is not None:     # null, as the model allows: none
        uow.publish_later("DeadlinePassed", event.data["deadline_at_ms"], job=deadlines.JOB)


def _finish(status: str):
    def finish(event, uow: UnitOfWork) -> None:
        order = uow.read(keys.order(event.order_id))
        if order.get("status") != PENDING:
            # already terminal (or unknown): a late or repeated event changes nothing
            uow.say(f"Order {event.order_id} is {order.get('status') or 'unknown'}: "
                    f"{event.type} changes nothing")
            return
        # Its history is the record's own fields: created_at_ms (PENDING, by OrderCreated) and
        # ended_at_ms with ended_by, the event that ended it (choreo status shows both lines).
        uow.set(keys.order(event.order_id), status=status, ended_at_ms=uow.now_ms(),
                ended_by=event.type, reason=event.data.get("reason", ""), **_outcome(event))
        uow.count(keys.of_order(keys.orders_by_status, event.order_id), PENDING, -1)
        uow.count(keys.of_order(keys.orders_by_status, event.order_id), status, 1)
        if status == COMPLETED:
            # What the money check compares with once completed orders have expired.
            uow.count(keys.of_order(keys.orders_totals, event.order_id), "completed_cents",
                      int(order.get("total_cents", 0)))
        _expire_record(uow, event.order_id)
        if order.get("deadline_at_ms"):
            # Only an order placed with a deadline has a timer: with none, asking rq anyway would
            # cost two commands per batch, and on a cluster without CHOREO_TIMERS_URL (deadlines
            # off) it would fail and hold the order service back. (Records of earlier versions
            # say nothing: their timer, if any, fires and finds the order ended.)
            uow.disarm("DeadlinePassed")
    finish.__name__ = f"mark_{status.lower()}"
    finish.ends = status        # read by ending_events(): which consumed events end an order
    return finish


def _outcome(event) -> dict:
    """What the order's record keeps of the other services' parts (their keys expire too)."""
    return {"tracking_id": event.data["tracking_id"]} if "tracking_id" in event.data else {}


def _expire_record(uow: UnitOfWork, order_id: str) -> None:
    """The order has ended: its record and trace go after the retention window. A late event
    finds the order terminal (or gone) and changes nothing; the index is pruned by the trimmer
    (bus.trim.prune_index) once the hash has gone."""
    for key in (keys.order(order_id), bus_keys.trace(order_id)):
        uow.expire(key)


def _order(event) -> list[str]:
    return [keys.order(event.order_id)]


SERVICE = Service(
    name="order",
    voice="OrderService",
    consumes={
        "OrderCreated": On(arm_deadline, "Order {order_id} created"),
        "InventoryRejected": On(_finish(REJECTED), "Order {order_id} rejected: out of stock", _order),
        "PaymentFailed": On(_finish(CANCELLED), "Order {order_id} cancelled: payment failed", _order),
        "ShippingFailed": On(_finish(CANCELLED), "Order {order_id} cancelled: shipping failed", _order),
        "ShippingArranged": On(_finish(COMPLETED), "Order {order_id} completed", _order),
    },
    emits=(),                               # its handlers only end orders
    owns=keys.OWNED["order"],
    record=keys.order,
    # Published by a command (place-order) and by a timer (the deadline), not by a handler.
    creates={"OrderCreated": "Creating order {order_id}",
             "DeadlinePassed": "Deadline passed for order {order_id}"},
)


def ending_events(service: Service = SERVICE) -> dict[str, str]:
    """Each event type whose handling ends an order, with the status it ends it in, read from the
    declaration above: `choreo load` learns outcomes from these streams (see choreo.measure.load)."""
    return {t: on.handle.ends for t, on in service.consumes.items() if hasattr(on.handle, "ends")}

"""Shipping service: books a shipment once the order is paid. Booking is the point of no return."""

from __future__ import annotations

from choreo.config.catalogue import RULES
from choreo.workers import keys
from choreo.workers.deadlines import passed, remaining_s
from choreo.workers.service import On, Service
from choreo.workers.unit_of_work import UnitOfWork

BOOKED, FAILED, CANCELLED = "BOOKED", "FAILED", "CANCELLED"


def book_shipment(event, uow: UnitOfWork) -> None:
    ship_key = keys.shipment(event.order_id)
    shipment = uow.read(ship_key)
    if shipment:
        uow.say(f"Shipment of order {event.order_id} is {shipment.get('status')}: nothing to arrange")
        return
    if passed(event, uow):
        # The point of no return is decided by the clock, not by which stream was read first:
        # DeadlinePassed may still be on its way.
        uow.say(f"Not shipping order {event.order_id}: its deadline passed")
        cancel(uow, event.order_id)
        return
    items = sum(l["quantity"] for l in event.data["lines"])
    if items > RULES.parcel_max_items:
        reason = f"{items} items do not fit one parcel (max {RULES.parcel_max_items})"
        uow.say(f"Cannot ship order {event.order_id}: {reason}")
        uow.set(ship_key, status=FAILED, reason=reason)
        uow.expire(ship_key)
        uow.emit("ShippingFailed", reason=reason)
        return
    # Derived from the event, so re-handling after a commit conflict books the same shipment.
    tracking_id = "TRK-" + event.id[:12].upper()
    uow.set(ship_key, status=BOOKED, tracking_id=tracking_id, booked_at_ms=uow.now_ms())
    # A DeadlinePassed published just before the order completed may still arrive: it must find
    # the shipment BOOKED, so the window counts from the deadline.
    uow.expire(ship_key, after_s=remaining_s(event, uow))
    uow.emit("ShippingArranged", tracking_id=tracking_id)


def file_booking(event, uow: UnitOfWork) -> None:
    """Confirming ShippingArranged: the booking is durable and its event traced in the shipment,
    and a BOOKED shipment never changes again: file it (Service.files). Its bucket lives the
    retention from now: a DeadlinePassed can only come later than that if the order service
    stayed down longer than the retention, which the retention must outlast (docs/keys.md)."""
    ship_key = keys.shipment(event.order_id)
    if uow.read(ship_key).get("status") == BOOKED:
        uow.settle(ship_key)


def _shipment(event) -> list[str]:
    return [keys.shipment(event.order_id)]


def cancel_unless_booked(event, uow: UnitOfWork) -> None:
    """The deadline passed. Booked: too late to cancel, the order completes. Not yet booked: never
    book it, and say so with ShippingFailed, which every earlier step compensates."""
    shipment = uow.read(keys.shipment(event.order_id))
    if shipment:
        uow.say(f"Shipment of order {event.order_id} is {shipment.get('status')}: the deadline "
                f"changes nothing")
        return
    cancel(uow, event.order_id)


def cancel(uow: UnitOfWork, order_id: str) -> None:
    reason = "deadline passed before shipping"
    uow.set(keys.shipment(order_id), status=CANCELLED, reason=reason)
    uow.expire(keys.shipment(order_id))     # a late PaymentProcessed must find it within the window
    uow.emit("ShippingFailed", reason=reason)


SERVICE = Service(
    name="shipping",
    voice="ShippingService",
    consumes={
        "PaymentProcessed": On(book_shipment, "Arranging shipping for order {order_id}", _shipment),
        "ShippingArranged": On(file_booking, "Shipping arranged for order {order_id}", _shipment),
        "DeadlinePassed": On(cancel_unless_booked, "Cancelling shipping for order {order_id}",
                             _shipment),
    },
    emits=("ShippingArranged", "ShippingFailed"),
    owns=keys.OWNED["shipping"],
    record=keys.shipment,
    files=True,
    filed_fields=("status", "tracking_id", "booked_at_ms"),
)

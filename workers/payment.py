"""Payment service: charges the order total, refunds it if shipping fails."""

from __future__ import annotations

from choreo.config.catalogue import RULES
from choreo.workers import keys
from choreo.workers.deadlines import carried, passed, remaining_s
from choreo.workers.service import On, Service, confirm
from choreo.workers.unit_of_work import UnitOfWork

CHARGED, DECLINED, REFUNDED, CANCELLED = "CHARGED", "DECLINED", "REFUNDED", "CANCELLED"


def charge(event, uow: UnitOfWork) -> None:
    pay_key = keys.payment(event.order_id)
    pay = uow.read(pay_key)
    if pay:
        uow.say(f"Payment of order {event.order_id} is {pay.get('status')}: nothing to charge")
        return
    amount = int(event.data["total_cents"])
    if passed(event, uow):
        # Too late to take money for it, whether or not DeadlinePassed has reached us yet.
        uow.say(f"Not charging order {event.order_id}: its deadline passed")
        reason = "deadline passed before payment"
        uow.set(pay_key, status=CANCELLED, amount_cents=amount, reason=reason)
        uow.expire(pay_key)
        uow.emit("PaymentFailed", reason=reason)
        return
    if amount > RULES.card_limit_cents:
        reason = f"card declined: {amount} cents is over the {RULES.card_limit_cents}-cent limit"
        uow.set(pay_key, status=DECLINED, amount_cents=amount, reason=reason)
        uow.expire(pay_key)
        uow.emit("PaymentFailed", reason=reason)
        return
    uow.set(pay_key, status=CHARGED, amount_cents=amount, charged_at_ms=uow.now_ms())
    uow.count(keys.of_order(keys.payment_totals, event.order_id), "charged_cents", amount)
    # Payment never hears that the order completed, so CHARGED is kept as long as a refund can
    # still be asked for: ShippingFailed comes from the booking (now) or at the deadline at the
    # latest, so the retention window counts from the deadline. A refund re-arms it from then.
    uow.expire(pay_key, after_s=remaining_s(event, uow))
    uow.emit("PaymentProcessed", amount_cents=amount, lines=event.data["lines"], **carried(event))


def refund(event, uow: UnitOfWork) -> None:
    pay_key = keys.payment(event.order_id)
    pay = uow.read(pay_key)
    if not pay:
        # Shipping failed (a deadline) before this service charged: never charge this order.
        uow.set(pay_key, status=CANCELLED, reason=event.data.get("reason", event.type))
        uow.settle(pay_key)     # kept the retention window: a late InventoryChecked must find it
        return
    if pay["status"] != CHARGED:
        uow.say(f"Payment of order {event.order_id} is {pay['status']}: nothing to refund")
        return
    uow.set(pay_key, status=REFUNDED, reason=event.data.get("reason", event.type))
    uow.count(keys.of_order(keys.payment_totals, event.order_id), "refunded_cents", int(pay["amount_cents"]))
    uow.settle(pay_key)


def file_charge(event, uow: UnitOfWork) -> None:
    """The order's shipment is booked: no refund can follow (ShippingFailed comes only of a
    shipment not booked), so a CHARGED payment is final: file it (Service.files). A refund asked
    of it anyway (a replayed ShippingFailed) raises and is dead-lettered (UnitOfWork._open)."""
    pay_key = keys.payment(event.order_id)
    if uow.read(pay_key).get("status") == CHARGED:
        uow.settle(pay_key)


def _payment(event) -> list[str]:
    return [keys.payment(event.order_id)]


SERVICE = Service(
    name="payment",
    voice="PaymentService",
    # ShippingFailed first: streams are read in this order, so when a cancellation and the charge
    # it overtook arrive in one batch, the order is never charged rather than charged and refunded.
    consumes={
        "ShippingFailed": On(refund, "Refunding payment for order {order_id}", _payment),
        "InventoryChecked": On(charge, "Processing payment for order {order_id}", _payment),
        "PaymentProcessed": On(confirm, "Payment processed for order {order_id}"),
        "ShippingArranged": On(file_charge, "Payment settled for order {order_id}", _payment),
    },
    emits=("PaymentProcessed", "PaymentFailed"),
    owns=keys.OWNED["payment"],
    record=keys.payment,
    files=True,
    filed_fields=("status", "amount_cents", "charged_at_ms"),
)

"""Inventory service: reserves stock for an order, or rejects it; releases or sells the reservation.

Two ways to move stock, chosen by the key layout (bus.layout). Untagged (P = 1 on a plain Redis):
the order's commit adjusts `stock:<product>` itself, guarded by the stock's version. Tagged (P > 1
or Redis Cluster): the stock lives in its own slot, so each product's part is a hold
(`hold:{stock:<product>}:<order>`, bus/hold.lua) made before the commit, atomic in the stock's
slot and idempotent by (product, order); the order's commit records the decision the holds made.
docs/partitions.md argues why stock stays exact.
"""

from __future__ import annotations


from choreo.bus import layout
from choreo.bus.contract import Bus, Hold
from choreo.bus.envelope import decode_data, encode_data
from choreo.config.catalogue import CATALOGUE
from choreo.workers import keys
from choreo.workers.deadlines import carried
from choreo.workers.service import On, Service, confirm
from choreo.workers.unit_of_work import BatchView, UnitOfWork

RESERVED, REJECTED, RELEASED, SOLD = "RESERVED", "REJECTED", "RELEASED", "SOLD"
SHORT = "SHORT"                     # a hold that found too little stock (bus/hold.lua)


def _per_product(lines) -> dict:
    """product id -> total quantity: one hold per product and order."""
    out: dict = {}
    for l in lines:
        out[l["product_id"]] = out.get(l["product_id"], 0) + int(l["quantity"])
    return out


def _holds(uow: UnitOfWork, order_id: str, quantities: dict, op: str) -> dict:
    """product id -> its hold's status after `op` (bus/hold.lua), all products in one round trip."""
    requests = [Hold(keys.stock(p), keys.hold(p, order_id), op, q) for p, q in quantities.items()]
    return dict(zip(quantities, uow.holds(requests)))


def reserve_stock(event, uow: UnitOfWork) -> None:
    res_key = keys.reservation(event.order_id)
    res = uow.read(res_key)
    if res:                         # this order was already decided (an event republished)
        releasing = layout.current().tagged and res.get("status") in (RELEASED, REJECTED)
        if releasing:
            # A compensation decided first while an earlier try held stock (its commit then
            # conflicted, or it died): give the holds back. Idempotent; none held, nothing done.
            _holds(uow, event.order_id, _per_product(event.data["lines"]), "release")
        uow.say(f"Order {event.order_id} is {res.get('status')} here already: nothing to reserve"
                + (" (any holds an earlier try made given back)" if releasing else ""))
        return
    if layout.current().tagged:
        return _reserve_by_holds(event, uow, res_key)
    lines = event.data["lines"]
    # Per product, not per line: two lines of one product take from the same stock, and each
    # alone fitting what is available does not make both fit.
    needed = _per_product(lines)
    short = [p for p, quantity in needed.items()
             if int(uow.read(keys.stock(p)).get("available", 0)) < quantity]
    if short:
        reason = "not enough stock for product " + ", ".join(map(str, short))
        uow.set(res_key, status=REJECTED, reason=reason)
        uow.expire(res_key)         # final: only a late compensation can follow, and it finds this
        uow.emit("InventoryRejected", reason=reason)
        return
    for p, quantity in needed.items():
        uow.add(keys.stock(p), "available", -quantity)
        uow.add(keys.stock(p), "reserved", quantity)
    uow.set(res_key, status=RESERVED, lines=encode_data(lines))
    uow.emit("InventoryChecked", lines=lines, total_cents=event.data["total_cents"], **carried(event))


def _reserve_by_holds(event, uow: UnitOfWork, res_key: str) -> None:
    """Tagged layout: hold each product (reserved now, in the stock's slot), then record the
    decision. The holds' statuses are sticky per (product, order), so a handler run again after
    a crash or a CONFLICT gets the same ones back and decides the same. Short of one product,
    every hold is released (idempotent) and the order rejected as in the untagged path."""
    lines = event.data["lines"]
    statuses = _holds(uow, event.order_id, _per_product(lines), "reserve")
    if any(s != RESERVED for s in statuses.values()):
        _holds(uow, event.order_id, _per_product(lines), "release")
        short = [p for p, s in statuses.items() if s == SHORT] or \
                [p for p, s in statuses.items() if s != RESERVED]
        reason = "not enough stock for product " + ", ".join(map(str, short))
        uow.set(res_key, status=REJECTED, reason=reason)
        uow.expire(res_key)
        uow.emit("InventoryRejected", reason=reason)
        return
    uow.set(res_key, status=RESERVED, lines=encode_data(lines))
    uow.emit("InventoryChecked", lines=lines, total_cents=event.data["total_cents"], **carried(event))


def forget_holds(event, uow: UnitOfWork) -> None:
    """on_dead_letter: an OrderCreated about to be dead-lettered may have left holds (a try that
    raised after them, was refused, or died). Unless its reservation was recorded as RESERVED or
    SOLD (then the holds are the reservation's), forget them: stock back to available, the holds
    deleted, so a replay of the entry starts afresh. The forget is made once the dead letter is
    committed (UnitOfWork.holds): the entry is then acknowledged, so no commit of it (a stalled
    worker's) can record the holds after they went. The reservation's version, read here, guards
    the dead letter: a reservation recorded meanwhile makes it conflict and go round again."""
    if not layout.current().tagged or event.type != "OrderCreated":
        return
    res = uow.read(keys.reservation(event.order_id))
    if res.get("status") in (RESERVED, SOLD):
        return
    _holds(uow, event.order_id, _per_product(event.data.get("lines", [])), "forget")


def _settle(to_status: str):
    """Move a RESERVED reservation to RELEASED (back to available) or SOLD; anything else is a no-op."""
    def settle(event, uow: UnitOfWork) -> None:
        res_key = keys.reservation(event.order_id)
        res = uow.read(res_key)
        if not res:
            # Compensation before the reservation: remember it so a late OrderCreated reserves nothing.
            uow.set(res_key, status=RELEASED, reason=f"{event.type} before reservation")
            uow.settle(res_key)     # kept the retention window: a late OrderCreated must find it
            return
        if res["status"] != RESERVED:
            uow.say(f"Reservation of order {event.order_id} is {res['status']}: nothing to "
                    f"{'sell' if to_status == SOLD else 'release'}")
            return
        if layout.current().tagged:     # the holds move the stock, in its slot, before the commit
            moved = _holds(uow, event.order_id, _per_product(decode_data(res["lines"])),
                           "sell" if to_status == SOLD else "release")
            lost = {p: s for p, s in moved.items() if s != to_status}
            if lost:
                # A RESERVED reservation whose hold is gone or elsewhere (forgotten by a dead
                # letter that then conflicted): recording it would sell or free stock nobody
                # holds. Retried, then dead-lettered where an operator sees it; audit names it.
                shown = ", ".join(f"{p} is {s or 'gone'}" for p, s in lost.items())
                raise RuntimeError(f"order {event.order_id}: hold of product {shown}, not {to_status}")
            uow.set(res_key, status=to_status)
            uow.drop(res_key, "lines")  # settled: only a RESERVED reservation's lines move stock
            uow.settle(res_key)
            return
        for l in decode_data(res["lines"]):
            uow.add(keys.stock(l["product_id"]), "reserved", -l["quantity"])
            uow.add(keys.stock(l["product_id"]), "sold" if to_status == SOLD else "available",
                    l["quantity"])
        uow.set(res_key, status=to_status)
        uow.drop(res_key, "lines")      # settled: only a RESERVED reservation's lines move stock
        uow.settle(res_key)         # final either way, filed; late events within the window find it
    settle.__name__ = "sell_reservation" if to_status == SOLD else "release_reservation"
    return settle


def seed_stock(bus: Bus) -> None:
    """Write each catalogue product's starting stock unless its key exists. Safe to race: each
    product is its own commit, guarded like any other by the version it read (absent)."""
    for product in CATALOGUE.values():
        uow = UnitOfWork(SERVICE.name, (), BatchView(bus))
        if not uow.read(keys.stock(product.id)):
            uow.set(keys.stock(product.id), start=product.stock, available=product.stock,
                    reserved=0, sold=0)
            bus.commit("", [uow.to_commit()])     # CONFLICT: another worker seeded it first


def _reservation_and_stock(event) -> list[str]:
    if layout.current().tagged:         # stock is not read by the order's commit: holds move it
        return [keys.reservation(event.order_id)]
    return [keys.reservation(event.order_id),
            *(keys.stock(l["product_id"]) for l in event.data.get("lines", []))]


def _reservation(event) -> list[str]:
    return [keys.reservation(event.order_id)]


SERVICE = Service(
    name="inventory",
    voice="InventoryService",
    consumes={
        "OrderCreated": On(reserve_stock, "Checking inventory for order {order_id}", _reservation_and_stock),
        "InventoryChecked": On(confirm, "Inventory checked for order {order_id}"),
        "PaymentFailed": On(_settle(RELEASED), "Releasing stock for order {order_id}", _reservation),
        "ShippingFailed": On(_settle(RELEASED), "Releasing stock for order {order_id}", _reservation),
        "ShippingArranged": On(_settle(SOLD), "Stock sold for order {order_id}", _reservation),
    },
    emits=("InventoryChecked", "InventoryRejected"),
    owns=(*keys.OWNED["inventory"], keys.hold("*", "*")),
    record=keys.reservation,
    files=True,                     # a sold or released reservation is final: filed
    filed_fields=("status",),
    on_start=seed_stock,
    on_dead_letter=forget_holds,
    deletes=(keys.hold("*", "*"),),
)

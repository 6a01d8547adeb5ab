"""Inventory service: reserves stock for an order, or rejects it; releases or sells the reservation."""

from __future__ import annotations

import json

from choreo.bus.contract import Bus
from choreo.config.catalogue import CATALOGUE
from choreo.workers import keys
from choreo.workers.deadlines import carried
from choreo.workers.service import On, Service, confirm
from choreo.workers.unit_of_work import BatchView, UnitOfWork

RESERVED, REJECTED, RELEASED, SOLD = "RESERVED", "REJECTED", "RELEASED", "SOLD"


def reserve_stock(event, uow: UnitOfWork) -> None:
    res_key = keys.reservation(event.order_id)
    if uow.read(res_key):
        return                      # this order was already decided (an event republished)
    lines = event.data["lines"]
    stocks = {l["product_id"]: uow.read(keys.stock(l["product_id"])) for l in lines}
    short = [l["product_id"] for l in lines
             if int(stocks[l["product_id"]].get("available", 0)) < l["quantity"]]
    if short:
        reason = "not enough stock for product " + ", ".join(map(str, short))
        uow.set(res_key, status=REJECTED, reason=reason)
        uow.expire(res_key)         # final: only a late compensation can follow, and it finds this
        uow.emit("InventoryRejected", reason=reason)
        return
    for l in lines:
        uow.add(keys.stock(l["product_id"]), "available", -l["quantity"])
        uow.add(keys.stock(l["product_id"]), "reserved", l["quantity"])
    uow.set(res_key, status=RESERVED, lines=json.dumps(lines))
    uow.emit("InventoryChecked", lines=lines, total_cents=event.data["total_cents"], **carried(event))


def _settle(to_status: str):
    """Move a RESERVED reservation to RELEASED (back to available) or SOLD; anything else is a no-op."""
    def settle(event, uow: UnitOfWork) -> None:
        res_key = keys.reservation(event.order_id)
        res = uow.read(res_key)
        if not res:
            # Compensation before the reservation: remember it so a late OrderCreated reserves nothing.
            uow.set(res_key, status=RELEASED, reason=f"{event.type} before reservation")
            uow.expire(res_key)     # kept the retention window: a late OrderCreated must find it
            return
        if res["status"] != RESERVED:
            return
        for l in json.loads(res["lines"]):
            uow.add(keys.stock(l["product_id"]), "reserved", -l["quantity"])
            uow.add(keys.stock(l["product_id"]), "sold" if to_status == SOLD else "available",
                    l["quantity"])
        uow.set(res_key, status=to_status)
        uow.expire(res_key)         # final either way; late events within the window find it
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
    owns=keys.OWNED["inventory"],
    on_start=seed_stock,
)

"""`choreo demo`: the tutorial's order, for real, with all four services in this one process."""

from __future__ import annotations

import time
from typing import Callable

from bus import inspect
from bus.redis_streams import RedisStreamsBus
from config.catalogue import CATALOGUE
from config.settings import Settings
from choreo.orders import OrderRequest, is_terminal, new_order_ids, place_orders, read_orders
from choreo.trace import load_events, story
from workers import PUBLISHERS, SERVICES, keys
from workers.order import OrderRejected
from workers.runtime import Worker, consumer_name

PRODUCT, QUANTITY = 101, 2


def run_demo(bus: RedisStreamsBus, settings: Settings, out: Callable[[str], None] = print,
             timeout_s: float = 20.0) -> int:
    worker_log: list[str] = []      # the workers' own lines; the demo prints the causal story
    workers = [Worker(s, bus, settings, consumer_name(s.name) + "-demo", log=worker_log.append,
                      publishers=PUBLISHERS)
               for s in SERVICES.values()]
    for w in workers:
        w.start()
    order_id = _place(bus, settings.order_deadline_s)
    deadline = time.monotonic() + timeout_s
    # Round-robin until the order is terminal and a full round finds nothing left to do.
    while time.monotonic() < deadline:
        handled = sum(w.poll(block_ms=0) for w in workers)
        if not handled and is_terminal(read_orders(bus, [order_id])[order_id]):
            break
        if not handled:
            time.sleep(0.01)
    for line in story(load_events(bus, order_id)):
        out(line)
    order = read_orders(bus, [order_id])[order_id]
    out("")
    for line in summary(bus, order_id, order):
        out(line)
    return 0 if order.get("status") == "COMPLETED" else 1


def _place(bus: RedisStreamsBus, deadline_s: float) -> str:
    """Order 1 on a fresh store; on a server that already has order 1, the next free id."""
    for _ in range(5):
        order_id = new_order_ids(bus, 1)[0]
        try:
            place_orders(bus, [OrderRequest(order_id, [{"product_id": PRODUCT, "quantity": QUANTITY}])],
                         deadline_s=deadline_s)
            return order_id
        except OrderRejected:
            continue
    raise OrderRejected("could not find a free order id after 5 tries")


def summary(bus: RedisStreamsBus, order_id: str, order: dict[str, str]) -> list[str]:
    shipment = bus.read_hashes([keys.shipment(order_id)])[0]
    stock = bus.read_hashes([keys.stock(PRODUCT)])[0]
    total = int(order.get("total_cents", 0))
    lines = [f"order {order_id}: {order.get('status', '?')}, total {total / 100:.2f}, "
             f"tracking {shipment.get('tracking_id', '-')}",
             f"stock of {PRODUCT} ({CATALOGUE[PRODUCT].name}): {stock.get('available')} available, "
             f"{stock.get('reserved')} reserved, {stock.get('sold')} sold"]
    counts = [f"{s}={inspect.stream_length(bus, s)}" for s in inspect.stream_keys(bus)]
    lines.append("entries per stream: " + " ".join(counts))
    return lines

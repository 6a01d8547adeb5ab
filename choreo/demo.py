"""`choreo demo`: the tutorial's order, or a scenario's (choreo.scenarios), for real, with all four
services in this one process."""

from __future__ import annotations

import time
from typing import Callable

from choreo.bus import inspect, keys as bus_keys
from choreo.bus.redis_streams import RedisStreamsBus
from choreo.config.catalogue import CATALOGUE
from choreo.config.settings import Settings
from choreo.orders import OrderRequest, is_terminal, new_order_ids, place_orders, read_orders
from choreo.scenarios import HAPPY, SCENARIOS, Scenario
from choreo.ops.trace import load_events, story_with_compensations
from choreo.workers import CONSUMERS, PUBLISHERS, SERVICES, keys
from choreo.workers.deadlines import fire_deadline
from choreo.workers.order import OrderRejected
from choreo.scheduling.timers import RqTimers
from choreo.workers.runtime import Worker, consumer_name


def run_demo(bus: RedisStreamsBus, settings: Settings, out: Callable[[str], None] = print,
             timeout_s: float = 20.0, scenario: Scenario = SCENARIOS[HAPPY],
             full_state: bool = False) -> int:
    """Run one order through the saga and tell it; 0 when it ends as the scenario expects. With
    full_state, the end also shows the order's reason, payment and shipment (a scenario's end)."""
    # The demo prints the causal story; the workers' own lines go to logging (choreo.logs).
    # The demo fires deadlines itself (fire_deadline): its timers stay on its own bus, even when
    # CHOREO_TIMERS_URL names a server for the real ones.
    workers = {name: Worker(s, bus, settings, consumer_name(name) + "-demo", publishers=PUBLISHERS,
                            consumers=CONSUMERS, timers=RqTimers(bus))
               for name, s in SERVICES.items()}
    for w in workers.values():
        w.start()
    order_id = _place(bus, scenario.order_lines, scenario.deadline_s or settings.order_deadline_s)
    _drive(bus, workers, scenario, order_id, until=time.monotonic() + timeout_s)
    order = read_orders(bus, [order_id])[order_id]
    products = list(dict.fromkeys(p for p, _ in scenario.lines))
    for line in [*story_with_compensations(bus, load_events(bus, order_id)), "",
                 *summary(bus, order_id, order, products, full_state)]:
        out(line)
    return 0 if order.get("status") == scenario.expect else 1


def _drive(bus: RedisStreamsBus, workers: dict[str, Worker], scenario: Scenario, order_id: str,
           until: float) -> None:
    if scenario.late:
        # The others run until nothing is left for them, as if the late service's worker were
        # stopped; then the deadline passes and fires before it starts again.
        _run([w for name, w in workers.items() if name != scenario.late], until, lambda: True)
        _let_deadline_pass(bus, order_id)
    _run(list(workers.values()), until, lambda: is_terminal(read_orders(bus, [order_id])[order_id]))


def _run(workers: list[Worker], until: float, done: Callable[[], bool]) -> None:
    """Round-robin until done() and a full round finds nothing left to do, or until `until`."""
    while time.monotonic() < until:
        handled = sum(w.poll(block_ms=0) for w in workers)
        if not handled and done():
            return
        if not handled:
            time.sleep(0.01)


def _let_deadline_pass(bus: RedisStreamsBus, order_id: str) -> None:
    """Wait out the order's deadline and publish DeadlinePassed as `choreo timers` would: the
    embedded store has no timers process."""
    created = next(t.event for t in load_events(bus, order_id) if t.event.type == "OrderCreated")
    time.sleep(max(0.0, created.data["deadline_at_ms"] / 1000 - time.time()))
    fire_deadline(bus, order_id, created.id)


def _place(bus: RedisStreamsBus, lines: list[dict], deadline_s: float) -> str:
    """Order 1 on a fresh store; on a server that already has order 1, the next free id."""
    for _ in range(5):
        order_id = new_order_ids(bus, 1)[0]
        try:
            place_orders(bus, [OrderRequest(order_id, lines)], deadline_s=deadline_s)
            return order_id
        except OrderRejected:
            continue
    raise OrderRejected("could not find a free order id after 5 tries")


def summary(bus: RedisStreamsBus, order_id: str, order: dict[str, str], products: list[int],
            full_state: bool = False) -> list[str]:
    payment, shipment, *stocks = bus.read_hashes(
        [keys.payment(order_id), keys.shipment(order_id), *(keys.stock(p) for p in products)])
    total = int(order.get("total_cents", 0))
    lines = [f"order {order_id}: {order.get('status', '?')}{_because(order)}, total {total / 100:.2f}, "
             f"tracking {shipment.get('tracking_id', '-')}"]
    lines += [f"stock of {p} ({CATALOGUE[p].name}): {stock.get('available')} available, "
              f"{stock.get('reserved')} reserved, {stock.get('sold')} sold"
              for p, stock in zip(products, stocks)]
    if full_state:
        lines += [f"payment: {_step(payment)}", f"shipment: {_step(shipment)}"]
    # Partitioned: each event type's streams added up, named events:{p*}:<type>.
    counts: dict[str, int] = {}
    for s in inspect.stream_keys(bus):
        named = bus_keys.any_partition(s)
        counts[named] = counts.get(named, 0) + inspect.stream_length(bus, s)
    lines.append("entries per stream: " + " ".join(f"{s}={n}" for s, n in counts.items()))
    return lines


def _because(state: dict[str, str]) -> str:
    return f" ({state['reason']})" if state.get("reason") else ""


def _step(state: dict[str, str]) -> str:
    """A service's part of the order: 'REFUNDED 1199.40 (why)', or 'none' when it never acted."""
    amount = f" {int(state['amount_cents']) / 100:.2f}" if state.get("amount_cents") else ""
    return state.get("status", "none") + amount + _because(state)

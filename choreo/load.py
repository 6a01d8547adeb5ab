"""`choreo load`: place N orders against running workers and measure created -> terminal."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

from bus.redis_streams import RedisStreamsBus
from choreo.orders import (OrderRequest, existing_orders, is_terminal, new_order_ids, place_orders,
                           read_orders)
from choreo.outages import GaveUp, RideThrough

CHUNK = 200
POLLED = ("status", "created_at_ms", "ended_at_ms")     # all a poll needs of each order


@dataclass
class LoadResult:
    orders: int
    by_status: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    placed: int = 0
    # Orders a retry found already there: the try whose reply an outage lost had placed them.
    found_placed: int = 0
    outages: int = 0
    outage_s: float = 0.0
    gave_up: str = ""           # why the run stopped early (Redis still down at the --timeout)

    @property
    def completed(self) -> int:
        return self.by_status.get("COMPLETED", 0)

    @property
    def finished(self) -> int:
        return sum(self.by_status.values())

    def figures(self) -> str:
        """One line for scripts; fields are only ever appended, so older parsers keep working."""
        lat = sorted(self.latencies_ms)
        rate = self.completed / self.elapsed_s if self.elapsed_s else 0.0
        return (f"orders={self.orders} completed={self.completed} elapsed_s={self.elapsed_s:.3f} "
                f"orders_per_s={rate:.1f} p50_ms={percentile(lat, 50):.1f} "
                f"p99_ms={percentile(lat, 99):.1f} outages={self.outages} "
                f"outage_s={self.outage_s:.3f}")


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(p) - 1] \
        if p < 100 else sorted_values[-1]


@dataclass(frozen=True)
class LoadPlan:
    orders: int
    timeout_s: float
    product: int
    quantity: int
    rate: float | None = None
    deadline_s: float = 0

    def request(self, order_id: str) -> OrderRequest:
        return OrderRequest(order_id, [{"product_id": self.product, "quantity": self.quantity}])


def _say(line: str) -> None:
    # stderr: stdout's last line is the figures line scripts read.
    print(line, file=sys.stderr, flush=True)


def run_load(bus: RedisStreamsBus, plan: LoadPlan, progress=None, reconnect_max_s: float = 5.0,
             ride: RideThrough | None = None) -> LoadResult:
    """progress(placed, completed, failed) is called as things move (e.g. to draw a bar);
    failed counts orders that ended other than COMPLETED (rejected, cancelled). Every Redis call
    rides through outages (see choreo.outages) until the plan's timeout; the run keeps time by
    the ride's clock, so a test can pass one with a fake clock."""
    result = LoadResult(plan.orders)
    ride = ride or RideThrough(time.monotonic() + plan.timeout_s, reconnect_max_s, _say)
    start = ride.clock()
    try:
        outstanding = _place_all(bus, plan, ride, result, progress)
        while outstanding and ride.clock() < ride.deadline:
            ride.sleep(0.05)
            outstanding = _poll(bus, outstanding, ride, result, progress)
    except GaveUp as exc:
        result.gave_up = str(exc)
    result.elapsed_s = ride.clock() - start
    result.outages, result.outage_s = ride.count, ride.total_s
    return result


def _place_all(bus: RedisStreamsBus, plan: LoadPlan, ride: RideThrough, result: LoadResult,
               progress) -> list[str]:
    """Places every order, polling between chunks; returns the ids not yet terminal."""
    start = ride.clock()
    # Allocated once and kept: a retry after an outage places these same ids, never new ones.
    # (An INCRBY whose reply was lost is retried; the range it took is left unused.)
    ids = ride.call(lambda _retrying: new_order_ids(bus, plan.orders))
    outstanding: list[str] = []
    # Paced runs place small chunks (about 20 a second) so the rate is smooth, not bursts of 200.
    step = max(1, min(CHUNK, int(plan.rate / 20))) if plan.rate else CHUNK
    for i in range(0, plan.orders, step):
        chunk = ids[i:i + step]
        if plan.rate:
            # The schedule moves on by the time Redis was down: no burst to catch up after it.
            ride.sleep(max(0.0, start + ride.total_s + i / plan.rate - ride.clock()))
        requests = [plan.request(o) for o in chunk]
        result.found_placed += ride.call(
            lambda retrying: place_once(bus, requests, plan.deadline_s, retrying))
        outstanding += chunk
        result.placed += len(chunk)
        outstanding = _poll(bus, outstanding, ride, result, progress)
    return outstanding


def place_once(bus: RedisStreamsBus, requests: list[OrderRequest], deadline_s: float,
               retrying: bool) -> int:
    """Places the requests; returns how many a retry found already placed. Those were placed by
    the try whose reply was lost (the ids came from our own INCRBY, so nobody else has them): a
    retry places only the rest, rather than fail on "already exists"."""
    found = existing_orders(bus, [r.order_id for r in requests]) if retrying else set()
    todo = [r for r in requests if r.order_id not in found]
    if todo:
        place_orders(bus, todo, deadline_s=deadline_s)
    return len(found)


def _poll(bus: RedisStreamsBus, outstanding: list[str], ride: RideThrough, result: LoadResult,
          progress) -> list[str]:
    # Reading is idempotent: a read an outage cut short is simply read again.
    orders = ride.call(lambda _retrying: read_orders(bus, outstanding, POLLED))
    still = _collect(orders, ride, result)
    _report(progress, result)
    return still


def _collect(orders: dict[str, dict[str, str]], ride: RideThrough, result: LoadResult) -> list[str]:
    still = []
    for order_id, order in orders.items():
        if not is_terminal(order):
            still.append(order_id)
            continue
        result.by_status[order["status"]] = result.by_status.get(order["status"], 0) + 1
        if order["status"] == "COMPLETED":
            created, ended = int(order["created_at_ms"]), int(order["ended_at_ms"])
            # Time Redis was down is not the saga being slow (README, "choreo load").
            result.latencies_ms.append(ended - created - ride.overlap_ms(created, ended))
    return still


def _report(progress, result: LoadResult) -> None:
    if progress:
        progress(result.placed, result.completed, result.finished - result.completed)


def rich_progress(total: int):
    """A context manager yielding a progress callback: a rich bar on a terminal, else nothing."""
    from contextlib import contextmanager, nullcontext
    if not sys.stderr.isatty():
        return nullcontext(None)

    @contextmanager
    def bar():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        with Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True), transient=True) as p:
            placed = p.add_task("placed", total=total)
            done = p.add_task("completed", total=total)
            failed = p.add_task("failed", total=total)

            def update(n_placed, n_completed, n_failed):
                p.update(placed, completed=n_placed)
                p.update(done, completed=n_completed)
                p.update(failed, completed=n_failed)
            yield update
    return bar()


def summary_table(result: LoadResult):
    """The run at a glance, for people; the figures line stays the one for scripts."""
    from rich import box
    from rich.table import Table
    lat = sorted(result.latencies_ms)
    table = Table(title="choreo load", box=box.SIMPLE, title_justify="left",
                  caption_justify="left", caption=(
                      f"latencies (ms) leave out the {result.outage_s:.1f} s outage; elapsed s counts it"
                      if result.outages else None))
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [("orders", result.orders), ("placed", result.placed)]
    rows += sorted(result.by_status.items())
    rows += [("not finished", result.orders - result.finished),
             ("elapsed s", f"{result.elapsed_s:.3f}"),
             ("completed per s", f"{result.completed / result.elapsed_s if result.elapsed_s else 0:.1f}"),
             ("p50 ms", f"{percentile(lat, 50):.1f}"), ("p99 ms", f"{percentile(lat, 99):.1f}"),
             ("max ms", f"{lat[-1]:.1f}" if lat else "-"),
             ("outages", result.outages), ("outage s", f"{result.outage_s:.3f}"),
             ("found placed on retry", result.found_placed)]
    for name, value in rows:
        table.add_row(str(name), str(value))
    return table

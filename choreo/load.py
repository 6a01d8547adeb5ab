"""`choreo load`: place N orders against running workers and measure created -> terminal."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

from bus.redis_streams import RedisStreamsBus
from choreo.orders import OrderRequest, is_terminal, new_order_ids, place_orders, read_orders

CHUNK = 200
POLLED = ("status", "created_at_ms", "ended_at_ms")     # all a poll needs of each order


@dataclass
class LoadResult:
    orders: int
    by_status: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    placed: int = 0

    @property
    def completed(self) -> int:
        return self.by_status.get("COMPLETED", 0)

    @property
    def finished(self) -> int:
        return sum(self.by_status.values())

    def figures(self) -> str:
        lat = sorted(self.latencies_ms)
        rate = self.completed / self.elapsed_s if self.elapsed_s else 0.0
        return (f"orders={self.orders} completed={self.completed} elapsed_s={self.elapsed_s:.3f} "
                f"orders_per_s={rate:.1f} p50_ms={percentile(lat, 50):.1f} "
                f"p99_ms={percentile(lat, 99):.1f}")


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(p) - 1] \
        if p < 100 else sorted_values[-1]


def run_load(bus: RedisStreamsBus, orders: int, timeout_s: float, product: int, quantity: int,
             rate: float | None = None, progress=None, deadline_s: float = 0) -> LoadResult:
    """progress(placed, completed, failed) is called as things move (e.g. to draw a bar);
    failed counts orders that ended other than COMPLETED (rejected, cancelled)."""
    result = LoadResult(orders)
    ids = new_order_ids(bus, orders)
    start = time.monotonic()
    deadline = start + timeout_s
    outstanding: list[str] = []
    # Paced runs place small chunks (about 20 a second) so the rate is smooth, not bursts of 200.
    step = max(1, min(CHUNK, int(rate / 20))) if rate else CHUNK
    for i in range(0, orders, step):
        chunk = ids[i:i + step]
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        place_orders(bus, [OrderRequest(o, [{"product_id": product, "quantity": quantity}])
                           for o in chunk], deadline_s=deadline_s)
        outstanding += chunk
        result.placed += len(chunk)
        outstanding = _collect(bus, outstanding, result)
        _report(progress, result)
    while outstanding and time.monotonic() < deadline:
        time.sleep(0.05)
        outstanding = _collect(bus, outstanding, result)
        _report(progress, result)
    result.elapsed_s = time.monotonic() - start
    return result


def _collect(bus: RedisStreamsBus, outstanding: list[str], result: LoadResult) -> list[str]:
    still = []
    for order_id, order in read_orders(bus, outstanding, POLLED).items():
        if not is_terminal(order):
            still.append(order_id)
            continue
        result.by_status[order["status"]] = result.by_status.get(order["status"], 0) + 1
        if order["status"] == "COMPLETED":
            result.latencies_ms.append(int(order["ended_at_ms"]) - int(order["created_at_ms"]))
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
    table = Table(title="choreo load", box=box.SIMPLE, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [("orders", result.orders), ("placed", result.placed)]
    rows += sorted(result.by_status.items())
    rows += [("not finished", result.orders - result.finished),
             ("elapsed s", f"{result.elapsed_s:.3f}"),
             ("completed per s", f"{result.completed / result.elapsed_s if result.elapsed_s else 0:.1f}"),
             ("p50 ms", f"{percentile(lat, 50):.1f}"), ("p99 ms", f"{percentile(lat, 99):.1f}"),
             ("max ms", f"{lat[-1]:.1f}" if lat else "-")]
    for name, value in rows:
        table.add_row(str(name), str(value))
    return table

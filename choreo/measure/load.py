"""`choreo load`: place N orders against running workers and measure created -> terminal."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

from choreo.bus.redis_streams import RedisStreamsBus
from choreo.measure.endings import EndingWatch
from choreo.orders import (OrderRequest, existing_orders, is_terminal, new_order_ids, place_orders,
                           read_orders)
from choreo.measure.outages import GaveUp, RideThrough

CHUNK = 200
READ_CHUNK = 1000           # orders whose records one pipeline reads at the end
SETTLED = ("status", "created_at_ms", "ended_at_ms")    # all the figures need of each order
BLOCK_S = 1.0               # longest wait of one read for endings
# How long the final read waits for the order service to commit endings already published.
SETTLE_S = 2.0


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
    rides through outages (see choreo.measure.outages) until the plan's timeout; the run keeps time by
    the ride's clock, so a test can pass one with a fake clock. The run ends when every order's
    ending event has been published (choreo.measure.endings); the figures then count what the orders'
    records say (see _settle)."""
    result = LoadResult(plan.orders)
    ride = ride or RideThrough(time.monotonic() + plan.timeout_s, reconnect_max_s, _say)
    start = ride.clock()
    ended = None
    try:
        # Allocated once and kept: a retry after an outage places these same ids, never new ones.
        # (An INCRBY whose reply was lost is retried; the range it took is left unused.)
        ids = ride.call(lambda _retrying: new_order_ids(bus, plan.orders))
        # Taken before the first order is placed, so no ending can come before the watch's ids.
        watch = ride.call(lambda _retrying: EndingWatch.start(bus, ids))
        _place_all(bus, plan, ids, watch, ride, result, progress)
        _await_endings(bus, watch, ride, result, progress)
        ended = ride.clock()
        _settle(bus, ids, watch, ride, result)
        _report(progress, result)
    except GaveUp as exc:
        result.gave_up = str(exc)
    result.elapsed_s = (ended if ended is not None else ride.clock()) - start
    result.outages, result.outage_s = ride.count, ride.total_s
    return result


def _place_all(bus: RedisStreamsBus, plan: LoadPlan, ids: list[str], watch: EndingWatch,
               ride: RideThrough, result: LoadResult, progress) -> None:
    """Places every order, reading the endings (without waiting) between chunks."""
    start = ride.clock()
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
        result.placed += len(chunk)
        _read_endings(bus, watch, ride, result, progress, block_ms=0)


def place_once(bus: RedisStreamsBus, requests: list[OrderRequest], deadline_s: float,
               retrying: bool) -> int:
    """Places the requests; returns how many a retry found already placed. Those were placed by
    the try whose reply was lost (the ids came from our own INCRBY, so nobody else has them: an
    id placed by hand raises orders:seq past it first, choreo.orders.keep_seq_above): a
    retry places only the rest, rather than fail on "already exists"."""
    found = existing_orders(bus, [r.order_id for r in requests]) if retrying else set()
    todo = [r for r in requests if r.order_id not in found]
    if todo:
        place_orders(bus, todo, deadline_s=deadline_s)
    return len(found)


def _await_endings(bus: RedisStreamsBus, watch: EndingWatch, ride: RideThrough,
                   result: LoadResult, progress) -> None:
    while watch.waiting and ride.clock() < ride.deadline:
        # At most a second per read, so the timeout is kept to within one.
        block_ms = max(1, int(min(BLOCK_S, ride.deadline - ride.clock()) * 1000))
        _read_endings(bus, watch, ride, result, progress, block_ms)


def _read_endings(bus: RedisStreamsBus, watch: EndingWatch, ride: RideThrough,
                  result: LoadResult, progress, block_ms: int) -> None:
    # Reading is idempotent: a read an outage cut short is simply read again from the same ids.
    ride.call(lambda _retrying: watch.read(bus, block_ms, outages=ride.count))
    # What the events say so far: the progress bar's figures, and the figures if the run gives up
    # before _settle can read the records.
    result.by_status = watch.by_status()
    _report(progress, result)


def _settle(bus: RedisStreamsBus, ids: list[str], watch: EndingWatch, ride: RideThrough,
            result: LoadResult) -> None:
    """The figures count what the orders' records say, read once at the end: an ending event is
    published a few ms before the order service commits the order's status, so orders whose
    ending was seen but not yet committed are read again, for at most SETTLE_S."""
    until = min(ride.deadline, ride.clock() + SETTLE_S)
    orders = _read_settled(bus, ids, ride)
    late = _uncommitted(orders, watch)
    while late and ride.clock() < until:
        ride.sleep(min(0.05, until - ride.clock()))
        orders.update(_read_settled(bus, late, ride))
        late = _uncommitted(orders, watch)
    _collect(orders, watch, ride, result)


def _read_settled(bus: RedisStreamsBus, ids: list[str], ride: RideThrough) -> dict[str, dict[str, str]]:
    orders: dict[str, dict[str, str]] = {}
    for i in range(0, len(ids), READ_CHUNK):        # one pipeline of HMGETs per chunk
        chunk = ids[i:i + READ_CHUNK]
        orders.update(ride.call(lambda _retrying: read_orders(bus, chunk, SETTLED)))
    return orders


def _uncommitted(orders: dict[str, dict[str, str]], watch: EndingWatch) -> list[str]:
    # An empty record has expired, which only an ended one does (see _collect).
    return [i for i, order in orders.items()
            if i in watch.endings and order and not is_terminal(order)]


def _collect(orders: dict[str, dict[str, str]], watch: EndingWatch, ride: RideThrough,
             result: LoadResult) -> None:
    result.by_status = {}
    result.latencies_ms = []
    for order_id, order in orders.items():
        order = order or _expired(order_id, watch)
        if not is_terminal(order):
            continue
        result.by_status[order["status"]] = result.by_status.get(order["status"], 0) + 1
        if order["status"] == "COMPLETED" and "created_at_ms" in order:
            created = int(order["created_at_ms"])
            # Done when its ending event was published; the record's own time only for an
            # ending the watch never saw (e.g. trimmed away before it was read).
            ending = watch.endings.get(order_id)
            ended = ending.at_ms if ending else int(order["ended_at_ms"])
            # Time Redis was down is not the saga being slow (docs/benchmarks.md, "choreo load").
            result.latencies_ms.append(ended - created - ride.overlap_ms(created, ended))


def _expired(order_id: str, watch: EndingWatch) -> dict[str, str]:
    """What is known of an order whose record was empty: if it was seen ending, it ended and then
    expired (a retention shorter than the run, as in the soak), with the status the order service
    gives that ending; when it was created is gone with it, so it has no latency."""
    ending = watch.endings.get(order_id)
    return {"status": ending.status} if ending else {}


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

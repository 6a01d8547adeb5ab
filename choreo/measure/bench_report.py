"""`choreo bench`'s output: pure functions of a finished run, rich tables for people, JSON for
machines. Both carry the same figures."""

from __future__ import annotations

import json
from dataclasses import asdict

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from choreo.measure.bench import DEADLINE_S, REFERENCES, ROWS, BenchRun, CurvePoint, RowResult

NOTES = (
    "Latency: placed -> completed; for choreo, until its ShippingArranged was published (the order "
    "service commits COMPLETED a few ms later); for a reference, until its loader read the order's "
    "ShippingArranged.",
    "choreo runs with CHOREO_ORDER_DEADLINE_S=0, as the references have no deadlines; "
    f"choreo+deadlines arms a {DEADLINE_S:g} s rq timer per order, as `choreo load` does by default.",
    "Commands and CPU: from the first order placed to the last completed (INFO commandstats, "
    "INFO cpu, /proc/<pid>/stat of the workers). Bytes and keys: INFO memory and DBSIZE once every "
    "group has acknowledged everything, streams untrimmed; trimmed: bytes again once every stream "
    "is trimmed of the entries every group acknowledged, as a trimmer keeping no history would.",
    "Figures vary about ±25% from run to run on a shared machine: compare ratios within one run.",
)


def notes(run: BenchRun) -> list[str]:
    """NOTES, what --repeat did, and what a cluster row means when the run had one."""
    out = list(NOTES)
    if run.plan.repeat > 1:
        out.append(f"Median of {run.plan.repeat} rounds, each running every row in turn: each figure "
                   "is the median of the rounds' figures, each ratio the median of the rounds' own "
                   "ratios, peak RSS the highest, done the fewest completed. The paced latencies "
                   "are one run per step, after the rounds.")
    if not any(ROWS[r.name].cluster for r in run.results):
        return out
    return [*out, (
        f"Cluster rows: a fresh local cluster of 3 primaries with a replica each, CHOREO_PARTITIONS="
        f"{run.plan.partitions}, every node on this machine; +wait sets CHOREO_WAIT_REPLICAS=1 for the "
        "workers and the loader. Redis cmds, CPU, bytes and keys are summed over the primaries; "
        "the replicas' CPU is its own column, not in Redis CPU µs (docs/cluster.md#figures).")]


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _ratio(r: RowResult, ref: str) -> str:
    x = r.ratio.get(ref, {}).get("orders_per_s")
    return "-" if x is None else f"{x:.2f}×"


def speed_table(run: BenchRun) -> Table:
    p = run.plan
    how = f"paced at {p.rate:g}/s" if p.rate else "placed up front"
    rounds = f", median of {p.repeat} rounds" if p.repeat > 1 else ""
    t = Table(title=f"choreo bench: {p.orders} orders {how}{rounds}, Redis {run.redis_version}",
              box=box.SIMPLE, title_justify="left")
    for name in ("row", "orders/s", *(f"× {r.removeprefix('reference-')}" for r in REFERENCES),
                 "p50 ms", "p99 ms", "max ms", "done"):
        t.add_column(name, justify="left" if name == "row" else "right")
    for r in run.results:
        t.add_row(r.name, _n(r.orders_per_s), *(_ratio(r, ref) for ref in REFERENCES),
                  _n(r.p50_ms, 1), _n(r.p99_ms, 1), _n(r.max_ms, 1), f"{r.completed}/{r.orders}")
    return t


def cost_table(run: BenchRun) -> Table:
    clustered = [ROWS[r.name].cluster for r in run.results]
    t = Table(title="per order", box=box.SIMPLE, title_justify="left")
    for name in ("row", "Redis cmds", "Redis CPU µs", *(["replicas CPU µs"] if any(clustered) else []),
                 "workers CPU µs", "Redis bytes", "trimmed", "Redis keys", "peak RSS MiB"):
        t.add_column(name, justify="left" if name == "row" else "right")
    for r, cluster in zip(run.results, clustered):
        rss = max(r.peak_rss_mib.values(), default=0.0)
        replicas = [_n(r.replica_cpu_us_per_order) if cluster else "-"] if any(clustered) else []
        t.add_row(r.name, _n(r.commands_per_order, 1), _n(r.redis_cpu_us_per_order), *replicas,
                  _n(r.worker_cpu_us_per_order), _n(r.redis_bytes_per_order),
                  _n(r.redis_bytes_per_order_trimmed) if r.settled else "-",
                  _n(r.redis_keys_per_order, 1) + ("" if r.settled else " (unsettled)"),
                  f"{rss:.1f} (max of {len(r.peak_rss_mib)})")
    return t


def curve_table(points: list[CurvePoint]) -> Table:
    steps = sorted({(p.percent, p.rate) for p in points})
    t = Table(title="latency when paced (p50 / p99 ms)", box=box.SIMPLE, title_justify="left")
    t.add_column("row")
    for pct, rate in steps:
        t.add_column(f"{rate:g}/s ({pct}%)", justify="right")
    for name in dict.fromkeys(p.name for p in points):
        cells = {(p.percent, p.rate): p for p in points if p.name == name}
        t.add_row(name, *(f"{cells[s].p50_ms:.1f} / {cells[s].p99_ms:.1f}" if s in cells else "-"
                          for s in steps))
    return t


def render(run: BenchRun) -> Group:
    parts = [speed_table(run), cost_table(run)]
    if run.curve:
        parts.append(curve_table(run.curve))
    parts.append(Text("\n".join(notes(run)), style="dim"))
    return Group(*parts)


def to_json(run: BenchRun) -> str:
    p = run.plan
    return json.dumps({
        "orders": p.orders, "rate": p.rate, "replicas": p.replicas, "partitions": p.partitions,
        "redis_version": run.redis_version, "repeat": p.repeat,
        "rows": [asdict(r) for r in run.results],
        "rounds": [[asdict(r) for r in rows] for rows in run.rounds],
        "curve": [asdict(c) for c in run.curve],
        "processes": run.processes, "notes": notes(run),
    }, indent=2)

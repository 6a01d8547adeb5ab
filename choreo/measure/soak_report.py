"""`choreo bench --soak`'s output: pure functions of a finished soak, a rich table and a verdict for
people, JSON (every sample) for machines."""

from __future__ import annotations

import json
from dataclasses import asdict

from rich import box
from rich.table import Table

from choreo.measure.soak import MAX_ROWS, Sample, SoakRun, Trend

MIB = 1024 * 1024


def shown(samples: list[Sample], most: int = MAX_ROWS) -> list[Sample]:
    """At most `most` samples, evenly spread, the first and the last always among them."""
    if len(samples) <= most:
        return samples
    step = (len(samples) - 1) / (most - 1)
    return [samples[round(i * step)] for i in range(most)]


def sample_table(run: SoakRun) -> Table:
    p = run.plan
    how = f"{run.rate:g}/s" + (f" (60% of the {run.calibrated_max:,.0f}/s measured)" if run.calibrated_max else "")
    t = Table(title=f"choreo bench --soak: {p.orders:,} orders at {how}, Redis {run.redis_version}",
              box=box.SIMPLE, title_justify="left")
    for name in ("time s", "placed", "completed", "used_memory MiB", "keys", "stream entries"):
        t.add_column(name, justify="right")
    for s in shown(run.samples):
        t.add_row(f"{s.t_s:,.0f}", f"{s.placed:,}", f"{s.completed:,}", f"{s.used_memory / MIB:,.1f}",
                  f"{s.keys:,}", f"{s.stream_entries:,}")
    return t


def verdict(run: SoakRun) -> str:
    t = run.trend
    if t is None:
        return "memory: too few samples to compare the two halves (a longer soak says more)"
    words = "flat" if t.flat else f"growing by {t.second_kb:,.1f} KB per 1000 orders"
    line = (f"memory: {words} — first half {t.first_kb:+,.1f} KB and {t.first_keys:+,.0f} keys per "
            f"1000 orders, second half {t.second_kb:+,.1f} KB and {t.second_keys:+,.0f} keys")
    return line if t.warm else line + (
        f" (the second half began before the {run.plan.window_s} s retention windows had "
        "passed: it is still filling them; a longer soak says more)")


def settings_line(run: SoakRun) -> str:
    p = run.plan
    return (f"retention: CHOREO_RETENTION_S={p.retention_s}, CHOREO_SEEN_TTL_S={p.seen_ttl_s}, "
            f"trimmer every 1 s keeping {p.trim_keep_s} s of acknowledged history; "
            f"completed {run.completed:,}/{p.orders:,}")


def lines(run: SoakRun) -> list[str]:
    """Printed as plain lines under the table, never wrapped: scripts and docs/benchmarks.md quote them."""
    return [settings_line(run), verdict(run), *run.audit_lines]


def _trend_json(t: Trend | None) -> dict | None:
    return None if t is None else {**asdict(t), "flat": t.flat}


def to_json(run: SoakRun) -> str:
    p = run.plan
    return json.dumps({
        "orders": p.orders, "rate": run.rate, "calibrated_max": run.calibrated_max,
        "retention_s": p.retention_s, "seen_ttl_s": p.seen_ttl_s, "trim_keep_s": p.trim_keep_s,
        "redis_version": run.redis_version, "completed": run.completed,
        "samples": [asdict(s) for s in run.samples], "trend": _trend_json(run.trend),
        "verdict": verdict(run), "audit": run.audit_lines, "audit_clean": run.audit_clean,
        "processes": run.processes,
    }, indent=2)

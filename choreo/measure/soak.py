"""`choreo bench --soak N`: does anything in Redis grow without bound while the order rate is
steady? The four workers and the trimmer run with short retention, N orders are placed at a steady
rate, and Redis's memory, key count and stream lengths are sampled as they go. Measured and
printed, never asserted: the verdict compares the second half's trend with the first's.

Why the second half: for the first retention window nothing has expired yet, so memory must grow
while the window fills (orders, dedup markers, acknowledged stream history); once every window
has passed, what expires each second matches what arrives, and the line should be flat.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from choreo.bus import keys as bus_keys
from choreo.measure.bench import (PRODUCT, QUANTITY, ROWS, SETTLE_TIMEOUT_S, BenchError, Plan, Proc,
                          Target, check_alive, refuse_non_empty, running_row, say, server_version,
                          settled, start_process, wait_for, worker_env)
from choreo.workers import SERVICES

ROW = ROWS["choreo"]            # no deadlines: an rq timer per order would measure rq, not choreo
CALIBRATION_ORDERS = 2000       # placed up front to learn the machine's maximum, when no --rate
DEFAULT_LOAD = 0.6              # of that maximum: steady, with room for housekeeping and trimming
TRIM_EVERY_S = 1
MAX_ROWS = 24                   # printed; --json has every sample


@dataclass(frozen=True)
class SoakPlan:
    orders: int
    rate: float | None          # None: DEFAULT_LOAD of a calibration run's orders/s
    retention_s: int = 30
    seen_ttl_s: int = 60        # the least CHOREO_SEEN_TTL_S allows
    timeout_s: float = 120.0    # on top of orders / rate
    replicas: dict[str, int] = field(default_factory=dict)

    @property
    def trim_keep_s(self) -> int:
        # Acknowledged history kept as long as an order's keys: trace finds what retention keeps.
        return self.retention_s

    @property
    def window_s(self) -> int:
        """The longest anything lives after its order ended: past it, memory should be flat."""
        return max(self.retention_s, self.seen_ttl_s, self.trim_keep_s)

    def env(self) -> dict[str, str]:
        return {"CHOREO_RETENTION_S": str(self.retention_s),
                "CHOREO_SEEN_TTL_S": str(self.seen_ttl_s),
                "CHOREO_TRIM_KEEP_ENTRIES": "0",
                "CHOREO_TRIM_KEEP_SECONDS": str(self.trim_keep_s)}


@dataclass(frozen=True)
class Sample:
    t_s: float
    placed: int
    completed: int
    used_memory: int
    keys: int
    stream_entries: int


@dataclass(frozen=True)
class Trend:
    """Growth by half of the run, per 1000 orders placed (least squares over the half's samples)."""
    first_kb: float
    second_kb: float
    first_keys: float
    second_keys: float
    warm: bool                  # the second half began after every retention window had passed

    @property
    def flat(self) -> bool:
        # Flat: the second half grows by at most a tenth of what the first did (allocator and
        # buffer noise remain), or shrinks.
        return self.second_kb <= max(0.1 * self.first_kb, 0.0)


@dataclass
class SoakRun:
    plan: SoakPlan
    rate: float
    calibrated_max: float | None
    redis_version: str
    samples: list[Sample]
    completed: int
    audit_lines: list[str]          # its summary first
    audit_clean: bool
    processes: list[int]

    @property
    def trend(self) -> Trend | None:
        return trend(self.samples, self.plan, self.rate)


# -- sampling ------------------------------------------------------------------------------------

def streams() -> list[str]:
    """Every partition's streams and dead-letter streams (bus.layout)."""
    return sorted({s for svc in SERVICES.values() for s in svc.streams} |
                  {dlq for name in SERVICES for dlq in bus_keys.all_dead_letters(name)})


def stream_entries(client: redis.Redis) -> int:
    pipe = client.pipeline(transaction=False)
    for stream in streams():
        pipe.xlen(stream)           # 0 for a stream not there yet
    return sum(pipe.execute())


@dataclass
class Progress:
    """What the loader has seen, written by its thread (via run_load's callback), read by the
    sampler's: plain int assignments, so no lock."""
    placed: int = 0
    completed: int = 0

    def update(self, placed: int, completed: int, _failed: int) -> None:
        self.placed, self.completed = placed, completed


def take_sample(client: redis.Redis, start: float, progress: Progress) -> Sample:
    return Sample(round(time.monotonic() - start, 1), progress.placed, progress.completed,
                  client.info("memory")["used_memory"], client.dbsize(), stream_entries(client))


class Sampler(threading.Thread):
    """Samples every interval_s until stopped; its own connection, so the loader's is untouched."""

    def __init__(self, url: str, interval_s: float, progress: Progress):
        super().__init__(name="soak-sampler", daemon=True)
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.interval_s, self.progress = interval_s, progress
        self.samples: list[Sample] = []
        self.start_s = time.monotonic()
        self.stopped = threading.Event()
        self.error = ""

    def run(self) -> None:
        try:
            while True:
                self.samples.append(take_sample(self.client, self.start_s, self.progress))
                if self.stopped.wait(self.interval_s):
                    return
        except redis.RedisError as exc:
            self.error = str(exc)       # the run goes on; the table ends where sampling did

    def finish(self) -> list[Sample]:
        """Stops, then one last sample: the table ends with the run settled."""
        self.stopped.set()
        self.join()
        try:
            if not self.error:
                self.samples.append(take_sample(self.client, self.start_s, self.progress))
        finally:
            self.client.close()
        return self.samples


def interval_for(orders: int, rate: float) -> float:
    """About 60 samples over the run, every 1 to 10 s."""
    return min(10.0, max(1.0, orders / rate / 60))


# -- the run -------------------------------------------------------------------------------------

def place(url: str, orders: int, rate: float | None, timeout_s: float, progress=None):
    """`choreo load`'s own machinery, in this process, without deadlines."""
    from choreo.bus.connect import open_bus
    from choreo.measure.load import LoadPlan, run_load
    with open_bus(url) as bus:
        return run_load(bus, LoadPlan(orders, timeout_s, PRODUCT, QUANTITY, rate=rate),
                        progress=progress)


def calibrate(url: str, plan: SoakPlan) -> float:
    n = min(CALIBRATION_ORDERS, plan.orders)
    say(f"soak: {n} orders up front to learn the maximum rate")
    result = place(url, n, None, plan.timeout_s)
    if not result.completed or not result.elapsed_s:
        raise BenchError(f"the calibration's {n} orders did not complete within {plan.timeout_s:g} s")
    return result.completed / result.elapsed_s


def load_and_sample(url: str, plan: SoakPlan, rate: float, target: Target,
                    procs: list[Proc]) -> tuple[list[Sample], int]:
    """Places the orders with the sampler running, until every group has acknowledged all."""
    progress = Progress()
    sampler = Sampler(url, interval_for(plan.orders, rate), progress)
    sampler.start()
    try:
        result = place(url, plan.orders, rate, plan.orders / rate + plan.timeout_s, progress.update)
        check_alive(procs)
        wait_for(lambda: settled(target), SETTLE_TIMEOUT_S, procs)
    finally:
        samples = sampler.finish()
    if sampler.error:
        say(f"soak: sampling stopped early: {sampler.error}")
    return samples, result.completed


def start_trimmer(url: str, plan: SoakPlan, workdir: Path, procs: list[Proc]) -> None:
    command = [sys.executable, "-m", "choreo", "trim", "--every", str(TRIM_EVERY_S)]
    start_process("trimmer", command, worker_env(ROW, url, 1, plan.env()), workdir / "trimmer.log",
                  procs)


def audit(url: str, plan: SoakPlan) -> tuple[bool, list[str]]:
    """`choreo audit --strict` as a user runs it, with the soak's retention (expired orders are
    then not violations); its last line, and whether it was clean."""
    done = subprocess.run([sys.executable, "-m", "choreo", "audit", "--strict"],
                          env=worker_env(ROW, url, 0, plan.env()), capture_output=True, text=True,
                          timeout=300)
    lines = (done.stdout + done.stderr).strip().splitlines()
    if not lines:
        return False, [f"choreo audit exited {done.returncode}"]
    # A failed audit: its summary, and the first few violations it names.
    return done.returncode == 0, [lines[-1], *lines[:-1][:5]]


def run_soak(plan: SoakPlan, redis_url: str | None) -> SoakRun:
    if redis_url:
        refuse_non_empty(redis_url)
    started: list[int] = []
    bench_plan = Plan(plan.orders, (ROW.name,), plan.replicas)
    with tempfile.TemporaryDirectory(prefix="choreo-soak-") as tmp, \
            running_row(ROW, bench_plan, redis_url, Path(tmp), started, plan.env()) as (target, procs):
        url = target.url
        start_trimmer(url, plan, Path(tmp), procs)
        started.append(procs[-1].popen.pid)
        measured = None if plan.rate else calibrate(url, plan)
        rate = plan.rate or max(1.0, round(measured * DEFAULT_LOAD))
        say(f"soak: {plan.orders} orders at {rate:g}/s, retention {plan.retention_s} s, "
            f"dedup markers {plan.seen_ttl_s} s, stream history {plan.trim_keep_s} s")
        samples, completed = load_and_sample(url, plan, rate, target, procs)
        clean, audit_lines = audit(url, plan)
    return SoakRun(plan, rate, measured, server_version(redis_url), samples, completed, audit_lines,
                   clean, started)


# -- the verdict ---------------------------------------------------------------------------------

def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; 0 when x does not move."""
    n = len(points)
    if n < 2:
        return 0.0
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def trend(samples: list[Sample], plan: SoakPlan, rate: float) -> Trend | None:
    """None when a half has fewer than two samples (a run too short to say anything)."""
    half = plan.orders / 2
    first = [s for s in samples if s.placed <= half]
    second = [s for s in samples if s.placed >= half]
    if len(first) < 2 or len(second) < 2:
        return None

    def per_1000(part: list[Sample], value) -> float:
        return slope([(s.placed, value(s)) for s in part]) * 1000

    return Trend(per_1000(first, lambda s: s.used_memory / 1024),
                 per_1000(second, lambda s: s.used_memory / 1024),
                 per_1000(first, lambda s: s.keys), per_1000(second, lambda s: s.keys),
                 warm=half / rate >= plan.window_s)

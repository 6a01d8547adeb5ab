"""`choreo bench`: choreo and the plain redis-py references (benchmarks/reference.py), measured
in the same run on the same machine, each row on a fresh server, printed side by side. The
cluster rows (opt-in) run choreo on a fresh local Redis Cluster instead, three primaries with a
replica each, with Redis's figures summed over the primaries (docs/cluster.md#figures).

A row: start its worker processes, wait until every consumer group has its consumers, snapshot
Redis's counters and the workers' CPU, place the orders, snapshot again the moment the last
one completes, wait until every group has acknowledged everything (settled), then read Redis's
memory and key count. Speed and memory are measured and printed, never asserted.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import redis

from choreo.benchmarks import reference
from choreo.bus import keys as bus_keys
from choreo.bus import layout
from choreo.bus.connect import redact
from choreo.measure.lifeline import die_with_parent
from choreo.measure.load import percentile
from choreo.measure.redis_cluster import ClusterError, LocalCluster
from choreo.measure.redis_server import RedisServer, find_redis_server
from choreo.workers import keys

SERVICES = ("order", "inventory", "payment", "shipping")
PRODUCT, QUANTITY = 101, 1      # every order: one widget, as `choreo load` places by default
# choreo's comparable rows run without deadlines (the references have none); the +deadlines row
# arms one rq timer per order as a default `choreo load` does.
DEADLINE_S = 300.0
READY_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 30.0
STOP_WAIT_S = 5.0               # as honcho: SIGTERM, then SIGKILL after 5 s
CURVE_STEPS = (25, 50, 75)      # % of the slowest row's maximum: every row runs the same rates
CURVE_STEP_S = 5.0              # a paced step places about this many seconds' worth of orders
PARTITIONS = 8                  # CHOREO_PARTITIONS of the cluster rows, unless --partitions
# The cluster rows' nodes share the machine with the workers and the loader: a node starved of
# CPU for the test fixture's 2 s would be failed over mid-row. Redis's own default, 15 s, is not.
CLUSTER_NODE_TIMEOUT_MS = 15_000


class BenchError(Exception):
    """The run cannot go on (a worker died, a server refused); the message says why."""


@dataclass(frozen=True)
class Row:
    name: str
    kind: str                   # "reference" or "choreo"
    mode: str = ""              # the reference's mode
    deadline_s: float = 0.0     # choreo: each order's deadline, 0 for none
    # choreo on a fresh LocalCluster. Its rows arm no timers: rq would need a plain Redis of its
    # own (CHOREO_TIMERS_URL), and the comparable rows have no deadlines anyway.
    cluster: bool = False
    wait_replicas: int = 0      # CHOREO_WAIT_REPLICAS of the workers and the loader


ROWS = {r.name: r for r in (Row("reference-plain", "reference", "plain"),
                             Row("reference-atomic", "reference", "atomic"),
                             Row("choreo", "choreo"),
                             Row("choreo+deadlines", "choreo", deadline_s=DEADLINE_S),
                             Row("choreo-cluster", "choreo", cluster=True),
                             Row("choreo-cluster+wait", "choreo", cluster=True, wait_replicas=1))}
REFERENCES = ("reference-plain", "reference-atomic")
# Without --rows: the cluster rows start six nodes each, so they are asked for by name.
DEFAULT_ROWS = tuple(name for name, r in ROWS.items() if not r.cluster)
CLUSTER_ROWS = tuple(name for name, r in ROWS.items() if r.cluster)


@dataclass(frozen=True)
class Plan:
    orders: int
    rows: tuple[str, ...]
    replicas: dict[str, int]
    rate: float | None = None
    timeout_s: float = 120.0
    curve: bool = False
    partitions: int = PARTITIONS    # the cluster rows' CHOREO_PARTITIONS
    repeat: int = 1                 # rounds, each running every row in turn (medians reported)


@dataclass
class Latency:
    """What a load run saw: per-order latencies (placed -> completed) and the wall time."""
    latencies_ms: list[float]
    elapsed_s: float

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)


@dataclass
class RowResult:
    name: str
    orders: int
    completed: int
    elapsed_s: float
    orders_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    commands_per_order: float
    commands: dict[str, float]              # per order, by command
    redis_cpu_us_per_order: float
    worker_cpu_us_per_order: float
    redis_bytes_per_order: float
    redis_keys_per_order: float
    peak_rss_mib: dict[str, float]          # by worker
    settled: bool
    # Bytes per order once every stream is trimmed of what every group has acknowledged (the
    # trimmer's work in a steady run): what an order keeps for the retention window.
    redis_bytes_per_order_trimmed: float = 0.0
    # A cluster's replicas apply every write again: their CPU, apart from the primaries' above.
    replica_cpu_us_per_order: float = 0.0
    # Redis CPU by primary ("127.0.0.1:<port>"): how evenly the partitions (and hot keys) spread.
    redis_cpu_us_per_order_by_node: dict[str, float] = field(default_factory=dict)
    ratio: dict[str, dict[str, float]] = field(default_factory=dict)    # reference -> metric -> x


@dataclass
class CurvePoint:
    name: str
    percent: int
    rate: float
    orders: int
    completed: int
    p50_ms: float
    p99_ms: float


# -- processes -----------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str                   # e.g. inventory.2
    popen: subprocess.Popen
    log: Path

    def died(self) -> str:
        tail = self.log.read_text(errors="replace")[-600:] if self.log.exists() else ""
        return f"{self.name} exited with {self.popen.returncode} before the run ended: {tail.strip()}"


def worker_command(row: Row, service: str, url: str, slot: int) -> list[str]:
    # sys.executable -m: works from an installed package, and the pid is the worker's own.
    if row.kind == "reference":
        return [sys.executable, "-m", "choreo.benchmarks.reference", service, "--mode", row.mode,
                "--redis-url", url, "--slot", str(slot)]
    return [sys.executable, "-m", "choreo", "worker", service]


def worker_env(row: Row, url: str, slot: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """extra: settings of the run's own (the soak's short retention), on top of the caller's."""
    # Per-role URLs (REDIS_URL_<ROLE>) would point a worker elsewhere than the bench's server.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("REDIS_URL_") and k != "HONCHO_PROCESS_NAME"}
    # Logs go to stderr, which is the process's log file: per-event lines (INFO) would only cost
    # time and disk; retries, dead letters and reconnects (WARNING and up) stay.
    return {"CHOREO_LOG_LEVEL": "WARNING", **env, **(extra or {}), "REDIS_URL": url, "CHOREO_SLOT": str(slot),
            "PYTHONUNBUFFERED": "1", "CHOREO_ORDER_DEADLINE_S": f"{row.deadline_s:g}",
            "CHOREO_WAIT_REPLICAS": str(row.wait_replicas)}


def start_process(name: str, command: list[str], env: dict[str, str], log: Path,
                  procs: list[Proc]) -> None:
    with open(log, "wb") as err:
        # Own session: a Ctrl-C at the terminal reaches only the bench, which then stops these
        # in order (SIGTERM, wait, SIGKILL) rather than all at once mid-commit.
        # die_with_parent: none outlives a bench that dies without unwinding (see lifeline).
        popen = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                 start_new_session=True, preexec_fn=die_with_parent())
    procs.append(Proc(name, popen, log))


def start_workers(row: Row, url: str, replicas: dict[str, int], logdir: Path, procs: list[Proc],
                  extra_env: dict[str, str] | None = None) -> None:
    """Appends each process as it starts, so a failure part-way still leaves them all to stop."""
    for service in SERVICES:
        for slot in range(1, replicas.get(service, 1) + 1):
            start_process(f"{service}.{slot}", worker_command(row, service, url, slot),
                          worker_env(row, url, slot, extra_env),
                          logdir / f"{row.name}-{service}.{slot}.log", procs)


def stop_all(procs: list[Proc]) -> None:
    """SIGTERM every process group, give them STOP_WAIT_S together, then SIGKILL what is left."""
    for p in procs:
        _signal_group(p.popen, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    for p in procs:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p.popen, signal.SIGKILL)
            p.popen.wait()


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    if popen.poll() is None:
        try:
            os.killpg(popen.pid, sig)
        except ProcessLookupError:
            pass                # exited between poll and kill


def check_alive(procs: list[Proc]) -> None:
    for p in procs:
        if p.popen.poll() is not None:
            raise BenchError(p.died())


def cpu_ticks(pid: int) -> int:
    # /proc/<pid>/stat: utime and stime are fields 14 and 15, after the ")" ending the name.
    fields_ = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields_[11]) + int(fields_[12])


def workers_cpu_s(procs: list[Proc]) -> float:
    return sum(cpu_ticks(p.popen.pid) for p in procs) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the server ---------------------------------------------------------------------------------

@dataclass
class Target:
    """What a row runs on. `url` is what its processes are given; `client` runs key commands (a
    cluster client on a cluster, which routes each key to its node); `primaries` holds a plain
    client per primary, for what a node says of itself (INFO, DBSIZE, CLIENT LIST, SCAN), summed
    over them; `readers` those primaries that hold a stream the workers read; `replicas` a
    cluster's replicas, whose CPU is reported apart."""
    url: str
    client: redis.Redis
    primaries: list[redis.Redis]
    readers: list[redis.Redis]
    replicas: list[redis.Redis] = field(default_factory=list)

    def close(self) -> None:
        for c in {id(c): c for c in (self.client, *self.primaries, *self.replicas)}.values():
            c.close()


@contextmanager
def fresh_target(row: Row, plan: Plan, redis_url: str | None, workdir: Path,
                 started: list[int]) -> Iterator[Target]:
    if row.cluster:
        with fresh_cluster(plan.partitions, started) as target:
            yield target
        return
    with fresh_server(redis_url, workdir, started) as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            yield Target(url, client, [client], [client])
        finally:
            client.close()


@contextmanager
def fresh_server(url: str | None, workdir: Path, started: list[int]) -> Iterator[str]:
    """A throwaway redis-server per row, or the given one, emptied after the row (the bench
    refused it unless it was empty, so everything in it is the bench's own)."""
    if url:
        client = redis.Redis.from_url(url)
        try:
            yield url
        finally:
            client.flushdb()
            client.close()
        return
    server = RedisServer(workdir / f"redis-{len(started)}").start()
    started.append(server.proc.pid)
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def fresh_cluster(partitions: int, started: list[int]) -> Iterator[Target]:
    """A throwaway LocalCluster (three primaries, a replica each), stopped on the way out, and
    this process's layout set to its partitions meanwhile: the loader runs here, and must put
    each order where the workers read it."""
    try:
        # start() stops every node itself if it fails part-way, Ctrl-C included.
        cluster = LocalCluster(node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS).start()
    except ClusterError as exc:
        raise BenchError(str(exc)) from None
    started.extend(p.pid for p in cluster.procs.values())
    previous = layout.use(layout.Layout(partitions, cluster=True))
    target = None
    try:
        client = redis.RedisCluster.from_url(cluster.url.replace("/0?cluster=true", ""),
                                             decode_responses=True)
        primaries = {port: cluster.node(port) for port in cluster.primaries()}
        reading = {client.get_node_from_key(bus_keys.stream("OrderCreated", p)).port
                   for p in range(partitions)}
        target = Target(cluster.url, client, list(primaries.values()),
                        [c for port, c in primaries.items() if port in reading],
                        [cluster.node(port) for port in cluster.replicas()])
        yield target
    finally:
        if target:
            target.close()
        layout.use(previous)
        cluster.stop()


def refuse_non_empty(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        keys = client.dbsize()
    except redis.RedisError as exc:
        raise BenchError(f"cannot use {redact(url)}: {exc}") from None
    finally:
        client.close()
    if keys:
        raise BenchError(f"the database at --redis-url holds {keys} keys; the bench flushes "
                         "between rows, so it runs only on an empty database")


@dataclass(frozen=True)
class Counters:
    """Redis's own counters at one moment, summed over the nodes asked: commands by name, CPU
    seconds."""
    commands: dict[str, int]
    cpu_s: float

    @classmethod
    def read(cls, nodes: list[redis.Redis]) -> "Counters":
        commands: dict[str, int] = {}
        cpu_s = 0.0
        for node in nodes:
            for k, v in node.info("commandstats").items():
                name = k.removeprefix("cmdstat_")
                commands[name] = commands.get(name, 0) + v["calls"]
            cpu = node.info("cpu")
            cpu_s += cpu["used_cpu_sys"] + cpu["used_cpu_user"]
        return cls(commands, cpu_s)

    def minus(self, before: "Counters") -> "Counters":
        return Counters({k: n - before.commands.get(k, 0) for k, n in self.commands.items()
                         if n - before.commands.get(k, 0) > 0}, self.cpu_s - before.cpu_s)


def node_cpu_s(nodes: list[redis.Redis]) -> list[float]:
    return [Counters.read([n]).cpu_s for n in nodes]


def name_of(node: redis.Redis) -> str:
    kwargs = node.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def memory(nodes: list[redis.Redis]) -> tuple[int, int]:
    """Bytes used and keys held, summed over the nodes. Bytes leave out the replication backlog:
    a primary with replicas fills its backlog (up to 1 MB) with every write whatever the data
    holds, and a server without replicas has none."""
    infos = [n.info("memory") for n in nodes]
    return (sum(i["used_memory"] - i.get("mem_replication_backlog", 0) for i in infos),
            sum(n.dbsize() for n in nodes))


def groups_ready(target: Target, row: Row, replicas: dict[str, int]) -> bool:
    """Every service's group exists on every stream it reads, and every worker is reading: a
    client whose last command is XREADGROUP (Redis 7.0 lists a consumer only once it was given
    an entry, so the group's consumer count cannot say it), on every node holding a stream.
    choreo's workers read every partition's stream (bus.layout); the reference has one stream
    per event type."""
    for service in SERVICES:
        for event_type in reference.CONSUMES[service]:
            streams = ([reference.stream(event_type)] if row.kind == "reference"
                       else bus_keys.streams(event_type))
            for stream in streams:
                try:
                    groups = target.client.xinfo_groups(stream)
                except redis.ResponseError:
                    return False                # the stream is not there yet
                if service not in {g["name"] for g in groups}:
                    return False
    workers = sum(replicas.get(s, 1) for s in SERVICES)
    for node in target.readers:
        if sum(c.get("cmd") == "xreadgroup" for c in node.client_list()) < workers:
            return False
    return row.kind == "reference" or target.client.exists(keys.stock(PRODUCT)) == 1


def settled(target: Target) -> bool:
    """Every group on every stream has read and acknowledged every entry."""
    for node in target.primaries:
        # Each node is asked about the streams it holds itself.
        for key in node.scan_iter(match="events:*", _type="stream"):
            for g in node.xinfo_groups(key):
                if g["pending"] or g.get("lag"):
                    return False
    return True


def trim_acknowledged(target: Target) -> None:
    """Called once settled(), when every entry of every stream is acknowledged by every group:
    trim them all, as `choreo trim` keeping no history would (its rule, for choreo's keys, is
    tested in tests/test_trim.py; the references have none)."""
    for node in target.primaries:
        for key in node.scan_iter(match="events:*", _type="stream"):
            node.xtrim(key, maxlen=0)


def wait_for(check: Callable[[], bool], timeout_s: float, procs: list[Proc]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive(procs)
        if check():
            return True
        time.sleep(0.05)
    return False


# -- placing orders and learning outcomes --------------------------------------------------------

CHUNK = 200                     # orders per round trip, as `choreo load`


def load_reference(client: redis.Redis, orders: int, rate: float | None, timeout_s: float) -> Latency:
    """XADD OrderCreated entries (in chunks, paced like `choreo load`); an order is complete when
    its ShippingArranged entry is read back (XREAD BLOCK, the loader's only poll). Latency: the
    loader's clock from just before the XADD to just after the read."""
    placed_ms: dict[str, float] = {}
    done: list[float] = []
    # A curve's later steps run on the same server: start after what earlier steps left.
    cursor = client.xinfo_stream(reference.stream("ShippingArranged"))["last-generated-id"]
    first_id = client.xlen(reference.stream("OrderCreated")) + 1
    step = max(1, min(CHUNK, int(rate / 20))) if rate else CHUNK
    start = time.monotonic()
    while len(done) < orders and time.monotonic() < start + timeout_s:
        n = len(placed_ms)
        due = start + n / rate if rate else 0.0
        block_ms: int | None = 1000                     # all placed: wait for the rest
        if n < orders and time.monotonic() >= due:
            _place_chunk(client, first_id + n, min(step, orders - n), placed_ms)
            block_ms = None                             # look, without waiting, and place on
        elif n < orders:
            block_ms = max(1, int((due - time.monotonic()) * 1000))
        cursor = _read_completions(client, cursor, block_ms, placed_ms, done)
    return Latency(done, time.monotonic() - start)


def _place_chunk(client: redis.Redis, first: int, n: int, placed_ms: dict[str, float]) -> None:
    pipe = client.pipeline(transaction=False)
    ids = [str(first + i) for i in range(n)]
    for order_id in ids:
        lines = [{"product_id": PRODUCT, "quantity": QUANTITY}]
        pipe.xadd(reference.stream("OrderCreated"),
                  reference.event("OrderCreated", order_id, "order", {"lines": lines, "total_cents": 1999}))
    now_ms = time.time() * 1000
    placed_ms.update((o, now_ms) for o in ids)
    pipe.execute()


def _read_completions(client: redis.Redis, cursor: str, block_ms: int | None, placed_ms: dict[str, float],
                      done: list[float]) -> str:
    reply = client.xread({reference.stream("ShippingArranged"): cursor}, count=1000, block=block_ms)
    now_ms = time.time() * 1000
    for _, entries in reply or ():
        for entry_id, fields in entries:
            cursor = entry_id
            done.append(now_ms - placed_ms[fields["order_id"]])
    return cursor


def load_choreo(url: str, orders: int, rate: float | None, timeout_s: float, deadline_s: float,
                wait_replicas: int = 0) -> Latency:
    """`choreo load`'s own machinery, in this process: what the saga's users run. On a cluster
    (`?cluster=true`) it places and watches by this process's layout (fresh_cluster sets it)."""
    from choreo.bus.connect import open_bus
    from choreo.measure.load import LoadPlan, run_load
    plan = LoadPlan(orders, timeout_s, PRODUCT, QUANTITY, rate=rate, deadline_s=deadline_s)
    with open_bus(url, wait_replicas=wait_replicas) as bus:
        result = run_load(bus, plan)
    return Latency(list(result.latencies_ms), result.elapsed_s)


def load(row: Row, target: Target, orders: int, rate: float | None, timeout_s: float) -> Latency:
    if row.kind == "reference":
        return load_reference(target.client, orders, rate, timeout_s)
    return load_choreo(target.url, orders, rate, timeout_s, row.deadline_s, row.wait_replicas)


# -- one row -------------------------------------------------------------------------------------

def say(line: str) -> None:
    # stderr: stdout carries only the tables (or the JSON).
    print(f"bench: {line}", file=sys.stderr, flush=True)


@contextmanager
def running_row(row: Row, plan: Plan, redis_url: str | None, workdir: Path, started: list[int],
                extra_env: dict[str, str] | None = None) -> Iterator[tuple[Target, list[Proc]]]:
    """A fresh server (or cluster) with the row's workers started and ready; stops them all on
    the way out, and any process the caller appended to the list meanwhile, then the server."""
    with fresh_target(row, plan, redis_url, workdir, started) as target:
        procs: list[Proc] = []
        env = {**(extra_env or {}), **({"CHOREO_PARTITIONS": str(plan.partitions)} if row.cluster else {})}
        try:
            start_workers(row, target.url, plan.replicas, workdir, procs, env)
            started.extend(p.popen.pid for p in procs)
            if not wait_for(lambda: groups_ready(target, row, plan.replicas), READY_TIMEOUT_S, procs):
                raise BenchError(f"{row.name}: the workers did not join their groups within "
                                 f"{READY_TIMEOUT_S:g} s (logs: {workdir})")
            yield target, procs
        finally:
            stop_all(procs)


def measure_row(row: Row, plan: Plan, redis_url: str | None, workdir: Path,
                started: list[int]) -> RowResult:
    with running_row(row, plan, redis_url, workdir, started) as (target, procs):
        mem_before, cpu_before = memory(target.primaries), workers_cpu_s(procs)
        nodes_before = node_cpu_s(target.primaries)
        counters_before, replicas_before = Counters.read(target.primaries), Counters.read(target.replicas)
        seen = load(row, target, plan.orders, plan.rate, plan.timeout_s)
        # Counters now, before the settle polling below adds commands of the bench's own.
        spent, worker_s = Counters.read(target.primaries).minus(counters_before), workers_cpu_s(procs) - cpu_before
        replica_s = Counters.read(target.replicas).cpu_s - replicas_before.cpu_s
        by_node = {name_of(n): s - before for n, s, before in
                   zip(target.primaries, node_cpu_s(target.primaries), nodes_before)}
        calm = wait_for(lambda: settled(target), SETTLE_TIMEOUT_S, procs)
        mem_after = memory(target.primaries)
        rss = {p.name: peak_rss_mib(p.popen.pid) for p in procs}
        trimmed = None
        if calm:
            trim_acknowledged(target)
            trimmed = memory(target.primaries)
    result = summarise(row, plan.orders, seen, spent, worker_s, mem_before, mem_after, rss, calm)
    if trimmed is not None:
        result.redis_bytes_per_order_trimmed = (trimmed[0] - mem_before[0]) / plan.orders
    result.replica_cpu_us_per_order = replica_s * 1e6 / plan.orders
    result.redis_cpu_us_per_order_by_node = {k: s * 1e6 / plan.orders for k, s in by_node.items()}
    return result


def summarise(row: Row, orders: int, seen: Latency, spent: Counters, worker_s: float,
              mem_before: tuple[int, int], mem_after: tuple[int, int], rss: dict[str, float],
              calm: bool) -> RowResult:
    lat = sorted(seen.latencies_ms)
    # INFO's own calls, made by the bench between the two snapshots, are not the system's work.
    commands = {k: n / orders for k, n in sorted(spent.commands.items(), key=lambda kv: -kv[1])
                if k != "info"}
    return RowResult(
        row.name, orders, seen.completed, seen.elapsed_s,
        seen.completed / seen.elapsed_s if seen.elapsed_s else 0.0,
        percentile(lat, 50), percentile(lat, 99), lat[-1] if lat else 0.0,
        sum(commands.values()), commands, spent.cpu_s * 1e6 / orders, worker_s * 1e6 / orders,
        (mem_after[0] - mem_before[0]) / orders, (mem_after[1] - mem_before[1]) / orders, rss, calm)


RATIO_METRICS = ("orders_per_s", "p50_ms", "p99_ms", "commands_per_order", "redis_cpu_us_per_order",
                 "worker_cpu_us_per_order", "redis_bytes_per_order", "redis_bytes_per_order_trimmed",
                 "redis_keys_per_order")


def add_ratios(results: list[RowResult]) -> None:
    """Each row's metrics divided by each reference's, where the reference's is not zero."""
    refs = {r.name: r for r in results if r.name in REFERENCES}
    for r in results:
        r.ratio = {name: {m: getattr(r, m) / getattr(ref, m) for m in RATIO_METRICS if getattr(ref, m)}
                   for name, ref in refs.items()}


MEDIAN_FIELDS = ("elapsed_s", "orders_per_s", "p50_ms", "p99_ms", "max_ms", "commands_per_order",
                 "redis_cpu_us_per_order", "worker_cpu_us_per_order", "redis_bytes_per_order",
                 "redis_keys_per_order", "redis_bytes_per_order_trimmed", "replica_cpu_us_per_order")


def _medians(dicts: list[dict[str, float]], missing: float | None = None) -> dict[str, float]:
    """Key by key, the median over the dicts, a dict without the key counting as `missing`
    (None: left out, as a ratio to a reference's zero is)."""
    keys_ = dict.fromkeys(k for d in dicts for k in d)
    if missing is None:
        return {k: statistics.median(d[k] for d in dicts if k in d) for k in keys_}
    return {k: statistics.median(d.get(k, missing) for d in dicts) for k in keys_}


def combine(rounds: list[list[RowResult]]) -> list[RowResult]:
    """One row per name from several rounds (each already given its ratios): each figure the
    median of the rounds' (a command a round did not run counts 0 there), each ratio the median
    of the rounds' own ratios (rows of one round ran minutes apart, under much the same load of
    the machine), peak RSS the highest, completed the fewest, and Redis CPU by node the median
    round's (by orders/s: each round's servers have ports of their own)."""
    out = []
    for place, first in enumerate(rounds[0]):
        same = [rows[place] for rows in rounds]
        r = replace(first, **{f: statistics.median(getattr(x, f) for x in same) for f in MEDIAN_FIELDS})
        r.completed = min(x.completed for x in same)
        r.settled = all(x.settled for x in same)
        r.commands = _medians([x.commands for x in same], missing=0.0)
        median_round = sorted(same, key=lambda x: x.orders_per_s)[len(same) // 2]
        r.redis_cpu_us_per_order_by_node = dict(median_round.redis_cpu_us_per_order_by_node)
        r.peak_rss_mib = {k: max(x.peak_rss_mib.get(k, 0.0) for x in same)
                          for k in dict.fromkeys(k for x in same for k in x.peak_rss_mib)}
        r.ratio = {ref: _medians([x.ratio[ref] for x in same if ref in x.ratio])
                   for ref in dict.fromkeys(ref for x in same for ref in x.ratio)}
        out.append(r)
    return out


# -- the curve -----------------------------------------------------------------------------------

def curve_rates(results: list[RowResult]) -> list[tuple[int, float]]:
    """The same paced rates for every row, so their latencies compare: percentages of the slowest
    row's maximum, which every row can then sustain."""
    slowest = min(r.orders_per_s for r in results)
    return [(pct, max(1.0, round(slowest * pct / 100))) for pct in CURVE_STEPS]


def measure_curve(row: Row, plan: Plan, rates: list[tuple[int, float]], redis_url: str | None,
                  workdir: Path, started: list[int]) -> list[CurvePoint]:
    points = []
    with running_row(row, plan, redis_url, workdir, started) as (target, procs):
        for pct, rate in rates:
            n = min(plan.orders, max(100, int(rate * CURVE_STEP_S)))
            say(f"{row.name}: {n} orders paced at {rate:g}/s ({pct}% of the slowest maximum)")
            seen = load(row, target, n, rate, plan.timeout_s)
            lat = sorted(seen.latencies_ms)
            points.append(CurvePoint(row.name, pct, rate, n, seen.completed,
                                     percentile(lat, 50), percentile(lat, 99)))
            wait_for(lambda: settled(target), SETTLE_TIMEOUT_S, procs)
    return points


# -- the whole run -------------------------------------------------------------------------------

@dataclass
class BenchRun:
    plan: Plan
    redis_version: str
    results: list[RowResult]                # the rounds' medians (the one round's rows, with one)
    curve: list[CurvePoint]
    processes: list[int]                    # every pid the bench started, all stopped by now
    rounds: list[list[RowResult]] = field(default_factory=list)     # each round's rows, as measured


def run_bench(plan: Plan, redis_url: str | None) -> BenchRun:
    if redis_url:
        refuse_non_empty(redis_url)
    started: list[int] = []
    with tempfile.TemporaryDirectory(prefix="choreo-bench-") as tmp:
        workdir = Path(tmp)
        rounds = []
        for n in range(plan.repeat):
            results = []
            for name in plan.rows:
                on = f" on a 3-primary cluster, {plan.partitions} partitions" if ROWS[name].cluster else ""
                say(f"{name}: {plan.orders} orders" + (f" at {plan.rate:g}/s" if plan.rate else " placed up front")
                    + on + (f" (round {n + 1} of {plan.repeat})" if plan.repeat > 1 else ""))
                results.append(measure_row(ROWS[name], plan, redis_url, workdir, started))
            add_ratios(results)
            rounds.append(results)
        results = combine(rounds) if plan.repeat > 1 else rounds[0]
        curve = []
        if plan.curve:
            rates = curve_rates(results)
            for name in plan.rows:
                curve += measure_curve(ROWS[name], plan, rates, redis_url, workdir, started)
    return BenchRun(plan, server_version(redis_url), results, curve, started, rounds)


def server_version(redis_url: str | None) -> str:
    if redis_url:
        client = redis.Redis.from_url(redis_url)
        try:
            return client.info("server")["redis_version"]
        finally:
            client.close()
    out = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True)
    return out.stdout.split("v=")[1].split()[0] if "v=" in out.stdout else "?"

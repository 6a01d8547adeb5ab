"""Where a worker's time goes, handling a backlog: N orders placed on a throwaway redis-server,
then the four services' workers driven in this one process, round robin, each poll a batch, until
none has anything left. What `choreo bench` measures end to end, taken apart per service:

    python -m choreo.benchmarks.profile --orders 3000
    python -m choreo.benchmarks.profile --orders 1000 --callgrind
    python -m choreo.benchmarks.profile --orders 300 --callgrind --keep cg
    python -m choreo.benchmarks.profile --orders 3000 --cprofile workers.prof

It prints the workers' CPU per order by service (time.process_time around each poll) and the
server's (INFO cpu), both for the draining alone, not the placing. Here CPU time moves by ±25%
from run to run; --callgrind counts instructions instead, which repeat to 0.1% whatever else the
machine does: it runs this process and the server under valgrind's callgrind, counting only while
the workers drain (callgrind_control), and prints instructions per order for each. That is the
measure to compare two versions of the hot path by (slow: ~30 s for 300 orders). --cprofile
writes the workers' cProfile (pstats) to a file; the CPU figures then include the profiler's own.
--keep DIR keeps callgrind's two out files there (cg.workers, cg.redis), for callgrind_annotate.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CALLGRIND = "CHOREO_PROFILE_CALLGRIND"      # set in the process run under valgrind: its out file


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m choreo.benchmarks.profile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=3000, help="orders placed up front (default 3000)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions with valgrind")
    parser.add_argument("--cprofile", metavar="FILE", help="write the workers' cProfile stats here")
    parser.add_argument("--keep", metavar="DIR", help="with --callgrind: keep its out files in DIR")
    args = parser.parse_args(argv)
    if args.orders < 1:
        parser.error("--orders must be at least 1")
    if args.callgrind and args.cprofile:
        parser.error("--callgrind and --cprofile measure one at a time")
    if args.keep and not args.callgrind:
        parser.error("--keep keeps --callgrind's out files: add --callgrind")
    if args.callgrind and not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        parser.error("--callgrind needs valgrind (Debian: apt-get install valgrind)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.callgrind and CALLGRIND not in os.environ:
        return _under_callgrind(args)
    from choreo.measure.redis_server import RedisServer
    with tempfile.TemporaryDirectory(prefix="choreo-profile-") as workdir:
        out = os.environ.get(CALLGRIND)
        wrapper = (("valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}.redis") if out else ())
        server = RedisServer(Path(workdir), wrapper=wrapper).start(timeout_s=60 if out else 10)
        try:
            return _drain(server, args, counting=out is not None)
        finally:
            server.stop()


def _drain(server, args: argparse.Namespace, counting: bool) -> int:
    os.environ["CHOREO_ORDER_DEADLINE_S"] = "0"     # choreo bench's `choreo` row: no timers
    from choreo.bus.connect import open_bus
    from choreo.config.settings import Settings
    from choreo.measure.bench import PRODUCT, QUANTITY     # choreo bench's order: one widget
    from choreo.orders import OrderRequest, new_order_ids, place_orders
    from choreo.scheduling.timers import RqTimers
    from choreo.workers import PUBLISHERS, SERVICES, keys
    from choreo.workers.runtime import Worker, tune_gc
    logging.disable(logging.INFO)                   # as the bench's workers: WARNING and up
    settings = Settings.from_env(env={**os.environ, "REDIS_URL": server.url})
    bus = open_bus(server.url, check=False)
    workers = {name: Worker(s, bus, settings, f"{name}-profile", publishers=PUBLISHERS,
                            timers=RqTimers(bus)) for name, s in SERVICES.items()}
    for w in workers.values():
        w.start()
    ids = new_order_ids(bus, args.orders)
    for i in range(0, len(ids), 100):
        place_orders(bus, [OrderRequest(o, [{"product_id": PRODUCT, "quantity": QUANTITY}])
                           for o in ids[i:i + 100]])
    tune_gc()
    profile = cProfile.Profile() if args.cprofile else None
    cpu = dict.fromkeys(workers, 0.0)
    server_cpu = _cpu_s(bus)
    if counting:
        _count(os.getpid(), server.proc.pid, "on")
    began, idle = time.perf_counter(), 0
    while idle < 3:                                 # three rounds with nothing to do: drained
        handled = 0
        for name, w in workers.items():
            start = time.process_time()
            if profile:
                profile.enable()
            handled += w.poll(block_ms=0)
            if profile:
                profile.disable()
            cpu[name] += time.process_time() - start
        idle = 0 if handled else idle + 1
    elapsed = time.perf_counter() - began
    if counting:
        _count(os.getpid(), server.proc.pid, "off")
    server_cpu = _cpu_s(bus) - server_cpu
    done = sum(int(bus.client.hget(k, "COMPLETED") or 0) for k in keys.every(keys.orders_by_status))
    bus.close()
    n = args.orders
    print(f"{n} orders drained in {elapsed:.2f} s, {done} completed")
    print("workers CPU µs per order: " + ", ".join(f"{k} {v * 1e6 / n:.0f}" for k, v in cpu.items())
          + f"; together {sum(cpu.values()) * 1e6 / n:.0f}")
    print(f"redis-server CPU µs per order: {server_cpu * 1e6 / n:.0f}")
    if profile:
        profile.dump_stats(args.cprofile)
        print(f"cProfile stats: {args.cprofile} (python -m pstats {args.cprofile})")
    return 0 if done == n else 1


def _cpu_s(bus) -> float:
    info = bus.client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _count(pid: int, server_pid: int, state: str) -> None:
    for p in (pid, server_pid):
        subprocess.run(["callgrind_control", "-i", state, str(p)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _under_callgrind(args: argparse.Namespace) -> int:
    """This command again under callgrind (and its server too), then instructions per order."""
    with tempfile.TemporaryDirectory(prefix="choreo-callgrind-") as workdir:
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
        out = Path(args.keep or workdir).resolve() / "cg"
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.workers",
             sys.executable, "-m", "choreo.benchmarks.profile", "--orders", str(args.orders), "--callgrind"],
            env={**os.environ, CALLGRIND: str(out)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        print(run.stdout.splitlines()[0] if run.stdout else "the run under valgrind printed nothing")
        if run.returncode:
            # valgrind's own lines start with ==pid==: what is left is the run's
            print("\n".join(line for line in run.stderr.splitlines() if not line.startswith("==")),
                  file=sys.stderr)
            return run.returncode
        counted = {part: _total(Path(f"{out}.{part}")) for part in ("workers", "redis")}
    n = args.orders
    print(f"instructions per order (callgrind): workers {counted['workers'] / n:,.0f}, "
          f"redis-server {counted['redis'] / n:,.0f}")
    if args.keep:
        print(f"callgrind out files: {out}.workers, {out}.redis (callgrind_annotate FILE)")
    return 0


def _total(path: Path) -> int:
    """callgrind's count of instructions in one out file (its `totals:` line)."""
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"{path}: no totals")


if __name__ == "__main__":
    sys.exit(main())

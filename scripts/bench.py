"""Throughput, latency and worker memory of the saga on this machine, printed, never asserted.

    .venv/bin/python scripts/bench.py                      # 5 runs of 5000 orders, 1 worker per service
    .venv/bin/python scripts/bench.py --orders 2000 --runs 3 --inventory 3

It starts a throwaway redis-server on a free port (nothing persisted), the four workers as real
`choreo worker` processes (as the Procfile does), runs `choreo load` --runs times, prints each
figures line, then the medians and each worker's peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

BIN = Path(sys.executable).parent


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def parse(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in (pair.split("=") for pair in line.split())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--inventory", type=int, default=1, help="inventory workers")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        env = {**os.environ, "REDIS_URL": server.url, "PYTHONUNBUFFERED": "1"}
        env.pop("HONCHO_PROCESS_NAME", None)
        slots = [("order", 1), ("payment", 1), ("shipping", 1)] + \
            [("inventory", n) for n in range(1, args.inventory + 1)]
        workers = {f"{s}.{n}": subprocess.Popen(
            [str(BIN / "choreo"), "worker", s], env={**env, "CHOREO_SLOT": str(n)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for s, n in slots}
        try:
            time.sleep(1.5)
            runs = []
            for _ in range(args.runs):
                done = subprocess.run([str(BIN / "choreo"), "load", "--orders", str(args.orders)],
                                      env=env, capture_output=True, text=True, check=True)
                line = done.stdout.strip().splitlines()[-1]
                print(line, flush=True)
                runs.append(parse(line))
            med = {k: statistics.median(r[k] for r in runs)
                   for k in ("orders_per_s", "p50_ms", "p99_ms", "elapsed_s")}
            print(f"median of {args.runs}: orders_per_s={med['orders_per_s']:.1f} "
                  f"p50_ms={med['p50_ms']:.1f} p99_ms={med['p99_ms']:.1f} elapsed_s={med['elapsed_s']:.3f}")
            print("peak RSS MiB: " + " ".join(f"{name}={peak_rss_mib(p.pid):.1f}"
                                               for name, p in workers.items()))
            print(f"redis used_memory MiB: {server.client().info('memory')['used_memory'] / 2**20:.1f} "
                  f"after {args.runs * args.orders} orders")
        finally:
            for p in workers.values():
                p.terminate()
            for p in workers.values():
                p.wait(10)
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

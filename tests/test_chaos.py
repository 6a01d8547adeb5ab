"""Chaos: two replicas of each service under `choreo load --orders 1000` while a supervisor SIGKILLs
a random worker every ~0.5 s and restarts it in the same slot. Afterwards every order is terminal,
`choreo audit --strict` is clean and there are no dead letters."""

from __future__ import annotations

import random
import signal
import subprocess
import time

from choreo.bus import keys as bus_keys
from tests.conftest import BIN, ROOT
from tests.helpers import wait_for
from choreo.workers import SERVICES

CHAOS_ENV = {"CHOREO_CLAIM_IDLE_MS": 1500, "CHOREO_CLAIM_EVERY_S": 0.5, "CHOREO_BATCH_SIZE": 20}


def drained(r) -> bool:
    for service in SERVICES.values():
        for stream in service.streams:
            for g in r.xinfo_groups(stream) if r.exists(stream) else []:
                if g["pending"] or g["lag"]:
                    return False
    return True


def sigkills_under_load(procs, env: dict, orders: int, rate: int, seed: int, ready) -> tuple[int, str]:
    """Two workers per service on `procs` (a Processes), `choreo load --orders N --rate R`
    running while a random worker is SIGKILLed every 0.3-0.7 s and restarted in its slot; waits
    for the load and checks it finished every order. (kills, the load's figures line)"""
    rng = random.Random(seed)
    slots = {(s, n): procs.worker(s, slot=n, **env) for s in SERVICES for n in (1, 2)}
    wait_for(ready, what="workers up")
    load = subprocess.Popen([str(BIN / "choreo"), "load", "--orders", str(orders), "--rate", str(rate),
                             "--timeout", "150"],
                            env=procs.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    kills, deadline = 0, time.monotonic() + 150
    while load.poll() is None and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 0.7))
        victim = rng.choice(sorted(slots))
        slots[victim].send_signal(signal.SIGKILL)
        slots[victim].wait(5)
        kills += 1
        slots[victim] = procs.worker(victim[0], slot=victim[1], **env)
    out, err = load.communicate(timeout=30)
    figures = out.strip().splitlines()[-1] if out.strip() else ""
    assert load.returncode == 0, err
    assert f"orders={orders} completed={orders} " in figures
    assert kills >= 10
    return kills, figures


def test_random_sigkills_under_load_lose_and_double_nothing(procs, redis_server):
    r = redis_server.client()
    kills, figures = sigkills_under_load(procs, CHAOS_ENV, 1000, 60, seed=20261128,
                                         ready=lambda: r.exists("stock:101"))
    print(f"\nchaos: {kills} SIGKILLs survived; load: {figures}")
    wait_for(lambda: drained(r), timeout=60, what="every group drained")
    audit = procs.run("audit", "--strict")
    print("audit:", audit.stdout.strip())
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert all(r.xlen(bus_keys.dead_letters(s)) == 0 for s in SERVICES)

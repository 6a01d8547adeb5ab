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


def test_random_sigkills_under_load_lose_and_double_nothing(procs, redis_server):
    rng = random.Random(20261128)
    slots = {(s, n): procs.worker(s, slot=n, **CHAOS_ENV) for s in SERVICES for n in (1, 2)}
    r = redis_server.client()
    wait_for(lambda: r.exists("stock:101"), what="workers up")
    load = subprocess.Popen([str(BIN / "choreo"), "load", "--orders", "1000", "--rate", "60",
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
        slots[victim] = procs.worker(victim[0], slot=victim[1], **CHAOS_ENV)
    out, err = load.communicate(timeout=30)
    figures = out.strip().splitlines()[-1]
    print(f"\nchaos: {kills} SIGKILLs survived; load: {figures}")
    assert load.returncode == 0, err
    assert "orders=1000 completed=1000 " in figures
    assert kills >= 10
    wait_for(lambda: drained(r), timeout=60, what="every group drained")
    audit = procs.run("audit", "--strict")
    print("audit:", audit.stdout.strip())
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert all(r.xlen(bus_keys.dead_letters(s)) == 0 for s in SERVICES)

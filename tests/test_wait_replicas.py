"""CHOREO_WAIT_REPLICAS on a real redis-server with no replica: WAIT can only time out, so every
commit stands, waited the timeout, and is counted; the worker says so in a warning."""

from __future__ import annotations

import logging
import time

from choreo.bus.connect import open_bus
from choreo.config.settings import Settings
from choreo.workers import SERVICES, keys
from choreo.workers.runtime import Worker
from choreo.workers.unit_of_work import BatchView, UnitOfWork
from tests.helpers import log_lines


def commit_one(bus, order_id: str):
    uow = UnitOfWork("order", (), BatchView(bus))
    uow.set(keys.order(order_id), status="X")
    return bus.commit("", [uow.to_commit()])[0]


def test_a_commit_no_replica_confirms_stands_after_the_timeout_and_is_counted(redis_url):
    with open_bus(redis_url, wait_replicas=1, wait_timeout_ms=50) as bus:
        began = time.monotonic()
        assert commit_one(bus, "w1").name == "APPLIED"
        assert time.monotonic() - began >= 0.05
        assert bus.short_waits == 1
        assert bus.client.hget(keys.order("w1"), "status") == "X"
    with open_bus(redis_url) as bus:                    # off: no WAIT, nothing counted
        assert commit_one(bus, "w2").name == "APPLIED" and bus.short_waits == 0


def test_the_worker_warns_of_commits_no_replica_confirmed(redis_url, caplog):
    caplog.set_level(logging.WARNING)
    settings = Settings(redis_url=redis_url, wait_replicas=1, wait_timeout_ms=20)
    with open_bus(redis_url, wait_replicas=1, wait_timeout_ms=20) as bus:
        worker = Worker(SERVICES["order"], bus, settings, "order-test-1", timers=_NoTimers())
        worker.start()
        commit_one(bus, "w3")
        worker.poll(block_ms=1)
    lines = [l for l in log_lines(caplog) if "CHOREO_WAIT_REPLICAS" in l]
    assert len(lines) == 1 and "1 commits were not confirmed by 1 replica(s) within 20 ms" in lines[0]


class _NoTimers:
    def schedule(self, calls):
        pass

    def unschedule(self, job_ids):
        pass


def test_a_timers_event_waits_for_replicas_as_the_timers_process_is_told(procs, redis_server):
    """CHOREO_WAIT_REPLICAS on `choreo timers`: the commit that publishes a due timer's event
    (DeadlinePassed) waits as a worker's does. Its job is done once it ran, so an event lost in
    a failover would never fire again. Here only the timers wait: every WAIT is theirs."""
    from tests.helpers import wait_for
    r = redis_server.client()

    def waits() -> int:
        return int(r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))

    before = waits()                                     # (the server's count since it started)
    for s in ("order", "inventory", "shipping"):
        procs.worker(s)                                  # payment is down: the order cannot finish
    procs.start("timers", name="timers", CHOREO_WAIT_REPLICAS=1, CHOREO_WAIT_TIMEOUT_MS=10)
    assert procs.run("place-order", "--product", "101", "--quantity", "1", "--deadline", "1").returncode == 0
    wait_for(lambda: r.xlen("events:DeadlinePassed") == 1, timeout=20, what="the deadline fired")
    wait_for(lambda: waits() > before, what="the timer's commit waited")
    wait_for(lambda: r.hget(keys.order("1"), "status") == "CANCELLED", timeout=20, what="cancelled")

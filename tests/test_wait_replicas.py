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

"""The four services as in-process Worker objects on one bus, polled round-robin (as `choreo demo`
does): real handlers and real commits, deterministic enough to build known states for tests."""

from __future__ import annotations

import time

from choreo.config.settings import Settings
from choreo.workers import SERVICES
from choreo.workers.runtime import Worker


def start_workers(bus, settings: Settings | None = None, names=tuple(SERVICES)) -> list[Worker]:
    workers = [Worker(SERVICES[n], bus, settings or Settings(), f"{n}-test-1")
               for n in names]
    for w in workers:
        w.start()
    return workers


def drain(workers: list[Worker], timeout_s: float = 15.0) -> None:
    """Poll until a whole round finds nothing to do."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sum(w.poll(block_ms=0) for w in workers):
            return
    raise AssertionError(f"workers still busy after {timeout_s}s")

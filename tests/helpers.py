"""Small waits and reads shared by the integration tests."""

from __future__ import annotations

import time


def wait_for(predicate, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pending_count(client, stream, group) -> int:
    try:
        return client.xpending(stream, group)["pending"]
    except Exception:
        return 0


def order_statuses(client) -> dict[str, int]:
    return {k: int(v) for k, v in client.hgetall("orders:by_status").items() if int(v)}

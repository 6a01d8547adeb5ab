"""Small waits and reads shared by the integration tests."""

from __future__ import annotations

import logging
import re
import time

import redis

# The tutorial's eight lines for order 1, which `choreo demo` prints and `choreo trace` tells.
EIGHT = """OrderService: Creating order 1
OrderService: Order 1 created
InventoryService: Checking inventory for order 1
InventoryService: Inventory checked for order 1
PaymentService: Processing payment for order 1
PaymentService: Payment processed for order 1
ShippingService: Arranging shipping for order 1
ShippingService: Shipping arranged for order 1""".splitlines()

# `choreo load`'s last line of stdout: orders, completed, ..., outages (count) and outage_s.
FIGURES = re.compile(r"^orders=(\d+) completed=(\d+) elapsed_s=[\d.]+ orders_per_s=[\d.]+ "
                     r"p50_ms=[\d.]+ p99_ms=[\d.]+ outages=(\d+) outage_s=([\d.]+)$")


def log_lines(caplog, level: int = logging.DEBUG, logger: str | None = None) -> list[str]:
    """The lines a worker logged (of `level` or above, on `logger` or any), as the plain format
    prints them (choreo.logs): set caplog.set_level(logging.INFO) first, or the per-event lines
    never reach the capture."""
    from choreo.logs import PlainFormatter
    plain = PlainFormatter()
    return [plain.format(r) for r in caplog.records
            if r.levelno >= level and logger in (None, r.name)]


def wait_for(predicate, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pending_count(client, stream, group) -> int:
    """Entries pending in `group`; 0 while the stream or the group does not exist yet (NOGROUP).
    Any other error is raised: a broken read must never pass for "nothing pending"."""
    try:
        return client.xpending(stream, group)["pending"]
    except redis.ResponseError as exc:
        if str(exc).startswith("NOGROUP"):
            return 0
        raise


def order_statuses(client) -> dict[str, int]:
    return {k: int(v) for k, v in client.hgetall("orders:by_status").items() if int(v)}


def record(client, key: str) -> dict[str, str]:
    """A record as its readers see it: its hash, or once settled and filed, its fields in its
    bucket (bus.keys.filed); {} for neither."""
    from choreo.bus.redis_streams import read_records
    return read_records(client, [key])[0]

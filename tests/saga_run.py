"""A real run of the four workers to a drained state, shared by the dlq and audit tests."""

from __future__ import annotations

from choreo.bus.trim import declared_groups
from tests.helpers import wait_for
from choreo.workers import SERVICES

# One order for each way a saga ends: (product, quantity) -> the status it must end in.
MIX = (
    (101, 1, "COMPLETED"),
    (101, 2, "COMPLETED"),
    (103, 6, "REJECTED"),       # product 103 starts with 5 in stock
    (102, 101, "CANCELLED"),    # 504,899 cents: over the card limit, PaymentFailed
    (101, 60, "CANCELLED"),     # 60 items do not fit one parcel: ShippingFailed, refunded
)


def drained(client) -> bool:
    """Every declared group exists where its stream does, has read everything and acked it."""
    for stream, names in declared_groups(SERVICES.values()).items():
        if not client.exists(stream):
            continue
        groups = {g["name"]: g for g in client.xinfo_groups(stream)}
        for name in names:
            g = groups.get(name)
            if g is None or g["pending"] or g["lag"] != 0:
                return False
    return True


def all_terminal(client) -> bool:
    ids = client.zrange("orders:index", 0, -1)
    statuses = [client.hget(f"order:{i}", "status") for i in ids]
    return bool(ids) and all(s in ("COMPLETED", "REJECTED", "CANCELLED") for s in statuses)


def start_workers(procs) -> None:
    for name in SERVICES:
        procs.worker(name)


def place_mix(procs) -> dict[str, str]:
    """Places MIX; order id -> expected final status."""
    expected = {}
    for product, quantity, status in MIX:
        done = procs.run("place-order", "--product", str(product), "--quantity", str(quantity))
        assert done.returncode == 0, done.stderr
        expected[done.stdout.strip()] = status
    return expected


def settle(client, timeout: float = 60) -> None:
    wait_for(lambda: all_terminal(client) and drained(client), timeout=timeout,
             what="every order terminal and every group drained")

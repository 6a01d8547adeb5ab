"""What a settled order costs Redis in memory, kept in the layout the saga used before it filed
settled records, in the one it uses now, and in one more that would take it further: one process,
no workers, the records of N completed orders written straight into an empty database, INFO
memory used_memory before and after, divided by N.

    python -m choreo.benchmarks.record_layouts --redis-url redis://127.0.0.1:6379/9 --orders 20000

The records are a completed order's, as the saga leaves them (docs/keys.md): its order hash,
reservation SOLD, payment CHARGED, shipment BOOKED, each with the trace field of the event its
service published, and its index entry. Layouts:

    own-keys      four hashes with an expiry each, one index sorted set per partition (before
                  settled records were filed)
    filed         as the saga keeps them now: the order in its hash; the reservation, payment and
                  shipment as fields of their kinds' buckets of 64 orders, their values packed by
                  bus.filing.pack with the fields the services declare (Service.filed_fields),
                  one expiry per bucket
    filed+index   the same, with the index in sorted sets of 64 orders as well (not built)

It writes only into the database given, refuses one that is not empty, and empties it again
between layouts and at the end.
"""

from __future__ import annotations

import argparse
import sys

import redis

BUCKET = 64
RETENTION_S = 86400
T0 = 1796630400016


def order(i: int) -> dict[str, str]:
    return {"id": str(i), "status": "COMPLETED", "lines": '[{"product_id":101,"quantity":1}]',
            "total_cents": "1999", "created_at_ms": str(T0 + i),
            f"events:OrderCreated {T0 + i}-6": "", "_v": "2", "ended_at_ms": str(T0 + i + 54),
            "ended_by": "ShippingArranged", "reason": "", "tracking_id": "TRK-27DB89B8CBE5"}


def reservation(i: int) -> dict[str, str]:
    return {"status": "SOLD", f"events:InventoryChecked {T0 + i + 10}-6": "", "_v": "2"}


def payment(i: int) -> dict[str, str]:
    return {"status": "CHARGED", "amount_cents": "1999", "charged_at_ms": str(T0 + i + 26),
            f"events:PaymentProcessed {T0 + i + 29}-6": "", "_v": "1"}


def shipment(i: int) -> dict[str, str]:
    return {"status": "BOOKED", "tracking_id": "TRK-27DB89B8CBE5", "booked_at_ms": str(T0 + i + 39),
            f"events:ShippingArranged {T0 + i + 49}-6": "", "_v": "1"}


RECORDS = {"order": order, "reservation": reservation, "payment": payment, "shipment": shipment}
FILED = ("reservation", "payment", "shipment")
LAYOUTS = {"own-keys": ((), False), "filed": (FILED, False), "filed+index": (FILED, True)}


def packed(name: str, record: dict[str, str]) -> str:
    """The record as its bucket holds it (bus.filing), without its version."""
    import choreo.workers  # noqa: F401  (the services declare the filed kinds and their fields)
    from choreo.bus import filing
    return filing.pack(f"{name}:0", {k: v for k, v in record.items() if k != "_v"})


def write(r: redis.Redis, n: int, bucketed: tuple[str, ...], index_bucketed: bool) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(1, n + 1):
        b = i // BUCKET
        for name, record in RECORDS.items():
            if name in bucketed:
                pipe.hset(f"{name}:settled:{b}", str(i), packed(name, record(i)))
                pipe.expire(f"{name}:settled:{b}", RETENTION_S)
            else:
                pipe.hset(f"{name}:{i}", mapping=record(i))
                pipe.expire(f"{name}:{i}", RETENTION_S)
        index = f"orders:index:{b}" if index_bucketed else "orders:index"
        pipe.zadd(index, {str(i): T0 + i})
        if index_bucketed:
            pipe.expire(index, RETENTION_S)
        if i % 500 == 0:
            pipe.execute()
    pipe.execute()


def measure(r: redis.Redis, n: int) -> list[tuple[str, float, float]]:
    """(layout, bytes per order, keys per order)."""
    out = []
    for name, (bucketed, index_bucketed) in LAYOUTS.items():
        r.flushdb()
        before = r.info("memory")["used_memory"]
        write(r, n, bucketed, index_bucketed)
        out.append((name, (r.info("memory")["used_memory"] - before) / n, r.dbsize() / n))
    r.flushdb()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="record_layouts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", required=True, help="an empty database: it is flushed")
    parser.add_argument("--orders", type=int, default=20000)
    args = parser.parse_args(argv)
    if not 100 <= args.orders <= 1_000_000:
        parser.error("--orders: 100..1000000")
    r = redis.Redis.from_url(args.redis_url, decode_responses=True)
    try:
        if r.dbsize():
            print(f"record_layouts: {args.redis_url} is not empty; give an empty database "
                  f"(it is flushed)", file=sys.stderr)
            return 2
        rows = measure(r, args.orders)
    except redis.ConnectionError as exc:
        print(f"record_layouts: cannot reach {args.redis_url} ({exc}); start a redis-server "
              f"or give --redis-url", file=sys.stderr)
        return 2
    print(f"{'layout':18s} {'bytes/order':>12s} {'keys/order':>11s}   ({args.orders} completed orders)")
    for name, per_order, keys in rows:
        print(f"{name:18s} {per_order:12,.0f} {keys:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

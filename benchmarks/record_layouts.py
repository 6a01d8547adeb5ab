"""What a settled order costs Redis in memory, kept as today and as the layouts that would take it
under 1 KB (issue 9's goal): one process, no workers, the records of N completed orders written
straight into an empty database, INFO memory used_memory before and after, divided by N.

    python -m choreo.benchmarks.record_layouts --redis-url redis://127.0.0.1:6379/9 --orders 20000

The records are a completed order's, as the saga leaves them (docs/keys.md): its order hash,
reservation SOLD, payment CHARGED, shipment BOOKED, each with the trace field of the event its
service published, and its index entry. Layouts:

    today        four hashes with an expiry each, one index sorted set per partition
    buckets-2    the order and the payment keep their hashes; the reservation and the shipment,
                 which are final once settled, live as fields of per-service hashes of 64 orders
                 (`reservations:<id // 64>`, field: the order id, value: the record's values in
                 fixed order), each hash with one expiry; a value under 64 bytes keeps the bucket
                 a listpack
    buckets-3    the same for the payment too (once settled: payment would have to hear the
                 order's end, which it does not today)
    +index       the same, with the index in sorted sets of 64 orders as well

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
LAYOUTS = {"today": ((), False), "buckets-2": (("reservation", "shipment"), False),
           "buckets-3": (("reservation", "payment", "shipment"), False),
           "buckets-3+index": (("reservation", "payment", "shipment"), True)}


def packed(record: dict[str, str]) -> str:
    """A record's values in fixed order, "|"-joined; a trace field is its "<type> <id>" (the
    stream follows from the type and the order's partition)."""
    return "|".join(k.removeprefix("events:") if v == "" and " " in k else v for k, v in record.items())


def write(r: redis.Redis, n: int, bucketed: tuple[str, ...], index_bucketed: bool) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(1, n + 1):
        b = i // BUCKET
        for name, record in RECORDS.items():
            if name in bucketed:
                pipe.hset(f"{name}s:{b}", str(i), packed(record(i)))
                pipe.expire(f"{name}s:{b}", RETENTION_S)
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

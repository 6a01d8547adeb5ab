"""Every domain key, spelled once. docs/keys.md lists each pattern with the redis-cli command to read it.

Hashes written through a unit of work carry a `_v` field: a version bumped on every write, which
commits compare to detect that another worker changed the hash since it was read.

An order's keys, and the aggregates its commits adjust, carry its partition's hash tag
(bus.layout): `order:{p3}:7`, `orders:{p3}:by_status`. Readers of an aggregate add up its
partitions (`every`). Stock is shared by all orders: its key has no partition (docs/partitions.md).
"""

from choreo.bus import layout


def _tag(order_id: str) -> str:
    return layout.current().tag_of(order_id)


def every(aggregate) -> list[str]:
    """An aggregate's key in every partition, e.g. every(orders_by_status)."""
    return [aggregate(p) for p in layout.current().all()]


def order(order_id: str) -> str:
    # hash: status, lines, total_cents, times, ended_by, reason: its history is created_at_ms and
    # ended_at_ms with ended_by (earlier versions kept a list order:<id>:history, still read)
    return f"order:{_tag(order_id)}{order_id}"


def order_history(order_id: str) -> str:
    return f"order:{_tag(order_id)}{order_id}:history"       # list, written by earlier versions only


ORDER_SEQ = "orders:seq"                       # counter behind `place-order` without --order-id


def _aggregate(name: str):
    def key(partition: int = 0) -> str:
        return f"orders:{layout.current().tag(partition)}{name}"
    key.__name__ = "orders_" + name
    return key


orders_index = _aggregate("index")             # sorted set: order id by creation time (ms)
orders_by_status = _aggregate("by_status")     # hash: status -> number of orders in it
orders_totals = _aggregate("totals")           # hash: completed_cents (survives the orders' expiry)
orders_expired = _aggregate("expired")         # counter: expired ids pruned from orders:index


def of_order(aggregate, order_id: str) -> str:
    """The aggregate's key in the order's partition."""
    return aggregate(layout.current().partition_of(order_id))


def stock(product_id) -> str:
    return f"stock:{product_id}"               # hash: start, available, reserved, sold


def hold(product_id, order_id: str) -> str:
    # hash: status (RESERVED / SHORT / RELEASED / SOLD), qty. Its hash tag is the stock key's own
    # name, so it shares the stock's slot and bus/hold.lua changes both atomically.
    return f"hold:{{{stock(product_id)}}}:{order_id}"


def reservation(order_id: str) -> str:
    return f"reservation:{_tag(order_id)}{order_id}"         # hash: status, lines


def payment(order_id: str) -> str:
    return f"payment:{_tag(order_id)}{order_id}"             # hash: status, amount_cents, reason


def payment_totals(partition: int = 0) -> str:
    return f"payments:{layout.current().tag(partition)}totals"     # hash: charged_cents, refunded_cents


def shipment(order_id: str) -> str:
    return f"shipment:{_tag(order_id)}{order_id}"            # hash: status, tracking_id, reason


# The key patterns each service owns: its ACL user may touch these and no other domain keys.
OWNED = {
    "order": ("order:*", "orders:*"),
    "inventory": ("stock:*", "reservation:*"),
    "payment": ("payment:*", "payments:*"),
    "shipping": ("shipment:*",),
}

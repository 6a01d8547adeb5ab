"""Every domain key, spelled once. docs/keys.md lists each pattern with the redis-cli command to read it.

Hashes written through a unit of work carry a `_v` field: a version bumped on every write, which
commits compare to detect that another worker changed the hash since it was read.
"""


def order(order_id: str) -> str:
    return f"order:{order_id}"                 # hash: status, lines, total_cents, times, reason


def order_history(order_id: str) -> str:
    return f"order:{order_id}:history"         # list: "<time> <status> <event type>"


ORDER_SEQ = "orders:seq"                       # counter behind `place-order` without --order-id
ORDERS_INDEX = "orders:index"                  # sorted set: order id by creation time (ms)
ORDERS_BY_STATUS = "orders:by_status"          # hash: status -> number of orders in it
ORDERS_TOTALS = "orders:totals"                # hash: completed_cents (survives the orders' expiry)
ORDERS_EXPIRED = "orders:expired"              # counter: expired ids pruned from orders:index


def stock(product_id) -> str:
    return f"stock:{product_id}"               # hash: start, available, reserved, sold


def hold(product_id, order_id: str) -> str:
    # hash: status (RESERVED / SHORT / RELEASED / SOLD), qty. Its hash tag is the stock key's own
    # name, so it shares the stock's slot and bus/hold.lua changes both atomically.
    return f"hold:{{{stock(product_id)}}}:{order_id}"


def reservation(order_id: str) -> str:
    return f"reservation:{order_id}"           # hash: status, lines


def payment(order_id: str) -> str:
    return f"payment:{order_id}"               # hash: status, amount_cents, reason


PAYMENT_TOTALS = "payments:totals"             # hash: charged_cents, refunded_cents


def shipment(order_id: str) -> str:
    return f"shipment:{order_id}"              # hash: status, tracking_id, reason


# The key patterns each service owns: its ACL user may touch these and no other domain keys.
OWNED = {
    "order": ("order:*", "orders:*"),
    "inventory": ("stock:*", "reservation:*"),
    "payment": ("payment:*", "payments:*"),
    "shipping": ("shipment:*",),
}

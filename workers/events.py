"""What each event type's `data` must hold. Checked before a handler runs: an entry that does not
fit can never be handled, so it is dead-lettered at once instead of failing on every retry."""

from __future__ import annotations

from bus.envelope import Envelope, MalformedEntry


# Bounds keep every counter a handler adds to far inside what Redis (int64) and the commit
# script (exact up to 2^50) can hold, and times inside what a datetime can represent.
MAX_QUANTITY = 1_000_000
MAX_CENTS = 10 ** 12
MAX_EPOCH_MS = 10 ** 13                     # the year 2286


def _whole(value, low: int = 0, high: int = MAX_CENTS) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _lines(value) -> bool:
    return isinstance(value, list) and 0 < len(value) <= 100 and all(
        isinstance(l, dict) and _whole(l.get("product_id"), 1, 10 ** 9)
        and _whole(l.get("quantity"), 1, MAX_QUANTITY) for l in value)


def valid_lines(value) -> bool:
    return _lines(value)


def _optional_epoch_ms(value) -> bool:
    return value is None or _whole(value, 1, MAX_EPOCH_MS)


def _text(value) -> bool:
    return isinstance(value, str)


SCHEMAS: dict[str, dict[str, callable]] = {
    "OrderCreated": {"lines": _lines, "total_cents": _whole, "deadline_at_ms": _optional_epoch_ms},
    "InventoryChecked": {"lines": _lines, "total_cents": _whole, "deadline_at_ms": _optional_epoch_ms},
    "InventoryRejected": {"reason": _text},
    "PaymentProcessed": {"lines": _lines, "amount_cents": _whole, "deadline_at_ms": _optional_epoch_ms},
    "PaymentFailed": {"reason": _text},
    "ShippingArranged": {"tracking_id": _text},
    "ShippingFailed": {"reason": _text},
    "DeadlinePassed": {},
}


def check_data(event: Envelope) -> None:
    schema = SCHEMAS.get(event.type)
    if schema is None:
        raise MalformedEntry(f"unknown event type {event.type!r}")
    bad = [name for name, ok in schema.items() if not ok(event.data.get(name))]
    if bad:
        raise MalformedEntry(f"{event.type} data: missing or invalid {', '.join(bad)}")

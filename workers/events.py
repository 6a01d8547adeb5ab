"""What each event type's `data` must hold. Checked before a handler runs: an entry that does not
fit can never be handled, so it is dead-lettered at once instead of failing on every retry."""

from __future__ import annotations

from bus.envelope import Envelope, MalformedEntry


def _lines(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(l, dict) and _whole(l.get("product_id")) and _whole(l.get("quantity"))
        and l["quantity"] >= 1 for l in value)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_whole(value) -> bool:
    return value is None or _whole(value)


def _text(value) -> bool:
    return isinstance(value, str)


SCHEMAS: dict[str, dict[str, callable]] = {
    "OrderCreated": {"lines": _lines, "total_cents": _whole, "deadline_at_ms": _optional_whole},
    "InventoryChecked": {"lines": _lines, "total_cents": _whole},
    "InventoryRejected": {"reason": _text},
    "PaymentProcessed": {"lines": _lines, "amount_cents": _whole},
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

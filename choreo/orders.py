"""Placing orders and reading them back: the commands' side of the order service."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from choreo.bus import inspect
from choreo.bus.contract import Outcome
from choreo.bus.envelope import iso_ms
from choreo.bus.redis_streams import RedisStreamsBus
from choreo.workers import SERVICES, keys
from choreo.workers.events import EVENTS
from choreo.workers.order import OrderRejected, PENDING, TERMINAL, create_order
from choreo.workers.unit_of_work import BatchView, UnitOfWork


@dataclass(frozen=True)
class OrderRequest:
    order_id: str
    lines: list[dict]


# The other services' records of an order: an id is free again only once they are gone too.
EARLIER_RECORDS = (keys.reservation, keys.payment, keys.shipment)


def place_orders(bus: RedisStreamsBus, requests: Sequence[OrderRequest], deadline_s: float = 0,
                 clock: Callable[[], float] = time.time, tracing=None, given_ids: bool = False) -> list[str]:
    """Create orders and publish their OrderCreated events in one round trip; returns the ids.
    Raises OrderRejected if any cannot be placed: none is checked invalid after some were written,
    but an id taken concurrently stops the batch there (those before it stay placed).
    With `tracing` (workers.tracing.Tracing), each order's trace starts here.
    `given_ids`: the ids are the caller's (`place-order --order-id`), not new from orders:seq
    (which is raised past any it could hand out later: keep_seq_above), so
    one may be an earlier order's whose record has expired while its reservation, payment or
    shipment has not (a settled one lives in a bucket that expires after the last record filed
    in it): refused while any does, or the services would take the old record for the new
    order's and the order would wait for ever."""
    if given_ids:
        ids = [r.order_id for r in requests]
        kinds = (keys.order, *EARLIER_RECORDS)
        records = bus.read_hashes([k(i) for i in ids for k in kinds])
        for place, order_id in enumerate(ids):
            order, *earlier = records[place * len(kinds):(place + 1) * len(kinds)]
            held = [k(order_id) for k, record in zip(EARLIER_RECORDS, earlier) if record]
            if held and not order:      # (an order that exists: create_order says so)
                raise OrderRejected(f"order {order_id}: an earlier order with this id still has "
                                    f"{', '.join(held)} until they expire: choose another id")
        for order_id in ids:
            keep_seq_above(bus, order_id)
    view = BatchView(bus)
    view.prefetch([keys.order(r.order_id) for r in requests])
    order = SERVICES["order"]
    commits, spans = [], []
    for r in requests:
        uow = UnitOfWork(order.name, order.creates, view, clock=clock, models=EVENTS,
                         record=order.record)
        if tracing is not None:
            span, uow.traceparent = tracing.placing(r.order_id)
            spans.append(span)
        create_order(uow, r.order_id, r.lines, deadline_s)
        view.apply(uow.commit_ops())
        commits.append(uow.to_commit())
    outcomes = bus.commit("", commits)
    for span, o in zip(spans, outcomes):
        tracing.placed(span, o is Outcome.APPLIED, o.name)
    placed = [r.order_id for r, o in zip(requests, outcomes) if o is Outcome.APPLIED]
    if len(placed) < len(requests):
        failed = commits[len(placed)]
        why = failed.refusal or "was created concurrently"
        raise OrderRejected(f"order {requests[len(placed)].order_id} {why}")
    return placed


def new_order_ids(bus: RedisStreamsBus, n: int) -> list[str]:
    return [str(i) for i in bus.allocate_ids(keys.ORDER_SEQ, n)]


# Ids orders:seq could hand out: whole numbers without a sign or leading zero. Raised only for
# those below 2^53, which no sequence reaches otherwise: one given near 2^63 would leave the
# counter no room (every INCRBY after it refused: overflow).
SEQ_ID = re.compile(r"[1-9][0-9]{0,15}")


def keep_seq_above(bus: RedisStreamsBus, order_id: str) -> None:
    """An id given by hand that orders:seq could hand out later (`--order-id 700`): the counter
    is raised to it first, so `place-order` and `load` never draw it and fail on "already exists"
    (or, once it has expired, take the records it left for their own)."""
    if SEQ_ID.fullmatch(order_id) and int(order_id) < 2 ** 53:
        bus.keep_above(keys.ORDER_SEQ, int(order_id))


def read_orders(bus: RedisStreamsBus, order_ids: Sequence[str],
                fields: Sequence[str] = ()) -> dict[str, dict[str, str]]:
    """Each order's hash, or only the named fields of it (HMGET, lighter for polling)."""
    order_keys = [keys.order(i) for i in order_ids]
    if not fields:
        return dict(zip(order_ids, bus.read_hashes(order_keys)))
    rows = inspect.hash_fields(bus, order_keys, list(fields))
    return {i: {f: v for f, v in zip(fields, row) if v is not None} for i, row in zip(order_ids, rows)}


def existing_orders(bus: RedisStreamsBus, order_ids: Sequence[str]) -> set[str]:
    """Those of order_ids that have been placed (one field of each, one round trip)."""
    return {i for i, order in read_orders(bus, order_ids, ("status",)).items() if order}


def is_terminal(order: dict[str, str]) -> bool:
    return order.get("status") in TERMINAL


def status_changes(order: dict[str, str]) -> list[str]:
    """An order's status changes from its record: "<time> <status> <event>" for its creation and
    its end. (Orders written by earlier versions kept them in a list beside it: [] here.)"""
    def when(field: str) -> str:
        ms = order.get(field, "")
        return iso_ms(int(ms) / 1000) if ms.isdigit() and len(ms) < 16 else ms or "?"
    if "ended_by" not in order and order.get("status") != PENDING:
        return []
    lines = [f"{when('created_at_ms')} {PENDING} OrderCreated"]
    if "ended_by" in order:
        lines.append(f"{when('ended_at_ms')} {order.get('status', '?')} {order['ended_by']}")
    return lines

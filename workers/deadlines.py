"""Order deadlines. The order service arms one when it confirms OrderCreated (a timer, run by rq);
when it fires for an order still PENDING it publishes DeadlinePassed, and shipping — the owner of
the point of no return — either ignores it (shipment already booked: the order will complete) or
refuses to ship and publishes ShippingFailed, whose consumers compensate: refund, release, cancel.

The deadline also travels with the events (deadline_at_ms on OrderCreated, InventoryChecked,
PaymentProcessed), so a service decides from the event and its own clock, never from which of
its streams a read returned first: payment does not charge, and shipping does not book, an order
whose deadline has passed, even when DeadlinePassed has not reached them yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from choreo.bus import keys as bus_keys
from choreo.bus.contract import Commit
from choreo.bus.redis_streams import translated_errors
from choreo.scheduling.timers import JOB_ID, ScheduledCall, job_bus
from choreo.workers import keys
from choreo.workers.timers import commit_fired
from choreo.workers.unit_of_work import BatchView, Timer, UnitOfWork, timer_id

JOB = "choreo.workers.deadlines.pass_deadline"
TIMERS = "timers"                           # the group-like name of the timers' dedup markers
FIRED_TTL_S = 31 * 24 * 3600                # longer than any deadline (30 days at most)
EVENT = "DeadlinePassed"                    # published by the timers process, not by a worker


def scheduled_call(timer: Timer) -> ScheduledCall:
    return ScheduledCall(timer.job_id, timer.at_ms, JOB, (timer.order_id, timer.causation_id))


def passed(event, uow: UnitOfWork) -> bool:
    """Whether the deadline the event carries is behind this service's clock."""
    deadline = event.data.get("deadline_at_ms")
    return deadline is not None and uow.now_ms() >= deadline


def remaining_s(event, uow: UnitOfWork) -> float:
    """Seconds until the deadline the event carries (0 if none, or past)."""
    deadline = event.data.get("deadline_at_ms")
    return 0 if deadline is None else max(0, deadline - uow.now_ms()) / 1000


def carried(event) -> dict:
    """The deadline to pass on in a follow-on event ({} for an order without one)."""
    deadline = event.data.get("deadline_at_ms")
    return {} if deadline is None else {"deadline_at_ms": deadline}


def fire_deadline(bus, order_id: str, causation_id: str, clock=None) -> str:
    """Publish DeadlinePassed for an order still PENDING (read through a unit of work: published
    only if the order did not move since)."""
    from choreo.workers.order import PENDING, SERVICE as ORDER

    def attempt() -> Commit | str:
        uow = UnitOfWork(ORDER.name, ORDER.creates, BatchView(bus), **({"clock": clock} if clock else {}))
        status = uow.read(keys.order(order_id)).get("status")
        if status != PENDING:
            return f"order {order_id} is {status}: nothing to do"
        uow.emit(EVENT, order_id=order_id, causation_id=causation_id)
        # A timer can fire twice (re-armed by a redelivered OrderCreated after it already ran):
        # the id in seen:timers makes the second one publish nothing.
        return uow.to_commit(seen=bus_keys.seen_for(TIMERS, order_id),
                             seen_id=timer_id(EVENT, order_id), seen_ttl_s=FIRED_TTL_S)
    return commit_fired(bus, attempt, f"order {order_id}: DeadlinePassed")


# A deadline the timers can arm: whole epoch milliseconds, ASCII digits, within the year 9999
# (rq arms at a datetime, which holds none later; the second is rounded up).
DEADLINE_MS = re.compile(r"[0-9]{1,15}")
LAST_MS = 253_402_300_799_000


@dataclass
class Found:
    """What `choreo timers --rearm` found among the PENDING orders."""
    timers: list[Timer] = field(default_factory=list)
    from_created: int = 0          # armed at created_at_ms + the deadline given (no deadline_at_ms)
    without: int = 0               # placed without a deadline (none recorded, none given)
    unreadable: list[str] = field(default_factory=list)     # ids it cannot arm (said, skipped)


def _ms(value: str | None) -> int | None:
    return int(value) if value and DEADLINE_MS.fullmatch(value) and int(value) <= LAST_MS else None


def pending_deadlines(bus, deadline_s: float | None = None) -> Found:
    """The deadline timer of every PENDING order placed with one (orders:index, each partition's),
    as the order's confirmation armed it, due at the order's deadline_at_ms. A record that names
    none (every order of versions before 95bfb9a, whatever deadline it was placed with) is armed
    at created_at_ms + `deadline_s` when that is given, else counted as placed without one.
    Without its cause: the entry that armed it may be trimmed, so the DeadlinePassed it fires
    names no causation (a root in `choreo trace`)."""
    from choreo.bus import inspect, layout
    from choreo.workers.order import PENDING
    found = Found()
    for partition in layout.current().all():
        for ids in inspect.members_by_score(bus, keys.orders_index(partition)):
            rows = inspect.hash_fields(bus, [keys.order(i) for i in ids],
                                       ["status", "deadline_at_ms", "created_at_ms"], raise_on_error=False)
            for order_id, row in zip(ids, rows):
                if isinstance(row, Exception):
                    if "WRONGTYPE" not in str(row):
                        with translated_errors():   # NOPERM and the like: said, not skipped
                            raise row
                    found.unreadable.append(order_id)       # not a hash: no order's record
                    continue
                status, deadline, created = row
                if status != PENDING:
                    continue
                at = _ms(deadline)
                if deadline is None and deadline_s is not None and _ms(created) is not None:
                    at = _ms(str(_ms(created) + int(deadline_s * 1000)))
                    found.from_created += at is not None
                if at is None:
                    if deadline is None and deadline_s is None:
                        found.without += 1
                    else:
                        found.unreadable.append(order_id)
                    continue
                job_id = timer_id(EVENT, order_id)
                if not JOB_ID.fullmatch(job_id):    # no timer rq would take
                    found.unreadable.append(order_id)
                    continue
                found.timers.append(Timer(job_id, at, EVENT, order_id, "", job=JOB))
    return found


def rearm(bus, timers, deadline_s: float | None = None) -> str:
    """Arm again the deadline of every PENDING order placed with one (`choreo timers --rearm`),
    through `timers` (RqTimers). Arming is idempotent (one job id per order: a timer still armed
    is armed again, the same), and a deadline fires once (seen:timers), so rearming is safe at
    any time. A deadline already past fires at the next sweep."""
    from choreo.bus import inspect
    found = pending_deadlines(bus, deadline_s)
    if found.timers:
        timers.schedule([scheduled_call(t) for t in found.timers])
    now_ms = inspect.server(bus).time_ms
    past = sum(1 for t in found.timers if t.at_ms <= now_ms)
    line = (f"re-armed the deadlines of {len(found.timers)} PENDING order(s), {past} of them "
            f"already past (they fire within seconds while `choreo timers` runs)")
    if found.from_created:
        line += f"; {found.from_created} of them at created_at_ms + {deadline_s:g} s (no deadline recorded)"
    if deadline_s is None:
        line += (f"; {found.without} PENDING order(s) record no deadline (placed without one, or "
                 f"by a version before 95bfb9a: --deadline S arms those at created_at_ms + S)")
    if found.unreadable:
        shown = ", ".join(repr(i)[:40] for i in found.unreadable[:5])
        line += (f"; {len(found.unreadable)} whose record, id, deadline or creation time is unusable, "
                 f"not armed: "
                 f"{shown}{' ...' if len(found.unreadable) > 5 else ''}")
    return line


def pass_deadline(order_id: str, causation_id: str) -> str:
    """The rq job (run by `choreo timers`). It uses the connection rq ran it with; no connection
    details travel in the job."""
    bus = job_bus()
    try:
        return fire_deadline(bus, order_id, causation_id)
    finally:
        bus.close()

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

from choreo.bus import keys as bus_keys
from choreo.bus.contract import Commit
from choreo.scheduling.timers import ScheduledCall, job_bus
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


def pending_deadlines(bus) -> tuple[list[Timer], int]:
    """The deadline timer of every PENDING order placed with one (orders:index, each partition's),
    as the order's confirmation armed it, due at the order's deadline; and how many PENDING
    orders have none. Without its cause: the entry that armed it may be trimmed, so the
    DeadlinePassed it fires names no causation (a root in `choreo trace`)."""
    from choreo.bus import inspect, layout
    from choreo.workers.order import PENDING
    timers, without = [], 0
    for partition in layout.current().all():
        for ids in inspect.members_in_chunks(bus, keys.orders_index(partition)):
            fields = inspect.hash_fields(bus, [keys.order(i) for i in ids], ["status", "deadline_at_ms"])
            for order_id, (status, deadline) in zip(ids, fields):
                if status != PENDING:
                    continue
                if deadline is None or not deadline.isdigit():
                    without += 1
                    continue
                timers.append(Timer(timer_id(EVENT, order_id), int(deadline), EVENT, order_id, "",
                                    job=JOB))
    return timers, without


def rearm(bus, timers) -> str:
    """Arm again the deadline of every PENDING order placed with one (`choreo timers --rearm`),
    through `timers` (RqTimers). Arming is idempotent (one job id per order: a timer still armed
    is armed again, the same), and a deadline fires once (seen:timers), so rearming is safe at
    any time. A deadline already past fires at the next sweep."""
    found, without = pending_deadlines(bus)
    if found:
        timers.schedule([scheduled_call(t) for t in found])
    from choreo.bus import inspect
    now_ms = inspect.server(bus).time_ms
    past = sum(1 for t in found if t.at_ms <= now_ms)
    return (f"re-armed the deadlines of {len(found)} PENDING order(s), {past} of them already past "
            f"(they fire within seconds while `choreo timers` runs); {without} PENDING order(s) "
            f"placed without a deadline")


def pass_deadline(order_id: str, causation_id: str) -> str:
    """The rq job (run by `choreo timers`). It uses the connection rq ran it with; no connection
    details travel in the job."""
    bus = job_bus()
    try:
        return fire_deadline(bus, order_id, causation_id)
    finally:
        bus.close()

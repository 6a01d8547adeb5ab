"""Order deadlines. The order service arms one when it confirms OrderCreated (a timer, run by rq);
when it fires for an order still PENDING it publishes DeadlinePassed, and shipping — the owner of
the point of no return — either ignores it (shipment already booked: the order will complete) or
refuses to ship and publishes ShippingFailed, whose consumers compensate: refund, release, cancel.
"""

from __future__ import annotations

from bus.scheduler import ScheduledCall, job_bus
from workers import keys
from workers.unit_of_work import BatchView, Timer, UnitOfWork

JOB = "workers.deadlines.pass_deadline"
EVENT = "DeadlinePassed"                    # published by the timers process, not by a worker


def scheduled_call(timer: Timer) -> ScheduledCall:
    return ScheduledCall(timer.job_id, timer.at_ms, JOB, (timer.order_id, timer.causation_id))


def pass_deadline(order_id: str, causation_id: str) -> str:
    """The rq job (run by `choreo timers`): publish DeadlinePassed for an order still PENDING.
    It uses the connection rq ran it with; no connection details travel in the job."""
    from workers.order import PENDING, SERVICE as ORDER
    bus = job_bus()
    try:
        uow = UnitOfWork(ORDER.name, ORDER.creates, BatchView(bus))
        # Read through the unit of work: published only if the order did not move since.
        status = uow.read(keys.order(order_id)).get("status")
        if status != PENDING:
            return f"order {order_id} is {status}: nothing to do"
        uow.emit(EVENT, order_id=order_id, causation_id=causation_id)
        outcome = bus.commit("", [uow.to_commit()])[0]
        return f"order {order_id}: DeadlinePassed {outcome.name}"
    finally:
        bus.close()

"""Generic timers: "publish this event later". A handler calls uow.publish_later(EventType, at_ms)
for an event its service declares in `creates` (and the app lists in `timer_events`); the runtime
arms an rq job under the id `<EventType>-<instance id>` before its commit, and `choreo timers`
runs `publish_due` when it is due, which publishes the event for the instance, as the service
that armed it, caused by the event that armed it.

The timer does not look at any state: the consumer decides from its own state whether the event
still matters. A timer that fires late, or after the outcome it was racing, must change nothing
there; one that fires twice (re-armed by a redelivery after it ran) publishes once, deduplicated by
its id in seen:timers, as the saga's deadlines are (workers.deadlines).

The generic job is called with (instance id, causation id, producer, event type): the arguments
are strings in the queue, which anyone who may arm a timer may write. The timers' Redis user may
publish only the app's timer events (choreo.ops.acl), and the consuming worker dead-letters an entry
whose producer does not create its type (App.publishers).
"""

from __future__ import annotations

import logging
from typing import Callable

from rq import get_current_job

from choreo.bus import keys as bus_keys
from choreo.bus.contract import Commit, Outcome
from choreo.scheduling.timers import QUEUE, ScheduledCall, job_bus, job_retention_s
from choreo.workers.logs import TIMERS as TIMERS_LOG
from choreo.workers.unit_of_work import PUBLISH_DUE, BatchView, Timer, UnitOfWork, timer_id

JOB = PUBLISH_DUE                           # "choreo.workers.timers.publish_due": allowlist it
TIMERS = "timers"                           # the dedup markers' name: bus_keys.seen(TIMERS)
FIRED_TTL_S = 31 * 24 * 3600                # longer than any timer should be armed for
CONFLICT_TRIES = 10                         # fresh reads of a timer whose commit keeps conflicting


class TimerNotFired(RuntimeError):
    """Redis refused a timer's commit (one of its writes, say a trace key of another type), or
    it kept conflicting: raised, so rq retries the job (scheduling.timers.RETRY_S) and then keeps
    it in its failed registry, logged at ERROR with the reason, rather than count it done with
    its event never published (an order's deadline lost for good)."""


def commit_fired(bus, attempt: Callable[[], "Commit | str"], what: str) -> str:
    """Commit what a firing timer publishes: `attempt` reads afresh and returns its commit, or
    a line saying there is nothing to do. A CONFLICT (what it read moved meanwhile) reads again;
    a refusal raises TimerNotFired."""
    for _ in range(CONFLICT_TRIES):
        commit = attempt()
        if isinstance(commit, str):
            return commit
        outcome = bus.commit("", [commit])[0]
        if outcome is Outcome.REFUSED:
            raise not_fired(f"{what} not published: Redis would refuse it ({commit.refusal})")
        if outcome is not Outcome.CONFLICT:
            return f"{what} {outcome.name}"
    raise not_fired(f"{what} not published: its commit conflicted {CONFLICT_TRIES} times")


def not_fired(reason: str) -> TimerNotFired:
    """The error to raise, said first in one line of `choreo timers`' own (rq's line that follows
    holds a whole traceback), with what becomes of the job: rq tries it again while it has
    retries left, then keeps it failed until `choreo timers --rearm` arms it again."""
    job = get_current_job()
    if job is not None:
        left = job.retries_left or 0
        then = (f"rq tries it again ({left} more time(s)), then keeps it failed" if left else
                "rq keeps it failed")
        logging.getLogger(TIMERS_LOG).error(
            f"timers: {reason}; {then} in rq:failed:{QUEUE}: once mended, `choreo timers --rearm` "
            f"arms it again")
    return TimerNotFired(reason)


def scheduled_call(timer: Timer) -> ScheduledCall:
    """The rq call that fires `timer`: the generic job with (instance id, causation id, producer,
    event type); a job of the app's own (the saga's deadline) with (instance id, causation id),
    as the saga's deadline jobs always were."""
    args = (timer.order_id, timer.causation_id)
    if timer.job == JOB:
        args += (timer.producer, timer.event_type)
    return ScheduledCall(timer.job_id, timer.at_ms, timer.job, args)


def fire(bus, instance_id: str, causation_id: str, producer: str, event_type: str,
         clock=None, retention_s: int | None = None) -> str:
    """Publish event_type for the instance, as producer, once per timer id. Its event is traced
    in the instance's trace key (the timers keep no record), which its commit keeps retention_s
    (CHOREO_RETENTION_S; None: the default) from now, as every commit tracing there does."""
    extra = {"clock": clock} if clock else {}
    if retention_s:
        extra["retention_s"] = retention_s

    def attempt() -> Commit:
        uow = UnitOfWork(producer, (event_type,), BatchView(bus), **extra)
        uow.emit(event_type, order_id=instance_id, causation_id=causation_id)
        # Once per arming: a redelivered arming re-arms with the same cause and publishes nothing
        # more; a later arming (a new cause) fires again.
        return uow.to_commit(seen=bus_keys.seen_for(TIMERS, instance_id),
                             seen_id=f"{timer_id(event_type, instance_id)} {causation_id}",
                             seen_ttl_s=FIRED_TTL_S)
    return commit_fired(bus, attempt, f"{producer} {instance_id}: {event_type}")


def publish_due(instance_id: str, causation_id: str, producer: str, event_type: str) -> str:
    """The rq job (run by `choreo timers`), on the connection rq ran it with."""
    bus = job_bus()
    try:
        return fire(bus, instance_id, causation_id, producer, event_type, retention_s=job_retention_s())
    finally:
        bus.close()

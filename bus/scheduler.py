"""Publishing later: calls scheduled with rq (JSON serializer, never pickle) and the rq worker that
runs them when due. The bus does not know what the calls do; workers.deadlines does.

rq keeps its own keys (rq:job:<id>, rq:scheduled:<queue>, ...) next to the streams. Job ids are
given by the caller and must not contain ':' (rq's rule); scheduling the same id twice keeps one
job, so a redelivered entry arms its timer once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

import redis
from rq import Queue, Retry, SimpleWorker, get_current_job
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from bus.redis_streams import RedisStreamsBus, same_server, translated_errors

QUEUE = "choreo-timers"


@dataclass(frozen=True)
class ScheduledCall:
    job_id: str
    at_ms: int              # epoch milliseconds
    func: str               # dotted path of a module-level function
    args: tuple = ()


def timer_queue(client: redis.Redis) -> Queue:
    # rq reads bytes: it gets a client on the same server that does not decode.
    return Queue(QUEUE, connection=same_server(client, decode=False), serializer=JSONSerializer)


def job_bus() -> RedisStreamsBus:
    """Inside a running job: a bus on the server the job came from (rq's own connection), so a
    timer fires where it was armed, whatever this process's environment says."""
    return RedisStreamsBus(same_server(get_current_job().connection, decode=True))


def schedule(queue: Queue, calls: Sequence[ScheduledCall]) -> None:
    """Arm every call in one round trip (rq writes the job and its registry entry per call)."""
    with translated_errors():
        pipe = queue.connection.pipeline()
        for call in calls:
            if ":" in call.job_id:
                raise ValueError(f"rq job ids may not contain ':': {call.job_id!r}")
            # A job that fails (Redis gone while it ran) is retried: a lost timer is a stuck order.
            queue.enqueue_at(datetime.fromtimestamp(call.at_ms / 1000, timezone.utc), call.func,
                             *call.args, job_id=call.job_id, result_ttl=0,
                             failure_ttl=7 * 24 * 3600, retry=Retry(max=5, interval=[1, 5, 15, 60, 300]),
                             pipeline=pipe)
        pipe.execute()


def unschedule(queue: Queue, job_ids: Sequence[str]) -> None:
    """Disarm timers that are no longer needed, in one round trip; an unknown id is a no-op."""
    registry = ScheduledJobRegistry(queue=queue)
    with translated_errors():
        pipe = queue.connection.pipeline()
        for job_id in job_ids:
            pipe.zrem(registry.key, job_id)
            pipe.delete(Job.key_for(job_id))
        pipe.execute()


def run_timers(client: redis.Redis, name: str) -> None:
    """The rq worker (with its scheduler) for QUEUE, in this process: jobs run without fork.
    rq installs its own SIGTERM/SIGINT handlers: a warm shutdown after the job in hand."""
    queue = timer_queue(client)
    worker = SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer, name=name)
    worker.work(with_scheduler=True, logging_level="WARNING")

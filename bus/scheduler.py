"""Publishing later: calls scheduled with rq (JSON serializer, never pickle) and the rq worker that
runs them when due. The bus does not know what the calls do; workers.deadlines does.

rq keeps its own keys (rq:job:<id>, rq:scheduled:<queue>, ...) next to the streams. Job ids are
given by the caller and must not contain ':' (rq's rule); scheduling the same id twice keeps one
job, so a redelivered entry arms its timer once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Collection, Sequence

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


def armed_keys(job_id_pattern: str) -> tuple[str, ...]:
    """What arming and disarming a timer writes (rq's own names): the job hash, the scheduled
    registry and the set of queues. A least-privilege user that arms timers may touch only these."""
    return (Job.key_for(job_id_pattern), ScheduledJobRegistry(QUEUE, connection=None).key,
            Queue.redis_queues_keys)


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
            # rq keeps whole seconds (it truncates): round up, so a timer never fires early.
            queue.enqueue_at(datetime.fromtimestamp(math.ceil(call.at_ms / 1000), timezone.utc), call.func,
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


class RefusedJob(Exception):
    """A queue entry naming a function the timers were not told to run."""


def allowing(functions: Collection[str]) -> type[Job]:
    """A Job class that runs only the named functions. The JSON serializer keeps pickle out, not
    code: anyone who can write the queue could name any importable function (`os.system`), so
    every other name is refused, failed without retries, and never imported."""
    allowed = frozenset(functions)

    class TimerJob(Job):
        def _execute(self):
            if self.func_name not in allowed:
                self.retries_left = 0       # a refusal is final: no retry imports it later
                raise RefusedJob(f"refused job {self.id}: {self.func_name!r} is not a timer "
                                 f"(allowed: {', '.join(sorted(allowed))})")
            return super()._execute()

        # Callbacks are functions named by the queue entry too; timers declare none.
        success_callback = failure_callback = stopped_callback = property(lambda self: None)

    return TimerJob


def run_timers(client: redis.Redis, name: str, functions: Collection[str]) -> None:
    """The rq worker (with its scheduler) for QUEUE, in this process: jobs run without fork, and
    only jobs calling one of `functions`. rq installs its own SIGTERM/SIGINT handlers: a warm
    shutdown after the job in hand."""
    job_class = allowing(functions)
    connection = same_server(client, decode=False)
    queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer, job_class=job_class)
    worker = SimpleWorker([queue], connection=connection, serializer=JSONSerializer, name=name,
                          job_class=job_class)
    worker.work(with_scheduler=True, logging_level="WARNING")

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
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from bus.redis_streams import translated_errors

QUEUE = "choreo-timers"


@dataclass(frozen=True)
class ScheduledCall:
    job_id: str
    at_ms: int              # epoch milliseconds
    func: str               # dotted path of a module-level function
    args: tuple = ()


def rq_connection(client: redis.Redis) -> redis.Redis:
    """rq reads bytes: a client on the same server (pool class and address) without decoding."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    return redis.Redis(connection_pool=type(pool)(connection_class=pool.connection_class, **kwargs))


def timer_queue(client: redis.Redis) -> Queue:
    return Queue(QUEUE, connection=rq_connection(client), serializer=JSONSerializer)


def schedule(queue: Queue, calls: Sequence[ScheduledCall]) -> None:
    for call in calls:
        if ":" in call.job_id:
            raise ValueError(f"rq job ids may not contain ':': {call.job_id!r}")
        with translated_errors():
            queue.enqueue_at(datetime.fromtimestamp(call.at_ms / 1000, timezone.utc), call.func,
                             *call.args, job_id=call.job_id, result_ttl=0, failure_ttl=7 * 24 * 3600)


def run_timers(client: redis.Redis, name: str) -> None:
    """The rq worker (with its scheduler) for QUEUE, in this process: jobs run without fork.
    rq installs its own SIGTERM/SIGINT handlers: a warm shutdown after the job in hand."""
    queue = timer_queue(client)
    worker = SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer, name=name)
    worker.work(with_scheduler=True, logging_level="WARNING")

"""Publishing later: calls scheduled with rq (JSON serializer, never pickle) and the rq worker that
runs them when due. It does not know what the calls do; workers.deadlines does.

rq keeps its own keys (rq:job:<id>, rq:scheduled:<queue>, ...) next to the streams, or on a plain
Redis of their own (CHOREO_TIMERS_URL): rq uses its keys together in MULTI and pipelines, which a
Redis Cluster refuses across slots. Either way a job publishes into the streams' server. Job ids are
given by the caller and must not contain ':' (rq's rule); scheduling the same id twice keeps one
job, so a redelivered entry arms its timer once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Collection, Sequence

import redis
from rq import Queue, Retry, SimpleWorker, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from choreo.bus.heartbeat import Heartbeat
from choreo.bus.contract import BusError, BusUnavailable, PermissionsMissing
from choreo.bus.redis_streams import RedisStreamsBus, same_server, translated_errors

QUEUE = "choreo-timers"
RETRY_S = (1, 5, 15, 60, 300)           # a job that fails (Redis gone while it ran) is retried
FAILURE_TTL_S = 7 * 24 * 3600
# rq's own pattern for a job id (rq.job.JOB_ID_PATTERN: no '.', no ':'), at most 128 long.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
LOG = logging.getLogger("choreo.timers")        # workers.logs.TIMERS; scheduling/ does not import workers


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


# rq keeps a job's keys together in transactions that span slots: not on Redis Cluster.
NOT_ON_A_CLUSTER = ("rq cannot keep its queue on Redis Cluster: set CHOREO_TIMERS_URL to a plain "
                    "Redis (docs/cluster.md), or CHOREO_ORDER_DEADLINE_S=0 to arm no deadlines")


class RqTimers:
    """What the worker runtime arms and disarms timers through (workers.committing): rq's queue on
    the server of `bus`, or on `url` when given (CHOREO_TIMERS_URL), made on first use (a worker
    that arms no timer never touches rq). A `url` redis-py cannot use is refused here (UnusableUrl),
    before the worker starts; an unreachable one fails the arming, and the worker retries."""

    def __init__(self, bus: RedisStreamsBus, url: str | None = None):
        from choreo.bus.connect import timers_client
        self.bus = bus
        # rq reads bytes: a client that does not decode, on rq's own server or the bus's.
        self._own = None if url is None else timers_client(url)
        self._url = url
        self._queue: Queue | None = None

    def queue(self) -> Queue:
        if self._own is None and getattr(self.bus, "cluster", False):
            raise BusError(NOT_ON_A_CLUSTER)
        if self._queue is None:
            connection = self.bus.raw if self._own is None else self._own
            self._queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
        return self._queue

    def close(self) -> None:
        """Close the client on `url`, if one was made; the bus is its owner's to close."""
        if self._own is not None:
            self._own.close()

    def schedule(self, calls: Sequence[ScheduledCall]) -> None:
        with self._unreachable():
            schedule(self.queue(), calls)

    def unschedule(self, job_ids: Sequence[str]) -> None:
        with self._unreachable():
            unschedule(self.queue(), job_ids)

    def check(self) -> None:
        """At the start of a worker that arms timers: CHOREO_TIMERS_URL's server answers and takes
        its user and password. Refused credentials (or a user refused PING) stop the worker now,
        naming the variable, not at its first arming; an unreachable server is waited for, as
        REDIS_URL's is. Without the URL the bus's own server is checked by the bus."""
        if self._own is not None:
            with self._unreachable(), translated_errors():
                self._own.ping()

    @contextlib.contextmanager
    def _unreachable(self):
        """Whatever stops arming (rq's server down or refusing a command, a cluster node behind a
        plain URL) is the worker's to back off on, its entries left pending: never the entry's
        fault, never a dead letter. A refused user or password, or a permission the user lacks,
        no retry mends: it stops the worker as on the bus's own server, naming the URL."""
        try:
            yield
        except BusUnavailable as exc:
            if self._own is None:
                raise
            from choreo.bus.connect import how_to_start
            raise BusUnavailable(f"cannot reach the timers' Redis (CHOREO_TIMERS_URL): {exc}; "
                                 f"{how_to_start(self._url, 'CHOREO_TIMERS_URL')}", hinted=True) from exc
        except PermissionsMissing as exc:
            if self._own is None:
                raise
            raise type(exc)(f"the timers' Redis (CHOREO_TIMERS_URL): {exc}") from exc
        except BusError as exc:
            raise BusUnavailable(f"cannot arm or disarm timers: {exc}") from exc


def job_retention_s() -> int | None:
    """Inside a running job: the timers process's CHOREO_RETENTION_S (None: a plain rq worker's)."""
    return getattr(get_current_job(), "retention_s", None)


def job_bus() -> RedisStreamsBus:
    """Inside a running job: a bus on the server the timers process publishes to (run_timers's
    `bus`, given to the job by its class), which is the server the job came from unless rq lives
    on a Redis of its own (CHOREO_TIMERS_URL); a job run by a plain rq worker publishes where it
    came from. Either way nothing of this process's environment is read here."""
    job = get_current_job()
    target = getattr(job, "publishes_to", None) or job.connection
    bus = RedisStreamsBus(same_server(target, decode=True))
    # Its commits wait for replicas as the timers process's own (CHOREO_WAIT_REPLICAS): a timer's
    # event lost in a failover would never fire again, its job being done.
    bus.wait_replicas, bus.wait_timeout_ms = getattr(job, "waits", (0, bus.wait_timeout_ms))
    return bus


def schedule(queue: Queue, calls: Sequence[ScheduledCall]) -> None:
    """Arm every call in one round trip (rq writes the job and its registry entry per call)."""
    with translated_errors():
        pipe = queue.connection.pipeline()
        for call in calls:
            if not JOB_ID.fullmatch(call.job_id):
                raise ValueError(f"rq job ids are letters, digits, '_' and '-': {call.job_id!r}")
            # A job that fails (Redis gone while it ran) is retried: a lost timer is a stuck order.
            # rq keeps whole seconds (it truncates): round up, so a timer never fires early.
            queue.enqueue_at(datetime.fromtimestamp(math.ceil(call.at_ms / 1000), timezone.utc), call.func,
                             *call.args, job_id=call.job_id, result_ttl=0, failure_ttl=FAILURE_TTL_S,
                             retry=Retry(max=len(RETRY_S), interval=list(RETRY_S)), pipeline=pipe)
        pipe.execute()


def unschedule(queue: Queue, job_ids: Sequence[str]) -> None:
    """Disarm timers that are no longer needed (the order service disarms one per finished
    order); an unknown id is a no-op. A job still scheduled is taken out of the registry and its
    hash deleted, in two round trips whatever their number. One no longer scheduled is left to
    rq: moved to the queue or running (the sweep took it), it runs and finds nothing to do; its
    hash deleted under it, rq would fail the job it had just run ("Failed to retrieve status")."""
    if not job_ids:
        return
    registry = ScheduledJobRegistry(queue=queue)
    with translated_errors():
        pipe = queue.connection.pipeline()
        for job_id in job_ids:
            pipe.zrem(registry.key, job_id)
        taken = [job_id for job_id, removed in zip(job_ids, pipe.execute()) if removed]
        if taken:
            queue.connection.delete(*(Job.key_for(job_id) for job_id in taken))


class RefusedJob(Exception):
    """A queue entry naming a function the timers were not told to run."""


def allowing(functions: Collection[str], publishes_to=None, waits: tuple[int, int] = (0, 1000),
             retention_s: int | None = None) -> type[Job]:
    """A Job class that runs only the named functions. The JSON serializer keeps pickle out, not
    code: anyone who can write the queue could name any importable function (`os.system`), so
    every other name is refused, failed without retries, and never imported. `publishes_to` (a
    client on the streams' server) is where job_bus() publishes; None: the job's own server.
    `waits`: the replicas its commits wait for, and how long at most (bus wait_replicas);
    `retention_s`: how long what a job writes for an instance is kept (CHOREO_RETENTION_S)."""
    allowed = frozenset(functions)

    class TimerJob(Job):
        # Read by job_bus() in the running job: a class attribute, not a module-level global, so
        # two run_timers in one process (tests) each publish where they were told.
        publishes_to = None
        waits = (0, 1000)
        retention_s = None

        def _execute(self):
            if self.func_name not in allowed:
                self.retries_left = 0       # a refusal is final: no retry imports it later
                raise RefusedJob(f"refused job {self.id}: {self.func_name!r} is not a timer "
                                 f"(allowed: {', '.join(sorted(allowed))})")
            return super()._execute()

        # Callbacks are functions named by the queue entry too; timers declare none.
        success_callback = failure_callback = stopped_callback = property(lambda self: None)

    TimerJob.publishes_to = publishes_to
    TimerJob.waits = waits
    TimerJob.retention_s = retention_s
    return TimerJob


def sweep_due(queue: Queue, functions: Collection[str], now: float | None = None) -> int:
    """Move the timers that are due from the scheduled registry to the queue, each one alone and
    re-made from its function name and string arguments only. rq's own scheduler fetches every
    due job together, so one malformed job hash (anyone who may arm a timer may write one) would
    stop every timer; here it is refused, logged and deleted, and the others go on. What Redis
    answers about itself, not about the job (out of memory, NOREPLICAS, MISCONF, BUSY, a replica,
    still loading, gone) leaves every timer due for the next sweep: refusing the job then (its
    hash and entry deleted, which Redis may take when full) lost due timers for good."""
    registry = ScheduledJobRegistry(queue=queue)
    at = int(time.time() if now is None else now)
    moved = 0
    for raw_id in registry.get_jobs_to_schedule(at):
        job_id = raw_id.decode(errors="replace") if isinstance(raw_id, bytes) else raw_id
        try:
            moved += _move(queue, registry, raw_id, job_id, functions, at)
        except NoSuchJobError:          # its job ran meanwhile (a timer re-armed while queued or
            _drop(queue, registry, raw_id, job_id)      # running: rq deleted it when done)
        except redis.exceptions.RedisError as exc:
            if "WRONGTYPE" not in str(exc):
                raise                   # Redis gone, refusing this user or any write for now: the
                #                         timer stays due and the sweep goes round again
            _refuse(queue, registry, raw_id, job_id, exc)   # its job key is no hash: hostile
        except Exception as exc:        # whatever a hostile hash makes rq raise
            _refuse(queue, registry, raw_id, job_id, exc)
    return moved


def _move(queue: Queue, registry: ScheduledJobRegistry, raw_id, job_id: str,
          functions: Collection[str], at: int) -> bool:
    """One due timer into the queue and out of the registry in one transaction (MULTI/EXEC),
    watching its job's hash. A process killed halfway has moved nothing: the timer stays due and
    the next sweep moves it (ZREM first, then the enqueue, lost it for good when killed in
    between). Of several timers processes one moves it: another's move rewrites the hash, so
    this one's transaction is refused; a timer re-armed meanwhile for later is left for then."""
    if not JOB_ID.fullmatch(job_id):
        raise RefusedJob("not a timer's job id")
    with queue.connection.pipeline() as pipe:
        try:
            pipe.watch(Job.key_for(job_id))
            score = pipe.zscore(registry.key, raw_id)
            if score is None or score > at:
                return False            # moved by another, or re-armed for later
            func, args, retries = checked_timer(queue.connection, job_id, functions)
            pipe.multi()
            queue.enqueue_call(func, args=args, job_id=job_id, result_ttl=0, failure_ttl=FAILURE_TTL_S,
                               retry=Retry(max=retries, interval=list(RETRY_S[-retries:])) if retries else None,
                               pipeline=pipe)
            pipe.zrem(registry.key, raw_id)
            pipe.execute()
            return True
        except redis.exceptions.WatchError:
            return False


def _drop(queue: Queue, registry: ScheduledJobRegistry, raw_id, job_id: str) -> None:
    """A scheduled entry whose job hash is gone: nothing to run. Out of the registry, said once
    (INFO): a timer re-armed while its job was queued or running left it, and that job has fired."""
    if queue.connection.zrem(registry.key, raw_id):
        LOG.info(f"timers: scheduled timer {job_id[:80]!r} has no job any more (it ran meanwhile): "
                 f"dropped")


def _refuse(queue: Queue, registry: ScheduledJobRegistry, raw_id, job_id: str, exc: Exception) -> None:
    """A scheduled job that is not a timer's: out of the registry, logged, its hash deleted."""
    LOG.error(f"timers: refused scheduled job {job_id[:80]!r}: {type(exc).__name__}: {exc}")
    if queue.connection.zrem(registry.key, raw_id) and JOB_ID.fullmatch(job_id):
        queue.connection.delete(Job.key_for(job_id))


def checked_timer(connection, job_id: str, functions: Collection[str]) -> tuple[str, list, int]:
    """(function, arguments, retries left) of a scheduled job, or an exception saying why not."""
    if not JOB_ID.fullmatch(job_id):
        raise RefusedJob("not a timer's job id")
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    args, retries = list(job.args or ()), job.retries_left or 0
    if job.func_name not in functions:
        raise RefusedJob(f"{job.func_name!r} is not a timer")
    if job.kwargs or len(args) > 8 or not all(isinstance(a, str) and len(a) <= 256 for a in args):
        raise RefusedJob("a timer takes a few string arguments")
    if not isinstance(retries, int) or not 0 <= retries <= len(RETRY_S):
        raise RefusedJob(f"retries left {retries!r}")
    return job.func_name, args, retries


def _sweeping(queue: Queue, functions: Collection[str], heartbeat: Heartbeat | None,
              every_s: float = 0.5) -> None:
    """The sweeper's reads of the due registry are the timers process's "reads": its heartbeat's
    last read says the sweeper is going."""
    while True:
        try:
            moved = sweep_due(queue, functions)
            if heartbeat:
                heartbeat.state, heartbeat.handled = "reading", heartbeat.handled + moved
                heartbeat.read_done()
        except Exception as exc:        # Redis gone: the worker loop reports it; try again
            if heartbeat:
                heartbeat.state = "backing-off"
            LOG.warning(f"timers: moving due timers failed, will retry: {type(exc).__name__}: {exc}")
        time.sleep(every_s)


def run_timers(bus: RedisStreamsBus, name: str, functions: Collection[str],
               heartbeat: Heartbeat | None = None, level: str = "WARNING", rq_connection=None,
               retention_s: int | None = None) -> None:
    """The rq worker for QUEUE in this process, jobs run without fork and only jobs calling one of
    `functions`; due timers are moved to the queue by sweep_due (in a thread), not by rq's
    scheduler. rq installs its own SIGTERM/SIGINT handlers: a warm shutdown after the job in hand.
    rq's worker quits on an error of its own (a job hash it cannot read): it is started again.
    `heartbeat`, when given, is kept from a thread of its own and ended on a clean stop; rq logs
    at `level` or above, but never its per-job INFO lines. rq's queue is on `rq_connection` (a
    client returning bytes: CHOREO_TIMERS_URL's server), else on the bus's server; the jobs
    publish through a bus on the bus's server either way."""
    # Without a server of rq's own the jobs publish where they came from, as they always did.
    job_class = allowing(functions, publishes_to=None if rq_connection is None else bus.client,
                         waits=(bus.wait_replicas, bus.wait_timeout_ms), retention_s=retention_s)
    connection = bus.raw if rq_connection is None else rq_connection     # rq reads bytes
    queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer, job_class=job_class)
    threading.Thread(target=_sweeping, args=(queue, frozenset(functions), heartbeat), daemon=True).start()
    stop = threading.Event()
    if heartbeat:
        heartbeat.start(stop)
    rq_level = level if logging.getLevelName(level) > logging.INFO else "WARNING"
    try:
        _work(queue, connection, name, job_class, rq_level)
    finally:
        stop.set()
        if heartbeat:
            heartbeat.end()


class TimersWorker(SimpleWorker):
    """rq's SimpleWorker, its command channel (rq's pubsub thread) polled every second. rq polls
    it every 60 s, and since redis-py 8.2 stopping that thread waits for it: a stop that caught it
    between an unsubscribe and its next poll took up to a minute, so honcho killed `choreo timers`
    (SIGKILL after 5 s) on about one stop in ten."""
    COMMAND_POLL_S = 1

    def subscribe(self):
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=self.COMMAND_POLL_S, daemon=True,
            exception_handler=self._pubsub_exception_handler)


# rq's upkeep of its registries, every this many seconds (rq's default: 600). A timers process
# killed (SIGKILL) between taking a job off the queue and starting it leaves the job in rq's
# intermediate list (`rq:queue:<queue>:intermediate`); the upkeep notes it there once, and once
# it has been there a minute fails it into its retries, so it fires. At rq's 600 s that timer
# fired ten minutes late.
MAINTENANCE_S = 15


def _work(queue: Queue, connection, name: str, job_class, level: str) -> None:
    for life in range(1, 1_000_000):
        # worker_ttl 20: rq blocks on the queue for ttl - 15 = 5 s, inside the client's 10 s
        # socket timeout (its default 405 s read would time out and back off while idle).
        worker = TimersWorker([queue], connection=connection, serializer=JSONSerializer,
                              name=f"{name}-{life}", job_class=job_class, worker_ttl=20,
                              maintenance_interval=MAINTENANCE_S)
        try:
            worker.work(with_scheduler=False, logging_level=level)
        except Exception as exc:            # rq's own upkeep meeting a Redis that refuses writes
            with contextlib.suppress(Exception):
                worker.unsubscribe()            # its command channel's thread, left running
            if worker._shutdown_requested_date is not None:
                return
            if isinstance(exc, (redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError)):
                raise                           # no retry grants it: stop, saying so
            LOG.error(f"timers: the rq worker failed ({type(exc).__name__}: {exc}); starting it "
                      f"again in 1 s")
            time.sleep(1)
            continue
        if worker._shutdown_requested_date is not None:     # SIGTERM/SIGINT, seen by rq's handler
            return
        LOG.error("timers: the rq worker quit on an error (logged above); starting it again in 1 s")
        time.sleep(1)

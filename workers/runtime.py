"""The consumer loop every service runs: read a batch, handle each entry, commit, repeat.

A Worker is a composition of four parts, each a module of its own:
    reading     which entries come next (workers.reading): own pending, retry due, stale, new
    handling    parse each into a Commit to make, or its dead letter (workers.handling)
    committing  commit rounds, refusals bisected, timers armed and disarmed (workers.committing)
    keeping     the lease thread and housekeeping (workers.keeping)
and the loop below, which (re)starts, polls, and backs off when Redis fails.

Who acks: only bus.commit, in the same atomic step as the entry's effects (or its dead letter).
What blocks: read_new, at most settings.block_ms (<= 1 s), so a stop flag is seen promptly.
Three kinds of failure: a business outcome is an event (the handler emits it); a handler that
raises leaves its entry pending, retried with backoff by times-delivered; a malformed entry, or
one that failed max_deliveries times, goes to dlq:<service> in the same commit as its XACK.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from typing import Callable, Collection, Mapping

from choreo.bus.contract import Bus, BusError, BusUnavailable, Delivery, GroupMissing, PermissionsMissing, reconnect_delay_s
from choreo.bus.envelope import Envelope
from choreo.bus.heartbeat import Heartbeat
from choreo.bus.layout import LayoutError
from choreo.scheduling.timers import RqTimers
from choreo.config.settings import Settings
from choreo.workers.committing import Committing
from choreo.workers.events import EVENTS as MODELS
from choreo.workers.handling import Elsewhere, Handled, Handling, Unhandleable, parse_delivery
from choreo.workers.keeping import Keeping
from choreo.workers.logs import EVENTS, WORKER, bound
from choreo.workers.observer import NO_OBSERVER, Observer
from choreo.workers.reading import ReadingPolicy
from choreo.workers.service import Service
from choreo.workers.unit_of_work import BatchView

# Moved with their part, still importable from here.
__all__ = ["Handled", "Unhandleable", "Worker", "consumer_name", "failure_kind", "parse_delivery", "tune_gc"]


def tune_gc() -> None:
    """For a worker process, once started: what it has loaded is set aside from the cyclic garbage
    collector (gc.freeze), and a young collection waits for 10,000 allocations instead of 700. An
    entry makes a few dozen objects, nearly all freed by their counts; the default threshold ran
    a collection every few entries (about 2% of a worker's instructions, measured by callgrind)."""
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def consumer_name(service: str, env=None, host: str | None = None) -> str:
    """Stable across restarts of the same process slot: honcho's `inventory.2` gives slot 2."""
    env = os.environ if env is None else env
    slot = env.get("CHOREO_SLOT") or env.get("HONCHO_PROCESS_NAME", "").rpartition(".")[2] or "1"
    return f"{service}-{host or socket.gethostname()}-{slot}"


class Worker:
    def __init__(self, service: Service, bus: Bus, settings: Settings, consumer: str,
                 clock: Callable[[], float] = time.time,
                 check: Callable[[], None] | None = None,
                 publishers: Mapping[str, Collection[str]] | None = None,
                 events: Mapping[str, type] | None = None,
                 observer: Observer = NO_OBSERVER, timers=None,
                 partitions: Collection[int] | None = None,
                 consumers: Mapping[str, Collection[str]] | None = None,
                 unreachable_hint: str = ""):
        self.service = service
        self.bus = bus
        self.settings = settings
        self.consumer = consumer
        # The partitions it serves (bus.layout; None: all): `choreo worker --partitions 0-7`.
        self.streams = service.streams_in(partitions)
        # Lines go through logging (workers.logs): operational ones on choreo.worker, one INFO
        # line per handled entry on choreo.events, so the latter can be turned down alone.
        self.log = bound(WORKER, service.name, consumer)
        # Run at every (re)start, before anything else: raises PermissionsMissing when the
        # server would refuse something this service needs (see bus.acl).
        self.check = check
        self.observer = observer            # metrics hooks (workers.observer); no-op by default
        # Said once, on the first failure to reach Redis before the first start: how to start one
        # (a worker waits for Redis rather than exit: honcho may start it first).
        self.unreachable_hint = unreachable_hint
        self._in_hand: tuple[float, list[Delivery]] | None = None   # the batch the lease renews
        self.heartbeat = Heartbeat(bus, service.name, consumer, settings.heartbeat_every_s, clock)
        self.reading = ReadingPolicy(bus, service.name, consumer, self.streams, settings, clock, observer)
        models = MODELS if events is None else events
        unknown = [t for t in (*service.consumes, *service.emits) if t not in models]
        if unknown:     # e.g. a service of another app given without its app's events
            raise TypeError(f"{service.name} handles or emits {', '.join(unknown)}, which the event "
                            f"models given do not declare: pass events=app.events")
        self.handling = Handling(service, settings, clock, observer, self.log, self.reading.backoff_ms,
                                 publishers, models, consumers)
        # Timers are armed with rq on the bus's server, or CHOREO_TIMERS_URL's, unless given
        # (tests keep them in memory; `choreo worker` gives its own, to close it).
        self.committing = Committing(bus, service.name, settings, self.handling, observer, self.log,
                                     bound(EVENTS, service.name, consumer),
                                     RqTimers(bus, settings.timers_url) if timers is None else timers)
        self.keeping = Keeping(bus, service, consumer, self.streams, settings, clock, self.log,
                               lambda: self._in_hand)

    @property
    def handled(self) -> int:
        return self.committing.handled

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """(Re)create groups and seed; on the first start only, finish own pending entries first
        (ReadingPolicy.started says why only then)."""
        if self.check:
            self.check()
        self.bus.ensure_groups(self.service.name, self.streams)
        if self.service.on_start:
            self.service.on_start(self.bus)
        self.reading.started()

    def run(self, stop: threading.Event) -> int:
        """Until `stop` is set; returns 0 after committing the batch in hand."""
        lease = threading.Thread(target=self.keeping.keep_lease, args=(stop,), daemon=True)
        lease.start()
        self.heartbeat.start(stop)
        failures, started, ever_started = 0, False, False
        while not stop.is_set():
            try:
                if not started:
                    self.start()
                    started = ever_started = True
                self.poll(self.settings.block_ms)
                failures = 0
            except GroupMissing as exc:
                self.log.warning(f"{self.service.voice}: group missing ({exc}); recreating")
                started = False
            except (PermissionsMissing, LayoutError):
                raise                       # no retry can grant it or agree: refuse to run, naming it
            except Exception as exc:
                # Unreachable, refusing (e.g. a key of the wrong type), or a fault of ours that an
                # entry provoked: back off and go on. An entry that keeps provoking it is
                # redelivered until the crash guard dead-letters it; the worker never dies of it.
                failures += 1
                self.heartbeat.state = "backing-off"
                self.observer.reconnecting(failures)
                delay = reconnect_delay_s(failures, self.settings.reconnect_max_s)
                hint = (f"; {self.unreachable_hint}" if failures == 1 and not ever_started
                        and isinstance(exc, BusUnavailable) and self.unreachable_hint
                        and not exc.hinted else "")     # not beside another server's own hint
                self.log.log(logging.WARNING if isinstance(exc, BusError) else logging.ERROR,
                             f"{self.service.voice}: {failure_kind(exc)} ({type(exc).__name__}: "
                             f"{exc}); retry {failures} in {delay:.1f}s{hint}")
                stop.wait(delay)
                started = False             # re-ensure groups before reading again
        self.heartbeat.end()
        return 0

    def poll(self, block_ms: int) -> int:
        if self.committing.owed:
            self.committing.pay_owed()
        self.heartbeat.state = "reading"
        deliveries = self.reading.next_deliveries(block_ms)
        self.heartbeat.read_done()
        if deliveries:
            self.heartbeat.state = "handling"
            self.observer.read(len(deliveries))
            self._in_hand = (time.monotonic(), deliveries)
            try:
                self.committing.commit_batch(deliveries)
            finally:
                self._in_hand = None
                self.heartbeat.handled = self.handled
        self.keeping.tidy()
        return len(deliveries)

    # -- the steps, for tests and the simulator that drive them one at a time -------------------
    def parse(self, d: Delivery) -> Envelope | Unhandleable | Elsewhere:
        return self.handling.parse(d)

    def handle(self, d: Delivery, event: Envelope | Unhandleable | Elsewhere, view: BatchView) -> Handled | None:
        return self.handling.handle(d, event, view)

    def arm_timers(self, ready: list[Handled]) -> None:
        self.committing.arm_timers(ready)

    def commit_batch(self, deliveries: list[Delivery]) -> None:
        self.committing.commit_batch(deliveries)

    def keep_lease(self, stop: threading.Event) -> None:
        self.keeping.keep_lease(stop)


def failure_kind(exc: Exception) -> str:
    if isinstance(exc, BusUnavailable):
        return "Redis unavailable"
    return "Redis error" if isinstance(exc, BusError) else "unexpected error"

"""The consumer loop every service runs: read a batch, handle each entry, commit, repeat.

Who acks: only bus.commit, in the same atomic step as the entry's effects (or its dead letter).
What blocks: read_new, at most settings.block_ms (<= 1 s), so a stop flag is seen promptly.
Three kinds of failure: a business outcome is an event (the handler emits it); a handler that
raises leaves its entry pending, retried with backoff by times-delivered; a malformed entry, or
one that failed max_deliveries times, goes to dlq:<service> in the same commit as its XACK.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping

from choreo.bus import keys as bus_keys
from choreo.bus.contract import (Bus, BusError, BusUnavailable, Commit, Delivery, GroupMissing, Outcome,
                          PermissionsMissing, reconnect_delay_s)
from choreo.bus.dead_letters import DeadLetter
from choreo.bus.envelope import Envelope, MalformedEntry, iso_ms
from choreo.bus.heartbeat import Heartbeat
from choreo.config.settings import Settings
from choreo.workers.events import EVENTS as MODELS, check_data
from choreo.workers.observer import (APPLIED, CONFLICT, DEAD_LETTERED, DUPLICATE, NO_OBSERVER, REFUSED,
                              Observer)
from choreo.workers.service import Service
from choreo.workers.timers import scheduled_call
from choreo.workers.logs import EVENTS, WORKER, bound
from choreo.workers.unit_of_work import BatchView, Timer, UnitOfWork


def consumer_name(service: str, env=None, host: str | None = None) -> str:
    """Stable across restarts of the same process slot: honcho's `inventory.2` gives slot 2."""
    env = os.environ if env is None else env
    slot = env.get("CHOREO_SLOT") or env.get("HONCHO_PROCESS_NAME", "").rpartition(".")[2] or "1"
    return f"{service}-{host or socket.gethostname()}-{slot}"


class Unhandleable(Exception):
    """Why an entry goes to the dead-letter stream without (another) try: malformed, refused by
    Redis, or given up on."""


@dataclass
class Handled:
    delivery: Delivery
    commit: Commit
    line: str                       # what to log once the commit is applied (no context)
    event: Envelope | None
    started: float
    timers: list[Timer] = field(default_factory=list)
    disarmed: list[str] = field(default_factory=list)


class Worker:
    def __init__(self, service: Service, bus: Bus, settings: Settings, consumer: str,
                 clock: Callable[[], float] = time.time,
                 check: Callable[[], None] | None = None,
                 publishers: Mapping[str, Collection[str]] | None = None,
                 events: Mapping[str, type] | None = None,
                 observer: Observer = NO_OBSERVER):
        self.service = service
        self.bus = bus
        self.settings = settings
        self.consumer = consumer
        # Lines go through logging (workers.logs): operational ones on choreo.worker, one INFO
        # line per handled entry on choreo.events, so the latter can be turned down alone.
        self.log = bound(WORKER, service.name, consumer)
        self.events = bound(EVENTS, service.name, consumer)
        self.clock = clock
        # Run at every (re)start, before anything else: raises PermissionsMissing when the
        # server would refuse something this service needs (see bus.acl).
        self.check = check
        self.publishers = publishers        # event type -> services that may publish it
        self.models = MODELS if events is None else events      # event type -> its data's model
        self.observer = observer            # metrics hooks (workers.observer); no-op by default
        self.streams = service.streams
        self._cursor: dict[str, str] | None = None   # own-pending recovery position, None = done
        self._started_once = False
        self._due = {"retry": 0.0, "claim": 0.0, "housekeeping": clock() + settings.housekeeping_every_s}
        self._last_error: dict[str, str] = {}
        self._in_hand: tuple[float, list[Delivery]] | None = None
        self._trimmed_seen = 0
        self.handled = 0
        self.heartbeat = Heartbeat(bus, service.name, consumer, settings.heartbeat_every_s, clock)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """(Re)create groups and seed; on the first start only, finish own pending entries first.
        A reconnect does not page through them again: re-reading counts as a delivery, and
        entries whose reply was lost are retried by retry_due."""
        if self.check:
            self.check()
        self.bus.ensure_groups(self.service.name, self.streams)
        if self.service.on_start:
            self.service.on_start(self.bus)
        if not self._started_once:
            self._cursor = {s: "0" for s in self.streams}
            self._started_once = True

    def run(self, stop: threading.Event) -> int:
        """Until `stop` is set; returns 0 after committing the batch in hand."""
        lease = threading.Thread(target=self.keep_lease, args=(stop,), daemon=True)
        lease.start()
        self.heartbeat.start(stop)
        failures, started = 0, False
        while not stop.is_set():
            try:
                if not started:
                    self.start()
                    started = True
                self.poll(self.settings.block_ms)
                failures = 0
            except GroupMissing as exc:
                self.log.warning(f"{self.service.voice}: group missing ({exc}); recreating")
                started = False
            except PermissionsMissing:
                raise                       # no retry can grant it: refuse to run, naming it
            except Exception as exc:
                # Unreachable, refusing (e.g. a key of the wrong type), or a fault of ours that an
                # entry provoked: back off and go on. An entry that keeps provoking it is
                # redelivered until the crash guard dead-letters it; the worker never dies of it.
                failures += 1
                self.heartbeat.state = "backing-off"
                self.observer.reconnecting(failures)
                delay = reconnect_delay_s(failures, self.settings.reconnect_max_s)
                self.log.log(logging.WARNING if isinstance(exc, BusError) else logging.ERROR,
                             f"{self.service.voice}: {failure_kind(exc)} ({type(exc).__name__}: "
                             f"{exc}); retry {failures} in {delay:.1f}s")
                stop.wait(delay)
                started = False             # re-ensure groups before reading again
        self.heartbeat.end()
        return 0

    def poll(self, block_ms: int) -> int:
        self.heartbeat.state = "reading"
        deliveries = self.next_deliveries(block_ms)
        self.heartbeat.read_done()
        if deliveries:
            self.heartbeat.state = "handling"
            self.observer.read(len(deliveries))
            self._in_hand = (time.monotonic(), deliveries)
            try:
                self.commit_batch(deliveries)
            finally:
                self._in_hand = None
                self.heartbeat.handled = self.handled
        self.tidy()
        return len(deliveries)

    # -- reading -------------------------------------------------------------------------------
    def next_deliveries(self, block_ms: int) -> list[Delivery]:
        """Own pending entries first (after a (re)start), then failed ones whose backoff has
        passed, then entries stale on other consumers, then new ones."""
        group, size = self.service.name, self.settings.batch_size
        if self._cursor is not None:
            mine = self.read_own_pending()
            if mine:
                return mine
        if self._is_due("retry", min(1.0, self.settings.retry_base_ms / 1000)):
            due = self.bus.retry_due(group, self.consumer, self.streams, self.backoff_ms, size)
            if due:
                return due
        if self._is_due("claim", self.settings.claim_every_s):
            stale = self.bus.claim_stale(group, self.consumer, self.streams,
                                         self.settings.claim_idle_ms, size)
            if stale:
                self.observer.claimed(len(stale))
                return stale
        return self.bus.read_new(group, self.consumer, self.streams, size, block_ms)

    def read_own_pending(self) -> list[Delivery]:
        """Page once through this consumer's pending list; what fails here is left to retry_due."""
        found = self.bus.read_own_pending(self.service.name, self.consumer, self._cursor,
                                          self.settings.batch_size)
        if not found:
            self._cursor = None
        for d in found:
            self._cursor[d.stream] = d.entry_id
        return found

    def backoff_ms(self, deliveries: int) -> int:
        return min(self.settings.retry_max_ms, self.settings.retry_base_ms * 2 ** min(deliveries - 1, 30))

    def _is_due(self, what: str, every_s: float) -> bool:
        now = self.clock()
        if now < self._due[what]:
            return False
        self._due[what] = now + every_s
        return True

    # -- handling and committing -----------------------------------------------------------------
    def commit_batch(self, deliveries: list[Delivery]) -> None:
        self._commit_items([(d, self.parse(d)) for d in deliveries])

    def _commit_items(self, todo: list[tuple[Delivery, Envelope | Unhandleable]]) -> None:
        """Handle and commit until nothing is left. When Redis refuses a read or a write of the
        batch (say a key of the wrong type), the entries go one by one to find the culprit, and
        that one is dead-lettered with Redis's error: the service never wedges on one entry."""
        while todo:
            try:
                todo = self.commit_round(todo)
            except (BusUnavailable, GroupMissing, PermissionsMissing):
                raise
            except BusError as exc:
                if len(todo) > 1:
                    for item in todo:
                        self._commit_items([item])
                    return
                delivery, parsed = todo[0]
                if isinstance(parsed, Unhandleable):
                    raise                   # even its dead letter is refused: run() backs off, logs
                todo = [(delivery, Unhandleable(f"refused by Redis: {exc}"))]

    def commit_round(self, todo):
        """One read-handle-commit round; returns what must go round again: entries from the first
        CONFLICT on (handled again on fresh reads) and REFUSED ones (then dead-lettered)."""
        view = BatchView(self.bus)
        view.prefetch([key for _, event in todo if isinstance(event, Envelope)
                       for key in self.declared_reads(event)])
        ready = [h for h in (self.handle(d, event, view) for d, event in todo) if h is not None]
        self.arm_timers(ready)
        if self.settings.commit_delay_ms:
            time.sleep(self.settings.commit_delay_ms / 1000)
        again, disarmed = [], []
        began = time.perf_counter()
        outcomes = self.bus.commit(self.service.name, [h.commit for h in ready])
        if ready:
            self.observer.committed([h.delivery for h in ready], time.perf_counter() - began)
        for h, outcome in zip(ready, outcomes):
            if outcome is Outcome.CONFLICT:
                self.observer.finished(h.delivery, CONFLICT)
                again.append((h.delivery, self.parse(h.delivery)))
            elif outcome is Outcome.REFUSED:
                self.observer.finished(h.delivery, REFUSED)
                if h.event is None:             # the dead letter itself: dlq:<service> is broken
                    raise BusError(f"cannot dead-letter {h.delivery.entry_id}: {h.commit.refusal}")
                again.append((h.delivery, Unhandleable(f"refused by Redis: {h.commit.refusal}")))
            else:
                self.report(h, outcome)
                disarmed += h.disarmed if outcome is Outcome.APPLIED else []
        if disarmed:
            self.bus.unschedule(disarmed)
        return again

    def arm_timers(self, ready: list[Handled]) -> None:
        """Before the commit: a crash in between re-arms the same job ids on redelivery, while
        arming after the commit could lose a timer for good."""
        calls = [scheduled_call(t) for h in ready for t in h.timers]
        if calls:
            self.bus.schedule(calls)

    def parse(self, d: Delivery) -> Envelope | Unhandleable:
        """The event, or why the entry goes to the dead-letter stream unhandled."""
        if d.deliveries > self.crash_guard:
            last = self._last_error.get(d.entry_id, "the worker handling it died or lost Redis each time")
            return Unhandleable(f"gave up after {d.deliveries - 1} deliveries: {last}")
        try:
            return parse_delivery(d, self.settings.max_entry_bytes, self.service, self.publishers,
                                  self.models)
        except MalformedEntry as exc:
            return Unhandleable(f"malformed: {exc}")
        except Exception as exc:    # RecursionError, MemoryError-free surprises: still input's fault
            return Unhandleable(f"malformed: {type(exc).__name__}: {str(exc)[:200]}")

    @property
    def crash_guard(self) -> int:
        """Deliveries after which an entry that never raised is given up on: it keeps killing or
        disconnecting the worker handling it. Handler errors dead-letter at max_deliveries."""
        return 3 * self.settings.max_deliveries

    def declared_reads(self, event: Envelope) -> list[str]:
        """The keys to prefetch for an event; a declaration that trips on odd data prefetches
        nothing, and the handler meets the same data where its failure is counted and retried."""
        try:
            return list(self.service.consumes[event.type].reads(event))
        except Exception:
            return []

    def handle(self, d: Delivery, event: Envelope | Unhandleable, view: BatchView) -> Handled | None:
        """Run the entry's handler into a Commit; None leaves it pending for a retry."""
        started = time.perf_counter()
        if isinstance(event, Unhandleable):
            return self.dead_letter(d, str(event), started)
        uow = UnitOfWork(self.service.name, self.service.emits, view, cause=event, clock=self.clock,
                         creates=self.service.creates, retention_s=self.settings.retention_s)
        uow.traceparent = self.observer.handling(d, event)
        try:
            self.service.consumes[event.type].handle(event, uow)
            view.apply(uow.ops)
        except Exception as exc:    # transient failure or bug: retried until max_deliveries
            return self.handler_failed(d, f"{type(exc).__name__}: {exc}", started)
        self.observer.handler_ran(d, time.perf_counter() - started)
        commit = uow.to_commit(ack=(d.stream, d.entry_id),
                               seen=bus_keys.seen(self.service.name), seen_id=event.id,
                               seen_ttl_s=self.settings.seen_ttl_s)
        return Handled(d, commit, self.service.says(event.type, event.order_id), event, started,
                       uow.timers, uow.disarmed)

    def handler_failed(self, d: Delivery, error: str, started: float) -> Handled | None:
        if d.deliveries >= self.settings.max_deliveries:
            return self.dead_letter(d, f"failed {d.deliveries} times, last: {error}", started)
        self._last_error[d.entry_id] = error
        self.observer.handler_failed(d, error)
        self.log.warning(f"{self.service.voice}: handler failed for {d.stream} {d.entry_id} "
                         f"(delivery {d.deliveries}, retry in {self.backoff_ms(d.deliveries)} ms): "
                         f"{error}", extra={"data": {"stream": d.stream, "entry_id": d.entry_id,
                                                      "deliveries": d.deliveries}})
        return None

    def dead_letter(self, d: Delivery, reason: str, started: float) -> Handled:
        letter = DeadLetter.of(self.service.name, d, reason, iso_ms(self.clock()))
        commit = Commit(ops=[letter.publish_op(self.settings.dlq_max_entries)],
                        ack=(d.stream, d.entry_id))
        return Handled(d, commit, f"{self.service.voice}: dead-lettered {d.stream} {d.entry_id}: "
                                  f"{reason}", None, started)

    def report(self, h: Handled, outcome: Outcome) -> None:
        self.handled += 1
        self.observer.finished(h.delivery, DUPLICATE if outcome is Outcome.DUPLICATE
                               else APPLIED if h.event else DEAD_LETTERED)
        self._last_error.pop(h.delivery.entry_id, None)
        context = {
            "event_id": h.event.id if h.event else "", "order_id": h.event.order_id if h.event else "",
            "stream": h.delivery.stream, "entry_id": h.delivery.entry_id,
            "deliveries": h.delivery.deliveries,
            "ms": round((time.perf_counter() - h.started) * 1000, 2),
        }
        if outcome is Outcome.DUPLICATE:
            context["duplicate"] = "ignored"
        if h.event is None:                 # a dead letter: never silenced with the event lines
            self.log.error(h.line, extra={"context": context})
        else:
            self.events.info(h.line, extra={"context": context})

    # -- keeping things tidy -------------------------------------------------------------------
    def keep_lease(self, stop: threading.Event) -> None:
        """Lease thread: renew entries in hand for longer than a third of claim_idle_ms, so a slow
        handler is not mistaken for a dead consumer and its work taken over."""
        every = self.settings.claim_idle_ms / 3000
        while not stop.wait(every):
            in_hand = self._in_hand
            if in_hand and time.monotonic() - in_hand[0] >= every:
                try:
                    self.bus.renew(self.service.name, self.consumer, in_hand[1])
                except BusError:
                    pass                # the main loop reports, reconnects, recreates groups
                except Exception as exc:    # never let the lease die silently
                    self.log.error(f"{self.service.voice}: lease renewal failed: {type(exc).__name__}: {exc}")

    def tidy(self) -> None:
        trimmed = getattr(self.bus, "trimmed_while_pending", 0)
        if trimmed > self._trimmed_seen:
            self.log.warning(f"{self.service.voice}: {trimmed - self._trimmed_seen} pending entries "
                             f"were trimmed before they were handled (XAUTOCLAIM reported them deleted)")
            self._trimmed_seen = trimmed
        if not self._is_due("housekeeping", self.settings.housekeeping_every_s):
            return
        for stream in self.streams:
            self.guarded(f"forgetting idle consumers on {stream}", self.forget_idle, stream)

    def forget_idle(self, stream: str) -> None:
        for name in self.bus.forget_idle_consumers(self.service.name, [stream],
                                                   self.settings.stale_consumer_ms):
            self.log.info(f"{self.service.voice}: removed idle consumer {name} (nothing pending)")

    def guarded(self, what: str, job: Callable, *args) -> None:
        """Housekeeping never stops or slows the consumer loop: a failure is logged with what it
        was doing and tried again at the next round. A lost connection is the loop's to handle."""
        try:
            job(*args)
        except (BusUnavailable, GroupMissing):
            raise
        except Exception as exc:
            self.log.warning(f"{self.service.voice}: {what} failed, will retry: {type(exc).__name__}: {exc}")


def failure_kind(exc: Exception) -> str:
    if isinstance(exc, BusUnavailable):
        return "Redis unavailable"
    return "Redis error" if isinstance(exc, BusError) else "unexpected error"


def parse_delivery(d: Delivery, max_bytes: int, service: Service,
                   publishers: Mapping[str, Collection[str]] | None = None,
                   events: Mapping[str, type] = MODELS) -> Envelope:
    if d.error:
        raise MalformedEntry(d.error)
    if not d.fields:
        raise MalformedEntry("entry deleted (trimmed) while pending")
    event = Envelope.parse(d.fields, max_bytes)
    if event.type != bus_keys.event_type_of(d.stream):
        raise MalformedEntry(f"type {event.type!r} does not belong on {d.stream}")
    if event.type not in service.consumes:
        raise MalformedEntry(f"{service.name} does not handle {event.type}")
    if publishers is not None and event.producer not in publishers.get(event.type, ()):
        raise MalformedEntry(f"producer {event.producer[:40]!r} does not publish {event.type}")
    check_data(event, events)
    return event

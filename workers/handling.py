"""From a delivery to what to commit: parse it, run its handler into a Commit (Handled), or write
its dead letter instead.

Three kinds of failure: a business outcome is an event (the handler emits it); a handler that
raises leaves its entry pending (handle returns None), retried with backoff by times-delivered; a
malformed entry, or one that failed max_deliveries times, becomes a dead letter (the record is
bus.dead_letters'), committed with its XACK.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping

from choreo.bus import keys as bus_keys
from choreo.bus.contract import BusUnavailable, Commit, Delivery, PermissionsMissing
from choreo.bus.dead_letters import DeadLetter
from choreo.bus.envelope import Envelope, MalformedEntry, iso_ms
from choreo.config.settings import Settings
from choreo.workers.events import EVENTS as MODELS, check_data
from choreo.workers.logs import Bound
from choreo.workers.observer import Observer
from choreo.workers.service import Service, confirm
from choreo.workers.unit_of_work import BatchView, Timer, UnitOfWork


class Unhandleable(Exception):
    """Why an entry goes to the dead-letter stream without (another) try: malformed, refused by
    Redis, or given up on; `event` is the entry's event when it parsed (the service's
    on_dead_letter hook needs it: an earlier try may have left steps to undo)."""

    def __init__(self, reason: str, event: Envelope | None = None):
        super().__init__(reason)
        self.event = event


def for_a_reader(consumers: Mapping[str, Collection[str]], stream: str, group: str) -> bool:
    """Whether `group` (an entry's `for`) consumes `stream`'s events: only such a group can have
    had a letter replayed to it there (bus.dead_letters.republish). An entry addressed to any
    other is malformed here, and `dlq replay` may hand it back to the group that dead-lettered it."""
    return group in consumers.get(bus_keys.event_type_of(stream), ())


class Elsewhere:
    """A replayed copy of another group's dead letter (its `for` field, bus.dead_letters.republish):
    this group had its own go at the original, so it acknowledges the copy and does nothing,
    however often it was delivered and whatever it holds: it is never dead-lettered here, where a
    replay of that letter would hand this group the event a second time."""

    def __init__(self, group: str):
        self.group = group


@dataclass
class Handled:
    delivery: Delivery
    commit: Commit
    line: str                       # what to log once the commit is applied (no context); for an
                                    # event, "": the service's line for it, made only if logged
    event: Envelope | None          # the event applied; None for a dead letter
    started: float
    timers: list[Timer] = field(default_factory=list)
    disarmed: list[str] = field(default_factory=list)
    letter_of: Envelope | None = None   # a dead letter's event, when the entry parsed (its log line)
    elsewhere: bool = False             # a replay for another group: acknowledged, nothing done
    holds_after: tuple = ()             # (hold steps, retention_s) on_dead_letter asked for: made
                                        # once the dead letter is applied (Committing.commit_round)
    reason: str = ""                    # a dead letter's reason


class Handling:
    def __init__(self, service: Service, settings: Settings, clock: Callable[[], float],
                 observer: Observer, log: Bound, backoff_ms: Callable[[int], int],
                 publishers: Mapping[str, Collection[str]] | None, models: Mapping[str, type],
                 consumers: Mapping[str, Collection[str]] | None = None):
        self.service = service
        self.settings = settings
        self.clock = clock
        self.observer = observer
        self.log = log
        self.backoff_ms = backoff_ms
        self.publishers = publishers        # event type -> services that may publish it
        self.models = models                # event type -> its data's model
        self.consumers = consumers          # event type -> services that consume it (None: unchecked)
        self.last_error: dict[str, str] = {}    # entry id -> its handler's last error, until applied

    def parse(self, d: Delivery) -> Envelope | Unhandleable | Elsewhere:
        """The event, or why the entry goes to the dead-letter stream unhandled, or Elsewhere."""
        addressed = d.fields.get("for", "") if d.fields else ""
        if addressed and addressed != self.service.name:
            # Only a group that consumes the stream can have a letter replayed on it: an entry
            # addressed to any other would be acknowledged by every group and lost.
            if self.consumers is not None and not for_a_reader(self.consumers, d.stream, addressed):
                return Unhandleable(f"malformed: `for` names {addressed[:40]!r}, which does not "
                                    f"consume {bus_keys.event_type_of(d.stream)}")
            return Elsewhere(addressed)
        if d.deliveries > self.crash_guard:
            last = self.last_error.get(d.entry_id, "the worker handling it died or lost Redis each time")
            return Unhandleable(f"gave up after {d.deliveries - 1} deliveries: {last}",
                                self._event_or_none(d))
        try:
            return parse_delivery(d, self.settings.max_entry_bytes, self.service, self.publishers,
                                  self.models)
        except MalformedEntry as exc:
            return Unhandleable(f"malformed: {exc}")
        except Exception as exc:    # RecursionError, MemoryError-free surprises: still input's fault
            return Unhandleable(f"malformed: {type(exc).__name__}: {str(exc)[:200]}")

    def _event_or_none(self, d: Delivery) -> Envelope | None:
        try:
            return parse_delivery(d, self.settings.max_entry_bytes, self.service, self.publishers,
                                  self.models)
        except Exception:           # malformed (or worse): no handler can have run on it
            return None

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

    def handle(self, d: Delivery, event: Envelope | Unhandleable | Elsewhere,
               view: BatchView) -> Handled | None:
        """Run the entry's handler into a Commit; None leaves it pending for a retry."""
        started = time.perf_counter()
        if isinstance(event, Unhandleable):
            return self.dead_letter(d, str(event), started, event.event, view)
        if isinstance(event, Elsewhere):
            return Handled(d, Commit(ack=(d.stream, d.entry_id)),
                           f"{self.service.voice}: replay for {event.group[:40]!r} ignored",
                           None, started, elsewhere=True)
        handler = self.service.consumes[event.type].handle
        # An event published once (bus/commit.lua) needs only the ack's guard; any other may come
        # again as a new entry with the same id, which the service's seen set catches.
        seen = "" if event.once else bus_keys.seen(self.service.name, bus_keys.partition_of(d.stream))
        guard = {"ack": (d.stream, d.entry_id), "seen": seen, "seen_id": event.id if seen else "",
                 "seen_ttl_s": self.settings.seen_ttl_s if seen else 0}
        if handler is confirm:      # changes nothing: its commit is the ack (and the id), no unit of work
            self.observer.handling(d, event)
            self.observer.handler_ran(d, time.perf_counter() - started)
            return Handled(d, Commit(**guard), "", event, started)
        uow = UnitOfWork(self.service.name, self.service.emits, view, cause=event, clock=self.clock,
                         creates=self.service.creates, retention_s=self.settings.retention_s,
                         models=self.models, record=self.service.record)
        uow.hold_retention_s = max(self.settings.retention_s, self.settings.seen_ttl_s)
        uow.traceparent = self.observer.handling(d, event)
        try:
            handler(event, uow)
            view.apply(uow.commit_ops())
        except (BusUnavailable, PermissionsMissing):
            # Redis away (a hold's slot failing over or migrating) or refusing the user: the
            # worker backs off (or stops), as for its own reads; not the entry's failure, which
            # would dead-letter it and lose its effects once max_deliveries outages had passed.
            raise
        except Exception as exc:    # transient failure or bug: retried until max_deliveries
            return self.handler_failed(d, event, f"{type(exc).__name__}: {exc}", started, view)
        self.observer.handler_ran(d, time.perf_counter() - started)
        commit = uow.to_commit(**guard)
        line = f"{self.service.voice}: {uow.said}" if uow.said else ""
        return Handled(d, commit, line, event, started, uow.timers, uow.disarmed)

    def handler_failed(self, d: Delivery, event: Envelope, error: str, started: float,
                       view: BatchView | None = None) -> Handled | None:
        if d.deliveries >= self.settings.max_deliveries:
            return self.dead_letter(d, f"failed {d.deliveries} times, last: {error}", started, event,
                                    view)
        self.last_error[d.entry_id] = error
        self.observer.handler_failed(d, error)
        self.log.warning(f"{self.service.voice}: handler failed for {d.stream} {d.entry_id} "
                         f"(delivery {d.deliveries}, retry in {self.backoff_ms(d.deliveries)} ms): "
                         f"{error}", extra={"data": {"stream": d.stream, "entry_id": d.entry_id,
                                                      "deliveries": d.deliveries}})
        return None

    def dead_letter(self, d: Delivery, reason: str, started: float,
                    event: Envelope | None = None, view: BatchView | None = None) -> Handled:
        """The one place a dead letter is written: its record, committed with the entry's XACK,
        after the service's on_dead_letter hook (for an entry that parsed) and guarded by the
        versions the hook read."""
        letter = DeadLetter.of(self.service.name, d, reason, iso_ms(self.clock()))
        checks, holds_after = self.before_dead_letter(event, view)
        commit = Commit(checks=checks, ops=[letter.publish_op(self.settings.dlq_max_entries)],
                        ack=(d.stream, d.entry_id))
        return Handled(d, commit, f"{self.service.voice}: dead-lettered {d.stream} {d.entry_id}: "
                                  f"{reason}", None, started, letter_of=event, holds_after=holds_after,
                       reason=reason)


    def before_dead_letter(self, event: Envelope | None,
                           view: BatchView | None) -> tuple[dict[str, str], tuple]:
        """Run the service's on_dead_letter hook (Service.on_dead_letter: undo what tries of this
        entry did outside any commit, e.g. inventory's holds) and return the versions it read,
        which the dead letter's commit checks (if one changed meanwhile, the dead letter comes
        back CONFLICT and goes round again on fresh reads), and the hold steps it asked for with
        their retention, made once the dead letter is applied. The bus's errors propagate (the
        entry stays pending, retried); a bug in the hook is logged and the dead letter still
        written."""
        hook = self.service.on_dead_letter
        if hook is None or event is None or view is None:
            return {}, ()
        uow = UnitOfWork(self.service.name, (), view, cause=event, clock=self.clock,
                         retention_s=self.settings.retention_s, models=self.models)
        uow.deferred = []
        try:
            hook(event, uow)
        except (BusUnavailable, PermissionsMissing):
            raise                           # Redis away or refusing the user: back off, retry
        except Exception as exc:            # a bug, or Redis refusing a step: the letter still goes
            self.log.error(f"{self.service.voice}: on_dead_letter failed for {event.type} "
                           f"{event.id}: {type(exc).__name__}: {exc}")
        return dict(uow.checks), ((tuple(uow.deferred), uow.hold_retention_s) if uow.deferred else ())


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
    if bus_keys.stream_for(event.type, event.order_id) != d.stream:
        # Its commit would touch another partition's keys (on a cluster: another slot).
        raise MalformedEntry(f"order {event.order_id} belongs on {bus_keys.stream_for(event.type, event.order_id)}, "
                             f"not {d.stream}")
    if event.type not in service.consumes:
        raise MalformedEntry(f"{service.name} does not handle {event.type}")
    if publishers is not None and event.producer not in publishers.get(event.type, ()):
        raise MalformedEntry(f"producer {event.producer[:40]!r} does not publish {event.type}")
    check_data(event, events)
    return event

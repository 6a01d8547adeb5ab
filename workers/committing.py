"""Committing a batch: handle every entry on one prefetched view, arm its timers, commit it in one
bus.commit, and go round again for what the commit did not apply.

Who acks: only bus.commit, in the same atomic step as the entry's effects (or its dead letter).
Timers are armed before the commit and disarmed after it (arm_timers says why), through `timers`
(scheduling.timers.RqTimers: schedule, unschedule), not the bus.
"""

from __future__ import annotations

import logging
import time

from choreo.bus.contract import Bus, BusError, BusUnavailable, Delivery, GroupMissing, Outcome, PermissionsMissing
from choreo.bus.envelope import Envelope
from choreo.config.settings import Settings
from choreo.workers.timers import scheduled_call
from choreo.workers.handling import Elsewhere, Handled, Handling, Unhandleable
from choreo.workers.logs import Bound
from choreo.workers.observer import APPLIED, CONFLICT, DEAD_LETTERED, DUPLICATE, REFUSED, Observer
from choreo.workers.unit_of_work import BatchView

# Per-entry lines (applied, duplicate): INFO, so --log-level WARNING drops them; dead letters,
# retries and reconnects are WARNING or above and stay.
EVENT_LEVEL = logging.INFO


class LetterRefused(BusError):
    """Redis refused a dead letter (the service's dead-letter stream is broken or full): the
    worker backs off with the entry pending. Not a reason to go through the batch one entry at
    a time, which would handle again entries whose commits were applied beside it (a handler run
    again on an entry given up makes holds that nothing forgets)."""


class Committing:
    def __init__(self, bus: Bus, group: str, settings: Settings, handling: Handling,
                 observer: Observer, log: Bound, events: Bound, timers):
        self.bus = bus
        self.timers = timers                # schedule(calls), unschedule(job ids)
        self.group = group
        self.settings = settings
        self.handling = handling
        self.observer = observer
        self.log = log                      # choreo.worker: a dead letter's line
        self.events = events                # choreo.events: an applied or duplicate entry's line
        self.handled = 0
        # Hold steps of applied dead letters that Redis did not take (it went away): owed, and
        # tried again at the start of every round until they are made (holds_after).
        self.owed: list[Handled] = []

    def commit_batch(self, deliveries: list[Delivery]) -> None:
        self._commit_items([(d, self.handling.parse(d)) for d in deliveries])

    def _commit_items(self, todo: list[tuple[Delivery, Envelope | Unhandleable | Elsewhere]]) -> None:
        """Handle and commit until nothing is left. When Redis refuses a read or a write of the
        batch (say a key of the wrong type), the entries go one by one to find the culprit, and
        that one is dead-lettered with Redis's error: the service never wedges on one entry."""
        while todo:
            try:
                todo = self.commit_round(todo)
            except (BusUnavailable, GroupMissing, PermissionsMissing, LetterRefused):
                raise                       # LetterRefused: dlq:<service> itself, no entry's fault
            except BusError as exc:
                committed = getattr(exc, "committed", ())
                todo = [item for item in todo if item[0] not in committed]
                if len(todo) > 1:
                    for item in todo:
                        self._commit_items([item])
                    return
                if not todo:
                    return
                delivery, parsed = todo[0]
                if isinstance(parsed, (Unhandleable, Elsewhere)):
                    raise                   # even its dead letter (or bare ack) is refused: run() backs off, logs
                todo = [(delivery, Unhandleable(f"refused by Redis: {exc}", parsed))]

    def commit_round(self, todo):
        """One read-handle-commit round; returns what must go round again: entries from the first
        CONFLICT on (handled again on fresh reads) and REFUSED ones (then dead-lettered)."""
        handling = self.handling
        self.pay_owed()
        view = BatchView(self.bus)
        view.prefetch([key for _, event in todo if isinstance(event, Envelope)
                       for key in handling.declared_reads(event)])
        ready = [h for h in (handling.handle(d, event, view) for d, event in todo) if h is not None]
        self.arm_timers(ready)
        if self.settings.commit_delay_ms:
            time.sleep(self.settings.commit_delay_ms / 1000)
        again, timers = [], {}          # timer id -> armed (True) or disarmed, by the last applied
        broken = None                   # a dead letter Redis refused: raised once the rest is done
        began = time.perf_counter()
        try:
            outcomes = self.bus.commit(self.group, [h.commit for h in ready])
        except BusError as exc:
            exc.committed = self.applied_before(ready, exc.outcomes or ())
            raise
        if ready:
            self.observer.committed([h.delivery for h in ready], time.perf_counter() - began)
        for h, outcome in zip(ready, outcomes):
            if outcome is Outcome.CONFLICT:
                self.observer.finished(h.delivery, CONFLICT)
                again.append((h.delivery, handling.parse(h.delivery)))
            elif outcome is Outcome.REFUSED:
                self.observer.finished(h.delivery, REFUSED)
                if h.event is None and not h.elsewhere:     # the dead letter itself: dlq:<service> is broken
                    # Raised after the loop: letters applied beside it still get their holds' steps.
                    broken = broken or LetterRefused(f"cannot dead-letter {h.delivery.entry_id}: "
                                                     f"{h.commit.refusal}")
                    continue
                again.append((h.delivery, Unhandleable(f"refused by Redis: {h.commit.refusal}",
                                                        h.event)))
            else:
                self.report(h, outcome)
                if outcome is Outcome.APPLIED:
                    timers.update((t.job_id, True) for t in h.timers)
                    timers.update((job, False) for job in h.disarmed)
                    if h.holds_after:
                        self.holds_after(h)
        disarmed = [job for job, armed in timers.items() if not armed]
        if disarmed:
            # After the commit, and only what the batch's last word on it disarmed: a timer
            # disarmed by one entry and armed again by a later one stays armed.
            self.timers.unschedule(disarmed)
        if broken:
            raise broken
        return again

    def applied_before(self, ready: list[Handled], outcomes) -> list[Delivery]:
        """The commit raised after applying part of the batch (a cluster's later slot failing
        over, a NOPERM at a later commit): the applied dead letters' hold steps are made (or
        owed) now. Their entries are acknowledged, so redelivered they come back DUPLICATE, which
        makes no step: the holds would stay RESERVED for an order given up. Returns the
        deliveries committed (applied or duplicate), which must not be handled again: a handler
        run again on an applied letter's entry would take its stock anew."""
        committed = []
        for h, outcome in zip(ready, outcomes):
            if outcome is Outcome.APPLIED or outcome is Outcome.DUPLICATE:
                committed.append(h.delivery)
            if outcome is Outcome.APPLIED and h.holds_after:
                self.holds_after(h)
        return committed

    def pay_owed(self) -> None:
        """The hold steps of applied dead letters that Redis did not take, tried again (each round,
        and each poll of an idle worker)."""
        owed, self.owed = self.owed, []
        for h in owed:
            self.holds_after(h)

    def holds_after(self, h: Handled) -> None:
        """A dead letter's hold steps (on_dead_letter: inventory forgets the order's holds), once
        the letter is applied: the entry is acknowledged, so no commit of it can follow and record
        the holds, and the steps (idempotent) may be made any time after. With Redis away they
        are owed, made at the start of a later round. Lost to a crash or a refusal, the holds stay
        RESERVED (stock kept, never oversold): a replay of the letter takes them up again, and
        `choreo audit` names them."""
        requests, retention_s = h.holds_after
        try:
            self.bus.holds(requests, retention_s)
        except PermissionsMissing:
            raise                           # the worker stops, naming it
        except BusUnavailable as exc:
            self.owed.append(h)
            self.log.warning(f"{self.handling.service.voice}: holds of {h.delivery.stream} "
                             f"{h.delivery.entry_id} not forgotten yet ({exc}): tried again next round")
        except BusError as exc:
            self.log.error(f"{self.handling.service.voice}: holds of {h.delivery.stream} "
                           f"{h.delivery.entry_id} not forgotten ({exc}): a replay of its dead "
                           f"letter takes them up; choreo audit names them meanwhile")

    def arm_timers(self, ready: list[Handled]) -> None:
        """Before the commit: a crash in between re-arms the same job ids on redelivery, while
        arming after the commit could lose a timer for good."""
        calls = [scheduled_call(t) for h in ready for t in h.timers]
        if calls:
            self.timers.schedule(calls)

    def report(self, h: Handled, outcome: Outcome) -> None:
        self.handled += 1
        duplicate = outcome is Outcome.DUPLICATE or h.elsewhere
        self.observer.finished(h.delivery, DUPLICATE if duplicate
                               else APPLIED if h.event else DEAD_LETTERED)
        self.handling.last_error.pop(h.delivery.entry_id, None)
        letter = h.event is None and not h.elsewhere
        if not letter and not self.events.isEnabledFor(EVENT_LEVEL):
            return                          # event lines turned down (--log-level): nothing to build
        event = h.event or h.letter_of      # a dead letter of an event that parsed names it too
        context = {
            "event_id": event.id if event else "", "order_id": event.order_id if event else "",
            "stream": h.delivery.stream, "entry_id": h.delivery.entry_id,
            "deliveries": h.delivery.deliveries,
            "ms": round((time.perf_counter() - h.started) * 1000, 2),
        }
        if duplicate:
            context["duplicate"] = "ignored"
        if letter and duplicate:            # acknowledged meanwhile: nothing was written
            d = h.delivery
            self.log.warning(f"{self.handling.service.voice}: did not dead-letter {d.stream} "
                             f"{d.entry_id}: {h.reason} (the entry was acknowledged meanwhile: "
                             f"another consumer finished it)", extra={"context": context})
        elif letter:                        # a dead letter: never silenced with the event lines
            self.log.error(h.line, extra={"context": context})
        else:
            line = h.line or self.handling.service.says(h.event.type, h.event.order_id)
            self.events.log(EVENT_LEVEL, line, extra={"context": context})

"""The consumer loop every service runs: read a batch, handle each entry, commit, repeat.

Who acks: only bus.commit, in the same atomic step as the entry's effects (or its dead letter).
What blocks: read_new, at most settings.block_ms (<= 1 s), so a stop flag is seen promptly.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from bus import keys as bus_keys
from bus.contract import Bus, BusUnavailable, Commit, Delivery, GroupMissing, Outcome
from bus.envelope import Envelope, MalformedEntry, iso_ms
from config.settings import Settings
from workers.service import Service
from workers.unit_of_work import BatchView, UnitOfWork

Log = Callable[[str], None]


def consumer_name(service: str, env=None, host: str | None = None) -> str:
    """Stable across restarts of the same process slot: honcho's `inventory.2` gives slot 2."""
    env = os.environ if env is None else env
    slot = env.get("CHOREO_SLOT") or env.get("HONCHO_PROCESS_NAME", "").rpartition(".")[2] or "1"
    return f"{service}-{host or socket.gethostname()}-{slot}"


@dataclass
class Handled:
    delivery: Delivery
    commit: Commit
    line: str                       # what to log once the commit is applied
    event: Envelope | None
    started: float


class Worker:
    def __init__(self, service: Service, bus: Bus, settings: Settings, consumer: str,
                 log: Log = print, clock: Callable[[], float] = time.time):
        self.service = service
        self.bus = bus
        self.settings = settings
        self.consumer = consumer
        self.log = log
        self.clock = clock
        self.streams = service.streams
        self._cursor: dict[str, str] | None = None   # own-pending recovery position, None = done
        self._next_claim = 0.0
        self._last_error: dict[str, str] = {}
        self.handled = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.bus.ensure_groups(self.service.name, self.streams)
        if self.service.on_start:
            self.service.on_start(self.bus)
        self._cursor = {s: "0" for s in self.streams}

    def run(self, stop: threading.Event) -> int:
        """Until `stop` is set: returns 0 after committing the batch in hand."""
        failures, started = 0, False
        while not stop.is_set():
            try:
                if not started:
                    self.start()
                    started = True
                self.poll(self.settings.block_ms)
                failures = 0
            except GroupMissing as exc:
                self.log(f"{self.service.voice}: group missing ({exc}); recreating")
                started = False
            except BusUnavailable as exc:
                failures += 1
                delay = min(self.settings.reconnect_max_s, 0.5 * 2 ** min(failures - 1, 10))
                self.log(f"{self.service.voice}: Redis unavailable ({exc}); "
                         f"retry {failures} in {delay:.1f}s")
                stop.wait(delay)
                started = False             # re-ensure groups, then finish own pending first
        return 0

    def poll(self, block_ms: int) -> int:
        deliveries = self.next_deliveries(block_ms)
        if deliveries:
            self.commit_batch(deliveries)
        return len(deliveries)

    # -- reading -------------------------------------------------------------------------------
    def next_deliveries(self, block_ms: int) -> list[Delivery]:
        """Own pending entries first (after a restart), then stale ones of others, then new ones."""
        group, size = self.service.name, self.settings.batch_size
        if self._cursor is not None:
            mine = self.read_own_pending()
            if mine:
                return mine
        if self.clock() >= self._next_claim:
            self._next_claim = self.clock() + self.settings.claim_every_s
            stale = self.bus.claim_stale(group, self.consumer, self.streams,
                                         self.settings.claim_idle_ms, size)
            if stale:
                return stale
        return self.bus.read_new(group, self.consumer, self.streams, size, block_ms)

    def read_own_pending(self) -> list[Delivery]:
        """Page once through this consumer's pending list. A failing entry is not re-read here;
        claim_stale retries it once it has been idle for claim_idle_ms."""
        found = self.bus.read_own_pending(self.service.name, self.consumer, self._cursor,
                                          self.settings.batch_size)
        if not found:
            self._cursor = None
        for d in found:
            self._cursor[d.stream] = d.entry_id
        return found

    # -- handling and committing -----------------------------------------------------------------
    def commit_batch(self, deliveries: list[Delivery]) -> None:
        """Handle and commit; entries from the first CONFLICT on are handled again on fresh reads."""
        todo = deliveries
        while todo:
            view = BatchView(self.bus)
            ready = [h for h in (self.handle(d, view) for d in todo) if h is not None]
            if self.settings.commit_delay_ms:
                time.sleep(self.settings.commit_delay_ms / 1000)
            outcomes = self.bus.commit(self.service.name, [h.commit for h in ready])
            todo = [h.delivery for h, o in zip(ready, outcomes) if o is Outcome.CONFLICT]
            for h, outcome in zip(ready, outcomes):
                if outcome is not Outcome.CONFLICT:
                    self.report(h, outcome)

    def handle(self, d: Delivery, view: BatchView) -> Handled | None:
        """Run the entry's handler into a Commit; None leaves it pending for a later retry."""
        started = time.perf_counter()
        try:
            event = parse_delivery(d, self.settings.max_entry_bytes, self.service)
        except MalformedEntry as exc:
            return self.dead_letter(d, f"malformed: {exc}", started)
        if d.deliveries > self.settings.max_deliveries:
            last = self._last_error.get(d.entry_id, "unknown (failed in an earlier process)")
            return self.dead_letter(d, f"gave up after {d.deliveries - 1} deliveries: {last}", started)
        uow = UnitOfWork(self.service.name, self.service.emits, view, cause=event, clock=self.clock)
        try:
            self.service.consumes[event.type].handle(event, uow)
        except Exception as exc:    # a transient failure or a bug: leave pending, retried later
            self._last_error[d.entry_id] = f"{type(exc).__name__}: {exc}"
            self.log(f"{self.service.voice}: handler failed for {d.stream} {d.entry_id} "
                     f"(delivery {d.deliveries}): {type(exc).__name__}: {exc}")
            return None
        view.apply(uow.ops)
        commit = uow.to_commit(ack=(d.stream, d.entry_id),
                               seen=bus_keys.seen(self.service.name, event.id),
                               seen_ttl_s=self.settings.seen_ttl_s)
        return Handled(d, commit, self.service.says(event.type, event.order_id), event, started)

    def dead_letter(self, d: Delivery, reason: str, started: float) -> Handled:
        commit = Commit(ops=[dead_letter_op(self.service.name, d, reason, self.clock())],
                        ack=(d.stream, d.entry_id))
        return Handled(d, commit, f"{self.service.voice}: dead-lettered {d.stream} {d.entry_id}: "
                                  f"{reason}", None, started)

    def report(self, h: Handled, outcome: Outcome) -> None:
        self.handled += 1
        self._last_error.pop(h.delivery.entry_id, None)
        ms = (time.perf_counter() - h.started) * 1000
        context = {
            "event_id": h.event.id if h.event else "", "order_id": h.event.order_id if h.event else "",
            "stream": h.delivery.stream, "entry_id": h.delivery.entry_id,
            "deliveries": h.delivery.deliveries, "ms": round(ms, 2),
        }
        if outcome is Outcome.DUPLICATE:
            context["duplicate"] = "ignored"
        self.log(format_line(h.line, context, self.settings.log_format))


def parse_delivery(d: Delivery, max_bytes: int, service: Service) -> Envelope:
    event = Envelope.parse(d.fields, max_bytes)
    if event.type != bus_keys.event_type_of(d.stream):
        raise MalformedEntry(f"type {event.type!r} does not belong on {d.stream}")
    if event.type not in service.consumes:
        raise MalformedEntry(f"{service.name} does not handle {event.type}")
    return event


def dead_letter_op(group: str, d: Delivery, reason: str, now: float) -> tuple:
    fields = {"stream": d.stream, "entry_id": d.entry_id, "group": group,
              "deliveries": str(d.deliveries), "error": reason, "at": iso_ms(now),
              "entry": json.dumps(d.fields, sort_keys=True)}
    return ("PUBLISH", bus_keys.dead_letters(group), "", *[x for kv in fields.items() for x in kv])


def format_line(line: str, context: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"msg": line, **context})
    return line + "  " + " ".join(f"{k}={v}" for k, v in context.items())

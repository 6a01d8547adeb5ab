"""Which entries a worker handles next: its own pending ones after a (re)start, then failed ones
whose backoff has passed, then entries stale on other consumers, then new ones.

What blocks: only read_new, at most block_ms (settings.block_ms <= 1 s), so a stop flag is seen
promptly. Retrying and claiming are asked for at most every so often (Due), on the injected clock.
"""

from __future__ import annotations

from typing import Callable

from choreo.bus.contract import Bus, Delivery
from choreo.config.settings import Settings
from choreo.workers.observer import Observer


class Due:
    """A step taken at most once every so often on the injected clock: retry_due, claim_stale,
    housekeeping."""

    def __init__(self, clock: Callable[[], float], first: float = 0.0):
        self.clock = clock
        self.at = first

    def now(self, every_s: float) -> bool:
        """True, and the next one is every_s from now, when the step is due."""
        now = self.clock()
        if now < self.at:
            return False
        self.at = now + every_s
        return True


class ReadingPolicy:
    def __init__(self, bus: Bus, group: str, consumer: str, streams: list[str], settings: Settings,
                 clock: Callable[[], float], observer: Observer):
        self.bus = bus
        self.group = group
        self.consumer = consumer
        self.streams = streams
        self.settings = settings
        self.observer = observer
        self._cursor: dict[str, str] | None = None   # own-pending recovery position, None = done
        self._started_once = False
        self._retry = Due(clock)
        self._claim = Due(clock)

    def started(self) -> None:
        """On the first start only, page through own pending entries first. A reconnect does not
        page through them again: re-reading counts as a delivery, and entries whose reply was lost
        are retried by retry_due."""
        if not self._started_once:
            self._cursor = {s: "0" for s in self.streams}
            self._started_once = True

    def next_deliveries(self, block_ms: int) -> list[Delivery]:
        """Own pending entries first (after a (re)start), then failed ones whose backoff has
        passed, then entries stale on other consumers, then new ones."""
        group, size = self.group, self.settings.batch_size
        if self._cursor is not None:
            mine = self.read_own_pending()
            if mine:
                return mine
        if self._retry.now(min(1.0, self.settings.retry_base_ms / 1000)):
            due = self.bus.retry_due(group, self.consumer, self.streams, self.backoff_ms, size)
            if due:
                return due
        if self._claim.now(self.settings.claim_every_s):
            stale = self.bus.claim_stale(group, self.consumer, self.streams,
                                         self.settings.claim_idle_ms, size)
            if stale:
                self.observer.claimed(len(stale))
                return stale
        return self.bus.read_new(group, self.consumer, self.streams, size, block_ms)

    def read_own_pending(self) -> list[Delivery]:
        """Page once through this consumer's pending list, one entry a read (and so a commit);
        what fails here is left to retry_due. One at a time because each read of a pending entry
        counts as a delivery: an entry that kills the worker before its commit (its handler, or
        Redis's answer to it) is then the only one whose count climbs with every restart, and
        the crash guard gives up on it alone. Read a batch at a time, the entries read with it
        climbed alike and were dead-lettered with it. (A restart has at most a batch or so of
        them: a few hundred round trips.)"""
        while self._cursor:
            stream = next(iter(self._cursor))
            found = self.bus.read_own_pending(self.group, self.consumer,
                                              {stream: self._cursor[stream]}, 1)
            if found:
                self._cursor[stream] = found[-1].entry_id
                return found
            del self._cursor[stream]
        self._cursor = None
        return []

    def backoff_ms(self, deliveries: int) -> int:
        return min(self.settings.retry_max_ms, self.settings.retry_base_ms * 2 ** min(deliveries - 1, 30))

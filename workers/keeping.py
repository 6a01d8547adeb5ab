"""What a worker keeps up beside handling: the lease on the entries in hand (its own thread), and
housekeeping between batches. Neither ever stops or slows the consumer loop: a failure is logged
and tried again; a lost connection is the loop's to handle.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from choreo.bus.contract import Bus, BusError, BusUnavailable, Delivery, GroupMissing
from choreo.config.settings import Settings
from choreo.workers.logs import Bound
from choreo.workers.reading import Due
from choreo.workers.service import Service


class Keeping:
    def __init__(self, bus: Bus, service: Service, consumer: str, streams: list[str], settings: Settings,
                 clock: Callable[[], float], log: Bound,
                 in_hand: Callable[[], tuple[float, list[Delivery]] | None]):
        self.bus = bus
        self.service = service
        self.consumer = consumer
        self.streams = streams              # what this worker reads: its partitions' streams
        self.settings = settings
        self.log = log
        self.in_hand = in_hand              # (since when, the batch) the loop holds, or None
        self._housekeeping = Due(clock, clock() + settings.housekeeping_every_s)
        self._trimmed_seen = 0
        self._short_waits_seen = 0          # commits WAIT timed out on (bus.short_waits), logged

    def keep_lease(self, stop: threading.Event) -> None:
        """Lease thread: renew entries in hand for longer than a third of claim_idle_ms, so a slow
        handler is not mistaken for a dead consumer and its work taken over."""
        every = self.settings.claim_idle_ms / 3000
        while not stop.wait(every):
            in_hand = self.in_hand()
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
        short = getattr(self.bus, "short_waits", 0)
        if short > self._short_waits_seen:
            self.log.warning(f"{self.service.voice}: {short - self._short_waits_seen} commits were not "
                             f"confirmed by {self.settings.wait_replicas} replica(s) within "
                             f"{self.settings.wait_timeout_ms} ms (CHOREO_WAIT_REPLICAS): a replica is "
                             f"missing or behind; they stand, unprotected until it catches up")
            self._short_waits_seen = short
        if not self._housekeeping.now(self.settings.housekeeping_every_s):
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

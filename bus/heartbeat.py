"""Liveness: each worker and the timers process keeps a heartbeat in Redis, as rq does for its
workers. XINFO CONSUMERS cannot say whether a worker is alive: its `idle` counts from the last
*delivery* (Redis 7.0), and an XREADGROUP that returns nothing does not even create the consumer,
so a quiet, healthy worker looks dead and a frozen one looks alive until the next delivery.

A heartbeat is the hash heartbeat:<service>:<consumer> (bus.keys), renewed every `every_s` from a
thread of its own with a TTL of three periods: a process that is killed, SIGSTOPped or cut off
stops counting as live within that TTL. The hash says what the process is doing (state) and when
its consumer loop last read, so a process whose loop is wedged while its heartbeat thread runs
is seen as alive but not reading. A clean stop deletes it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from importlib import metadata
from typing import Callable

from choreo.bus.contract import BusError, BusUnavailable

LOG = logging.getLogger("choreo.worker")

STATES = ("starting", "reading", "handling", "backing-off", "stopping")
TTL_PERIODS = 3


def version() -> str:
    try:
        return metadata.version("choreo")
    except metadata.PackageNotFoundError:
        return "unknown"


class Heartbeat:
    """What the owning loop sets (state, last_read, handled) is written on the next beat."""

    def __init__(self, bus, service: str, consumer: str, every_s: float,
                 clock: Callable[[], float] = time.time):
        self.bus, self.service, self.consumer = bus, service, consumer
        self.every_s, self.clock = every_s, clock
        self.state = "starting"
        self.last_read: float | None = None     # epoch seconds of the loop's last completed read
        self.handled = 0
        self._lock = threading.Lock()           # a beat in flight never re-creates an ended key
        self._ended = False
        self._wake = threading.Event()          # beat now, not at the end of the period

    @property
    def ttl_ms(self) -> int:
        return int(self.every_s * TTL_PERIODS * 1000)

    def read_done(self) -> None:
        """The loop's read returned. The first one is written at once: until then the heartbeat
        says "starting", never read, which readers cannot tell from a wedged start."""
        first = self.last_read is None
        self.last_read = self.clock()
        if first:
            self._wake.set()

    def fields(self) -> dict[str, str]:
        return {"service": self.service, "consumer": self.consumer, "host": socket.gethostname(),
                "pid": str(os.getpid()), "version": version(), "state": self.state,
                "beat_ms": str(int(self.clock() * 1000)),
                "last_read_ms": "" if self.last_read is None else str(int(self.last_read * 1000)),
                "handled": str(self.handled), "ttl_ms": str(self.ttl_ms)}

    def beat(self) -> None:
        with self._lock:
            if not self._ended:
                self.bus.beat(self.service, self.consumer, self.fields(), self.ttl_ms)

    def keep(self, stop: threading.Event) -> None:
        """The heartbeat thread: beat now, then every every_s until `stop`. A beat lost to an
        outage is left to the owning loop to report (it meets the same Redis); one Redis refuses
        (its key of the wrong type, a permission) only this thread meets: said once per reason,
        while health and the dashboard see the worker as gone. The next one tries again."""
        refused = ""
        while not stop.is_set():
            try:
                self.beat()
                refused = ""
            except BusUnavailable:
                pass
            except BusError as exc:
                if str(exc) != refused:
                    refused = str(exc)
                    LOG.warning(f"heartbeat of {self.service}/{self.consumer} refused, will retry "
                                f"(health and the dashboard see no heartbeat meanwhile): {exc}")
            except Exception as exc:    # never let liveness die silently: say so, beat again
                LOG.error(f"heartbeat of {self.service}/{self.consumer} failed, will retry: "
                          f"{type(exc).__name__}: {exc}")
            self._wake.wait(self.every_s)
            self._wake.clear()

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.keep, args=(stop,), daemon=True, name="heartbeat")
        thread.start()
        return thread

    def end(self) -> None:
        """On a clean stop: the key goes now, not a TTL later. Best effort: Redis may be gone."""
        self._wake.set()
        with self._lock:
            self._ended = True
            self.state = "stopping"
            try:
                self.bus.end_beat(self.service, self.consumer)
            except BusError:
                pass

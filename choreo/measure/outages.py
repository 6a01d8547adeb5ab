"""Riding through a Redis that stops answering, for a command that must see its work through
(`choreo load`): each call is retried with the workers' capped backoff until it answers, every
outage is said once and measured, and the command gives up only at its deadline."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from choreo.bus.contract import BusError, BusUnavailable, reconnect_delay_s

T = TypeVar("T")


class GaveUp(BusError):
    """Redis was still unreachable when the command's deadline passed."""


@dataclass
class Outage:
    began: float                # monotonic, for the durations
    began_ms: int               # wall clock, comparable with an order's created/ended times
    ended: float | None = None
    ended_ms: int | None = None


class RideThrough:
    def __init__(self, deadline: float, max_backoff_s: float, say: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.deadline = deadline    # on `clock`
        self.max_backoff_s = max_backoff_s
        self.say = say
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self.outages: list[Outage] = []

    def call(self, attempt: Callable[[bool], T]) -> T:
        """attempt(retrying) until it answers. retrying is True after a failed try of this call:
        that try may have been applied with only its reply lost, so the attempt checks first."""
        failures = 0
        while True:
            try:
                value = attempt(failures > 0)
            except BusUnavailable as exc:
                failures += 1
                self._wait(exc, failures)
                continue
            self._end_outage()
            return value

    @property
    def count(self) -> int:
        return len(self.outages)

    @property
    def total_s(self) -> float:
        """Time spent unable to reach Redis, the current outage so far included."""
        now = self.clock()
        return sum((o.ended if o.ended is not None else now) - o.began for o in self.outages)

    def overlap_ms(self, start_ms: int, end_ms: int) -> int:
        """How much of [start_ms, end_ms] (wall clock) Redis was unreachable."""
        now_ms = int(self.wall() * 1000)
        return sum(max(0, min(end_ms, o.ended_ms or now_ms) - max(start_ms, o.began_ms))
                   for o in self.outages)

    def _wait(self, exc: BusUnavailable, failures: int) -> None:
        if not self.outages or self.outages[-1].ended is not None:
            self.outages.append(Outage(self.clock(), int(self.wall() * 1000)))
            self.say(f"choreo load: Redis unavailable ({exc}); reconnecting with backoff "
                     f"until the --timeout")
        left = self.deadline - self.clock()
        if left <= 0:
            raise GaveUp(f"choreo load: gave up: Redis unreachable for {self.total_s:.1f} s "
                         f"when the --timeout ran out ({exc})")
        self.sleep(min(left, reconnect_delay_s(failures, self.max_backoff_s)))

    def _end_outage(self) -> None:
        if self.outages and self.outages[-1].ended is None:
            self.outages[-1].ended = self.clock()
            self.outages[-1].ended_ms = int(self.wall() * 1000)

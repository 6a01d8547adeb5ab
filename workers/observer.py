"""What the worker runtime tells whoever watches it: how each entry ended, how long handling and
committing took, retries, claims, reconnects. The runtime calls these hooks and nothing else;
metrics (choreo.ops.metrics) and tracing (workers.tracing) implement them. The default, NO_OBSERVER, does nothing, so a
worker without metrics pays one empty method call per hook and imports nothing.

Hooks must be cheap and must not raise: they run on the consumer loop, between a read and a commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from choreo.bus.contract import Delivery
    from choreo.bus.envelope import Envelope

# How a handled entry ended, one per commit outcome (bus.contract.Outcome) plus the dead letter.
APPLIED = "applied"            # its effects and events committed, entry acknowledged
DUPLICATE = "duplicate"        # already handled (acked, or its event id seen): acknowledged only
CONFLICT = "conflict"          # a key it read changed before the commit: handled again, not acked
REFUSED = "refused"            # Redis would refuse a write: nothing applied, then dead-lettered
DEAD_LETTERED = "dead_lettered"  # moved to dlq:<service> and acknowledged in one commit
OUTCOMES = (APPLIED, DUPLICATE, CONFLICT, REFUSED, DEAD_LETTERED)


class Observer:
    """Every hook a no-op; subclass and override the ones you need."""

    def read(self, entries: int) -> None:
        """A batch of `entries` (> 0) is about to be handled and committed."""

    def claimed(self, entries: int) -> None:
        """`entries` (> 0) were taken over from other consumers (XAUTOCLAIM)."""

    def handling(self, d: "Delivery", event: "Envelope") -> str:
        """The entry's handler is about to run. Returns the traceparent the events it emits
        carry ("" for none: no field on the wire)."""
        return ""

    def handler_ran(self, d: "Delivery", seconds: float) -> None:
        """The handler returned (its unit of work is ready to commit) after `seconds`."""

    def handler_failed(self, d: "Delivery", error: str) -> None:
        """The handler raised; the entry stays pending for a retry with backoff."""

    def committed(self, deliveries: Sequence["Delivery"], seconds: float) -> None:
        """One commit round trip for these entries (handled or dead-lettered) took `seconds`."""

    def finished(self, d: "Delivery", outcome: str) -> None:
        """The entry came out of a commit as `outcome` (one of OUTCOMES)."""

    def reconnecting(self, failures: int) -> None:
        """The run loop lost Redis (or hit a fault) `failures` times in a row and backs off."""


NO_OBSERVER = Observer()


class Observers(Observer):
    """Several observers as one (metrics and tracing): each hook goes to each, in order."""

    def __init__(self, *observers: Observer):
        self.observers = observers

    def read(self, entries):
        for o in self.observers:
            o.read(entries)

    def claimed(self, entries):
        for o in self.observers:
            o.claimed(entries)

    def handling(self, d, event):
        return next((t for t in [o.handling(d, event) for o in self.observers] if t), "")

    def handler_ran(self, d, seconds):
        for o in self.observers:
            o.handler_ran(d, seconds)

    def handler_failed(self, d, error):
        for o in self.observers:
            o.handler_failed(d, error)

    def committed(self, deliveries, seconds):
        for o in self.observers:
            o.committed(deliveries, seconds)

    def finished(self, d, outcome):
        for o in self.observers:
            o.finished(d, outcome)

    def reconnecting(self, failures):
        for o in self.observers:
            o.reconnecting(failures)


def combined(*observers: Observer) -> Observer:
    """The observers that do something, as one; NO_OBSERVER when none does."""
    active = [o for o in observers if o is not NO_OBSERVER]
    return active[0] if len(active) == 1 else Observers(*active) if active else NO_OBSERVER

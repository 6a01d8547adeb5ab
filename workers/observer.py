"""What the worker runtime tells whoever watches it: how each entry ended, how long handling and
committing took, retries, claims, reconnects. The runtime calls these hooks and nothing else; a
metrics exporter (choreo.metrics) implements them. The default, NO_OBSERVER, does nothing, so a
worker without metrics pays one empty method call per hook and imports nothing.

Hooks must be cheap and must not raise: they run on the consumer loop, between a read and a commit.
"""

from __future__ import annotations

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

    def handler_ran(self, stream: str, seconds: float) -> None:
        """A handler returned (its unit of work is ready to commit) after `seconds`."""

    def handler_failed(self, stream: str) -> None:
        """A handler raised; the entry stays pending for a retry with backoff."""

    def committed(self, entries: int, seconds: float) -> None:
        """One commit round trip of `entries` commits took `seconds`."""

    def finished(self, stream: str, outcome: str) -> None:
        """An entry of `stream` came out of a commit as `outcome` (one of OUTCOMES)."""

    def reconnecting(self, failures: int) -> None:
        """The run loop lost Redis (or hit a fault) `failures` times in a row and backs off."""


NO_OBSERVER = Observer()

"""What the bus promises. Everything a worker or a command may ask of it is here; the only
implementation is bus.redis_streams.RedisStreamsBus (over a real Redis or an embedded fakeredis).

Delivery: at least once per consumer group. An entry stays pending on the consumer that read it
until `commit` acknowledges it, so a crash before commit means redelivery, never loss.

Commit: each Commit is applied atomically on its own: its version checks, then (only if they all
hold and its dedup marker is absent) its XACK, its event id added to
its dedup set, its writes and its published events. A commit whose XACK finds the entry already
acknowledged, or whose event id the set already holds, is a DUPLICATE: acknowledged, nothing else. A batch of commits travels in one round trip and is applied in order; the first one whose
checks fail stops the batch (it and every later one come back CONFLICT, nothing of them applied),
so a later commit never builds on state an earlier one failed to write. Every write of a commit is
checked before the first is made (key types, integer fields): one Redis would refuse comes back
REFUSED with the reason, nothing of it applied, and stops the batch the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable, Mapping, NamedTuple, Protocol, Sequence

from choreo.bus.ops import Op


class BusError(Exception):
    """Base of the errors the bus raises; callers never see redis-py's exceptions.
    `outcomes`: raised by commit after part of its batch was committed (a cluster's later slot
    failing over, a NOPERM at a later commit), the outcome of each commit in the batch's order,
    None for those not committed; None when nothing is known to be committed."""

    outcomes: list[Outcome | None] | None = None


class BusUnavailable(BusError):
    """The server cannot be reached (refused, reset, timed out). Retry with reconnect_delay_s.
    `hinted`: the message already says how to start the server it means (another than
    REDIS_URL's, e.g. CHOREO_TIMERS_URL's), so a worker adds no hint of its own."""

    def __init__(self, *args, hinted: bool = False):
        super().__init__(*args)
        self.hinted = hinted


def reconnect_delay_s(failures: int, cap_s: float) -> float:
    """The wait before reconnect attempt `failures` (1, 2, ...): 0.5 s doubling, capped at cap_s,
    so a Redis that is restarting is found soon and one that stays down is not hammered."""
    return min(cap_s, 0.5 * 2 ** min(failures - 1, 10))


_ENTRY_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


# The largest entry id there is: a stream whose last id it is takes no more entries (an XADD with
# it, by hand), and nothing comes after it (an exclusive range from it is refused).
LAST_ENTRY_ID = f"{2 ** 64 - 1}-{2 ** 64 - 1}"


def is_entry_id(text: str) -> bool:
    """Whether `text` is a stream entry id Redis takes, `<ms>-<seq>`: ASCII digits, each part
    within 64 bits (a larger one Redis refuses as an invalid stream ID)."""
    parts = _ENTRY_ID.fullmatch(text)
    return parts is not None and int(parts[1]) < 2 ** 64 and int(parts[2]) < 2 ** 64


class PermissionsMissing(BusError):
    """The server refuses this client a command it needs (ACL NOPERM). No retry can grant it:
    a worker stops, naming it, rather than dead-letter or half-apply anything (see bus.acl)."""


class CredentialsRefused(PermissionsMissing):
    """The server refuses the user name and password (or wants one): no retry mends them, so a
    worker stops, saying so, rather than wait as for a server that is down."""


class GroupMissing(BusError):
    """A stream or consumer group vanished (NOGROUP), e.g. a Redis that restarted empty."""


# Made per entry: slots, and not frozen (see bus.envelope.Envelope). Nothing changes one once made.
@dataclass(slots=True)
class Delivery:
    """One stream entry as handed to a consumer."""
    stream: str
    entry_id: str
    fields: dict[str, str]
    # Times delivered according to the pending list (1 for a first read).
    deliveries: int = 1
    # Set when the entry could not be decoded (not UTF-8): it can only be dead-lettered.
    error: str = ""


class Outcome(Enum):
    APPLIED = 1
    DUPLICATE = 0      # entry already acked, or event id already seen: acked, nothing else written
    CONFLICT = -1      # a checked key changed since it was read: nothing written, not acked
    REFUSED = -2       # Redis would refuse one of its writes (see Commit.refusal): nothing written


@dataclass
class Commit:
    """Everything one handled entry (or one command) changes, applied all-or-nothing.

    ops are the typed writes of bus.ops (SetFields, DropFields, AddTo, Count, Append, Index,
    Expire, File, Publish), applied in order. Each hash a commit writes with SetFields, DropFields or
    AddTo has its `_v` field bumped by one when the commit is applied, which is what `checks` compare against.
    """
    # hash key -> expected `_v` ("0" = absent); a bucket of filed records (bus.keys.filed) ->
    # "!<field> <field>...": it holds none of them (records read absent, filed by none since)
    checks: dict[str, str] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)                    # bus.ops, in order
    ack: tuple[str, str] | None = None                     # (stream, entry id) to XACK
    seen: str = ""                                         # dedup set key (bus.keys.seen), "" for none
    seen_id: str = ""                                      # the event id it must not hold yet
    seen_ttl_s: int = 0                                    # how long the id is remembered
    refusal: str = ""                                      # set by commit() when REFUSED: why


HOLD_OPS = ("reserve", "release", "sell", "forget")


class Hold(NamedTuple):
    """One step of bus/hold.lua: `op` (one of HOLD_OPS) on one order's hold on one product's
    stock, atomic in the stock's slot and idempotent by the hold key (docs/partitions.md)."""
    stock: str                     # the stock hash
    hold: str                      # its hold for one order, in the stock's slot
    op: str
    qty: int = 0                   # reserve only


class Bus(Protocol):
    def ensure_groups(self, group: str, streams: Iterable[str]) -> None:
        """Create `group` on each stream at id 0 (MKSTREAM). Idempotent."""

    def read_new(self, group: str, consumer: str, streams: Sequence[str], count: int,
                 block_ms: int) -> list[Delivery]:
        """Entries never delivered to the group; blocks up to block_ms when there are none."""

    def read_own_pending(self, group: str, consumer: str, after: Mapping[str, str],
                         count: int) -> list[Delivery]:
        """Entries delivered to this consumer and not yet acknowledged, with ids above after[stream]."""

    def claim_stale(self, group: str, consumer: str, streams: Sequence[str], min_idle_ms: int,
                    count: int) -> list[Delivery]:
        """Take over entries pending longer than min_idle_ms on any consumer of the group."""

    def allocate_ids(self, sequence: str, n: int) -> range:
        """n fresh integers from a named counter."""

    def keep_above(self, sequence: str, taken: int) -> None:
        """Raise the counter to at least `taken` (an id given by hand): allocate_ids never hands
        it out later."""

    def retry_due(self, group: str, consumer: str, streams: Sequence[str],
                  backoff_ms: Callable[[int], int], count: int) -> list[Delivery]:
        """This consumer's pending entries idle for at least backoff_ms(times delivered): a failed
        handling is retried with a backoff counted by Redis, so a restart does not reset it."""

    def renew(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> int:
        """Reset the idle time of entries still pending on this consumer (a lease on work in hand)."""

    def forget_idle_consumers(self, group: str, streams: Sequence[str], min_idle_ms: int) -> list[str]:
        """Delete consumers idle that long, but only those holding nothing pending."""

    def read_hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """Current fields of each hash (with `_v`), one round trip; for an absent one, the fields
        of the settled record filed in its stead (bus.keys.filed, without `_v`), one more."""

    def commit(self, group: str, commits: Sequence[Commit]) -> list[Outcome]:
        """Apply commits in order, atomically each, in one round trip (see module doc). Raising
        after some were applied, it says which in the error's `outcomes` (BusError)."""

    def holds(self, requests: Sequence[Hold], retention_s: int) -> list[str]:
        """Run each hold step (bus/hold.lua), one round trip; the hold's status after each ("" for
        none; forget: the status it had). Not part of any commit: each step is atomic on its own."""

    def beat(self, service: str, consumer: str, fields: dict[str, str], ttl_ms: int) -> None:
        """Renew the heartbeat hash of (service, consumer) with these fields, living ttl_ms."""

    def end_beat(self, service: str, consumer: str) -> None:
        """Delete that heartbeat now (a clean stop)."""

    def close(self) -> None: ...

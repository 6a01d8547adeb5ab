"""How a service is declared: what it consumes (and what it says and does for each), what it emits.

The runtime, the CLI's topology and trace, and the dashboard all read these declarations, so the
choreography map can never drift from the code that runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Collection, Iterable, Mapping

from choreo.bus import keys as bus_keys, layout
from choreo.bus.envelope import Envelope
from choreo.workers.unit_of_work import UnitOfWork

Handler = Callable[[Envelope, UnitOfWork], None]


def _reads_nothing(event: Envelope) -> list[str]:
    return []


@dataclass(frozen=True)
class On:
    """Handling of one event type: the business logic and the line the service logs for it."""
    handle: Handler
    says: str                                      # formatted with order_id
    # The hashes the handler will read, so a batch fetches them all in one round trip. Only an
    # optimisation: a read of anything else is fetched when it happens.
    reads: Callable[[Envelope], list[str]] = _reads_nothing


@dataclass(frozen=True)
class Service:
    name: str                                      # also its consumer group's name
    voice: str                                     # "InventoryService", as in the tutorial
    consumes: Mapping[str, On]
    emits: tuple[str, ...]
    # Events this service publishes on a command (no cause), with the line it says doing so.
    creates: Mapping[str, str] = field(default_factory=dict)
    # Key patterns of the domain state this service owns: its ACL user may touch no others.
    owns: tuple[str, ...] = ()
    # Run once when a worker starts, before it reads (e.g. seeding starting stock). Idempotent.
    on_start: Callable | None = field(default=None, compare=False)
    # Called with (event, unit of work) before an entry of a parsed event is dead-lettered, to
    # undo what handling it did outside any commit (inventory forgets its holds); the versions it
    # reads guard the dead letter's commit. Its writes and emits are not committed: only reads,
    # and hold steps (uow.holds), made once the dead letter is committed and only if it is.
    # Idempotent: a dead letter may be tried again.
    on_dead_letter: Callable | None = field(default=None, compare=False)
    # Key patterns (within `owns`) the service may also delete: forgotten holds.
    deletes: tuple[str, ...] = ()
    # The hash this service keeps for an instance (inventory's reservation:<order id>): a commit
    # that writes it lists there the events it publishes for the instance, as trace fields,
    # instead of in the instance's trace key (UnitOfWork.to_commit; read by `choreo trace`).
    record: Callable[[str], str] | None = field(default=None, compare=False)
    # Whether its records, once settled for good (uow.settle), are filed: moved into a bucket
    # hash of ~64 instances' settled records, a field each, their own keys deleted (bus.keys.filed;
    # ~150 B of Redis memory less per record). Needs `record`; ids of digits only. `filed_fields`:
    # the fields its records usually hold, kept by position, names not repeated per record
    # (bus.filing; append only: each value says how many it was filed with).
    files: bool = False
    filed_fields: tuple[str, ...] = ()

    def __post_init__(self):
        if self.files:
            if self.record is None:
                raise ValueError(f"service {self.name}: files=True needs the record it files")
            # The kind is the record key's prefix, the same in every layout: asked of a plain one,
            # so that declaring a service (on import) never reads CHOREO_PARTITIONS, whose bad
            # value a command reports in one line once it runs.
            previous = layout.use(layout.Layout())
            try:
                kind = self.record("0").partition(":")[0]
            finally:
                layout.use(previous)
            bus_keys.FILED_KINDS[kind] = tuple(self.filed_fields)

    @property
    def streams(self) -> list[str]:
        """The streams it reads, in every partition."""
        return self.streams_in(None)

    def streams_in(self, partitions: Collection[int] | None) -> list[str]:
        """The streams it reads in the given partitions (None: all of them, bus.layout)."""
        served = layout.current().all() if partitions is None else partitions
        return [bus_keys.stream(t, p) for p in served for t in self.consumes]

    def says(self, event_type: str, order_id: str) -> str:
        return self._lines[event_type].format(order_id=order_id)

    @cached_property
    def _lines(self) -> dict[str, str]:
        """What it says for each event type, voice included: one format per handled entry."""
        voice = self.voice.replace("{", "{{").replace("}", "}}")
        return {t: f"{voice}: {on.says}" for t, on in self.consumes.items()}

    def says_creating(self, event_type: str, order_id: str) -> str:
        return f"{self.voice}: " + self.creates[event_type].format(order_id=order_id)


def trace_keys(instance_id: str, services: Iterable[Service]) -> list[str]:
    """Where the refs of an instance's events are (bus.inspect.trace_refs): each service's record
    of it, for what a commit writing that record published, and its trace key for the rest
    (timers' events, services without a record, earlier versions' traces)."""
    return list(dict.fromkeys([bus_keys.trace(instance_id),
                               *(s.record(instance_id) for s in services if s.record)]))


def confirm(event: Envelope, uow: UnitOfWork) -> None:
    """A service consuming its own event: nothing to change, the logged line is the confirmation
    that the event is durable and visible to everyone downstream."""

"""What a handler gets instead of Redis: reads that remember the version they saw, and writes and
events that are only collected. The runtime turns a unit of work into one bus Commit."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Sequence

import msgspec

from choreo.bus import filing, keys as bus_keys
from choreo.bus.contract import Bus, Commit, Hold
from choreo.bus.envelope import MAX_DEPTH, ORDER_ID, Envelope, MalformedEntry, decode_data, too_deep
from choreo.bus.ops import (VERSIONED, AddTo, Append, Count, DropFields, Expire, File, Index, Op,
                     Publish, SetFields)
from choreo.scheduling.timers import JOB_ID
from choreo.workers.events import check_data


VERSION = "_v"
DEFAULT_RETENTION_S = 86400             # config.settings.Settings.retention_s's default
# The generic timer job (workers.timers): publishes the event when due, whatever the state.
PUBLISH_DUE = "choreo.workers.timers.publish_due"


class UndeclaredEvent(Exception):
    """A handler emitted an event type its service does not declare in `emits`."""


class InvalidEvent(ValueError):
    """An emitted event every consumer would dead-letter: a bad instance id, or data that does
    not fit its type's model."""


class UncheckedCounter(Exception):
    """A handler used count() (no version) on a hash it read: a racing commit would go unseen."""


@dataclass(frozen=True)
class Timer:
    """An event the service will publish later (at_ms, epoch milliseconds) unless told otherwise:
    armed by the runtime with the scheduler before the commit, under an idempotent job id."""
    job_id: str
    at_ms: int
    event_type: str
    order_id: str
    causation_id: str
    producer: str = ""                      # the service that armed it: the event's producer
    job: str = PUBLISH_DUE                  # the timers' function that fires it (App.timer_jobs)


def write_to(fields: dict[str, str], op: Op) -> None:
    """What a versioned op (SetFields, DropFields, AddTo) does to a hash's fields, as commit.lua
    does it (the version bump aside)."""
    if isinstance(op, SetFields):
        fields.update((k, str(v)) for k, v in op.fields.items())
    elif isinstance(op, DropFields):
        for name in op.fields:
            fields.pop(name, None)
    else:
        fields[op.field] = str(int(fields.get(op.field, 0)) + int(op.amount))


class BatchView:
    """Hash reads for one batch. Reads go to Redis once per key; what an earlier entry of the same
    batch wrote is visible to later ones, matching the order in which the commit applies them."""

    def __init__(self, bus: Bus):
        self._bus = bus
        self._hashes: dict[str, dict[str, str]] = {}
        # Records an earlier entry of the batch traced an event in: their trace field is made by
        # that commit (it names the entry's id), so this view cannot show it, nor may a later
        # entry file the record as the view holds it (UnitOfWork.settle keeps them in their keys).
        self.traced: set[str] = set()

    def get(self, key: str) -> dict[str, str]:
        if key not in self._hashes:
            self._hashes[key] = self._bus.read_hashes([key])[0]
        return self._hashes[key]

    def prefetch(self, keys: Collection[str]) -> None:
        missing = [k for k in dict.fromkeys(keys) if k not in self._hashes]
        for key, fields in zip(missing, self._bus.read_hashes(missing)):
            self._hashes[key] = fields

    def holds(self, requests: Sequence[Hold], retention_s: int) -> list[str]:
        """Steps on holds, run on the bus now (UnitOfWork.holds says why that is safe)."""
        return self._bus.holds(requests, retention_s)

    def apply(self, ops: list[Op]) -> None:
        """Mirror commit.lua's effect on the hashes this view holds: one commit's ops, after which
        each hash it wrote has its version bumped once."""
        written = set()
        for op in ops:
            kind = type(op)             # exact types (ops are never subclassed): no isinstance chain
            if kind is File:
                if op.record:                                           # its key is gone
                    self._hashes[op.record] = op.unpacked if op.unpacked is not None else \
                        filing.unpack(op.record, op.value)
            elif kind is Publish:
                if op.trace:
                    self.traced.add(op.trace)
            elif kind in VERSIONED and op.key in self._hashes:
                write_to(self._hashes[op.key], op)
                written.add(op.key)
        for key in written:
            h = self._hashes[key]
            h[VERSION] = str(int(h.get(VERSION, 0)) + 1)


def record_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """A hash's own fields, as a handler and `choreo status` see them: not its version, nor its
    trace fields ("<stream> <entry id>": the only names with a space)."""
    return {k: v for k, v in fields.items() if k != VERSION and " " not in k}


def _writable(key: str, names: Collection[str]) -> None:
    """What a handler may name: not the version (the commit's to bump), nor a name with a space
    (a trace field's, "<stream> <entry id>", which reads leave out). (What it may write: see
    UnitOfWork._open.)"""
    for name in names:
        if name == VERSION or " " in name:
            raise ValueError(f"{key}: a handler may not write {name[:80]!r}: {VERSION} is the "
                             f"commit's, and names with a space are trace fields")


def timer_id(event_type: str, order_id: str) -> str:
    return f"{event_type}-{order_id}"        # rq job ids may not contain ':'


def _trace_expiries(ops: list[Op], retention_s: int) -> list[Expire]:
    """An Expire of retention_s for each trace key a publish of the commit writes that no later
    op of it expires already: a trace key lives retention_s from the last event traced in it,
    whoever publishes it (a service without a record, a timer), never for ever. (The saga's
    publishes trace in their records: its happy path writes none.)"""
    last: dict[str, bool] = {}      # trace key -> expired after its last publish
    for op in ops:
        if isinstance(op, Publish) and op.trace.startswith(bus_keys.TRACE_PREFIX):
            last[op.trace] = False
        elif isinstance(op, Expire) and op.key in last:
            last[op.key] = True
    return [Expire(key, int(retention_s)) for key, expired in last.items() if not expired]


class UnitOfWork:
    def __init__(self, producer: str, emits: Collection[str], view: BatchView,
                 cause: Envelope | None = None, clock: Callable[[], float] = time.time,
                 creates: Collection[str] = (), retention_s: int = DEFAULT_RETENTION_S,
                 models: Mapping[str, type] | None = None,
                 record: Callable[[str], str] | None = None):
        self.producer = producer
        # The service's record of an instance (Service.record): a commit that writes it lists
        # there the events it publishes for the instance, not in the instance's trace key.
        self.record = record
        self._traced: dict[int, str] = {}   # place of a Publish in ops -> its instance's record
        self._settled: dict[int, str] = {}  # place of a settle()'s Expire in ops -> its record
        self._made: tuple[int, list[Op]] | None = None   # (ops it was made of, commit_ops())
        # The app's event models (App.events): each emitted event's data is checked against its
        # type's, so a handler or command that would publish what every consumer dead-letters
        # fails here instead. None: the instance id is still checked, the data is not.
        self.models = models
        self.retention_s = retention_s
        # A final hold outlives the dedup markers (Handling sets it to the longer of retention and
        # CHOREO_SEEN_TTL_S): an OrderCreated arriving again while its id is remembered must still
        # find the hold decided, not take stock the DUPLICATE commit will never record.
        self.hold_retention_s = retention_s
        self._emits = emits
        self._creates = creates
        self._view = view
        self.cause = cause
        self.clock = clock
        self.checks: dict[str, str] = {}
        self.ops: list[Op] = []
        self.emitted: list[Envelope] = []
        self.timers: list[Timer] = []
        self.disarmed: list[str] = []         # job ids of timers no longer needed
        self.traceparent = ""                 # set by the runtime when tracing: events it emits carry it
        # What the service says it did, when not its usual line for the event (Service.says):
        # a handler that changed nothing, or refused, says so (say()).
        self.said = ""
        # Set for a service's on_dead_letter hook: its hold steps are kept here and made only once
        # the dead letter is committed (Committing), never before (see holds()).
        self.deferred: list[Hold] | None = None

    def say(self, line: str) -> None:
        """The line the service logs for this entry instead of its usual one (Service.says), when
        that would tell what did not happen: a handler that finds nothing to do, or refuses."""
        self.said = line

    def read(self, key: str) -> dict[str, str]:
        """The hash's fields ({} if absent). The commit is refused if it changes before then."""
        fields = self._view.get(key)
        self.checks.setdefault(key, fields.get(VERSION, "0"))
        if not fields and (home := bus_keys.filed(key)):
            # Absent, and not filed either: a commit filing it meanwhile must refuse this one,
            # which would otherwise make the record again beside its settled self.
            bucket, field = home
            before = self.checks.get(bucket)       # another record of the same bucket, read absent
            self.checks[bucket] = f"{before} {field}" if before else f"!{field}"
        return record_fields(fields)

    def holds(self, requests: Sequence[Hold]) -> list[str]:
        """Steps on holds (bus/hold.lua: reserve, release, sell, forget), made NOW, before and
        whatever the commit: the hold statuses, in order. The one side effect a handler may make
        outside its commit, for state in another slot than the order's (stock, on Redis Cluster)
        that no single commit can cover. Safe because each step is atomic in its own slot and
        idempotent, keyed by (product, order): a handler run again (a CONFLICT, a redelivery
        after a SIGKILL before the commit) gets the same statuses back and decides the same, and
        a hold never counts twice. What the commit does not take up, the handler releases or the
        service's on_dead_letter forgets (docs/partitions.md).
        In on_dead_letter the steps are not made now but once the dead letter is committed, and
        only if it is (they return "", no status): made before, a forget gave back stock that a
        stalled worker's commit of the same entry then recorded as reserved (an oversell), and
        the dead letter's commit, conflicting, could not take the forget back."""
        if self.deferred is not None:
            self.deferred += requests
            return ["" for _ in requests]
        return self._view.holds(requests, self.hold_retention_s)

    def _open(self, key: str) -> None:
        """A filed record (settled for good: no version, bus.keys.filed) is never written again:
        a write would make its key anew beside it, and no version guards the filed one. A handler
        that tries raises (retried, then dead-lettered where an operator sees it). A write to a
        fileable key the handler did not read looks first (one read, where it is not cached)."""
        if (key in self.checks or bus_keys.filed(key)) and \
                isinstance(self._view.get(key), filing.Filed):
            raise ValueError(f"{key} is settled and filed in {bus_keys.filed(key)[0]}: "
                             f"it never changes again")

    def set(self, key: str, **fields) -> None:
        """Write fields of a hash: bumps its version."""
        _writable(key, fields)
        self._open(key)
        self.ops.append(SetFields(key, {k: str(v) for k, v in fields.items()}))

    def drop(self, key: str, *fields: str) -> None:
        """Remove fields of a hash, as a settled record sheds what only its open state needed
        (a sold reservation its lines): versioned like set(), so the hash keeps `_v` and is never
        emptied by it (an absent hash becomes one holding only `_v`: drop from what was read)."""
        if not fields or VERSION in fields:
            raise ValueError(f"drop() needs the fields to remove, never the version {VERSION}")
        _writable(key, fields)
        self._open(key)
        self.ops.append(DropFields(key, fields))

    def add(self, key: str, field: str, amount: int) -> None:
        """Adjust an integer field of a hash handlers read (stock): bumps its version."""
        _writable(key, (field,))
        self._open(key)
        self.ops.append(AddTo(key, field, int(amount)))

    def count(self, key: str, field: str, amount: int) -> None:
        """Adjust an aggregate counter (no version bump): only for hashes no handler reads, which
        is checked here for this handler: a counter it read would race unseen."""
        if key in self.checks:
            raise UncheckedCounter(f"{key} was read by this handler: use add(), which is versioned")
        _writable(key, (field,))
        self.ops.append(Count(key, field, int(amount)))

    def append(self, key: str, value: str) -> None:
        self.ops.append(Append(key, value))

    def index(self, key: str, score: float, member: str) -> None:
        self.ops.append(Index(key, score, member))

    def expire(self, key: str, after_s: float = 0) -> None:
        """Let the key vanish retention_s (+ after_s) from now: its owner's part of the order is
        final. Until then it still guards against late events (see docs/keys.md, "Retention")."""
        self.ops.append(Expire(key, int(self.retention_s + max(0, after_s))))

    def settle(self, key: str) -> None:
        """The record at `key` is final: nothing will change it again. Written by this commit as
        set() and drop() left it, it moves into its bucket (bus.keys.filed), one field of a hash
        of ~64 orders' settled records, and its own key goes: about 150 B of Redis memory less
        per record (the key, its object and its expiry entry). The bucket lives retention_s from
        the last record filed in it (each filing sets it again: no longer window per record),
        and reads (uow.read, read_hashes) find the record there as before, without a version: it
        never changes. Kept in its key instead, expiring as with expire(), where the id files
        nowhere (not digits), or an event is traced in the record by this commit or by an earlier
        one of the same batch not yet applied (the trace field needs the entry's id, which only
        that commit makes): settle it again later, e.g. on that event's confirmation."""
        self._settled[len(self.ops)] = key
        self.ops.append(Expire(key, int(self.retention_s)))

    def emit(self, event_type: str, order_id: str | None = None, causation_id: str = "",
             **data) -> Envelope:
        if event_type not in self._emits:
            raise UndeclaredEvent(f"{self.producer} does not declare that it emits {event_type}")
        if self.cause is not None:
            # A handler's event is about its cause's instance (its commit is that instance's
            # partition's: one slot): another id given is refused, never silently replaced.
            if (order_id is not None and str(order_id) != self.cause.order_id) or causation_id:
                raise InvalidEvent(f"{event_type}: a handler emits for the instance of the event it "
                                   f"handles ({self.cause.order_id[:80]!r}), caused by it; "
                                   f"order_id {str(order_id)[:80]!r} or causation_id given")
            event = self.cause.caused(event_type, self.producer, data, clock=self.clock,
                                      traceparent=self.traceparent)
        else:
            event = Envelope.new(event_type, str(order_id), self.producer, data,
                                 causation_id=causation_id, clock=self.clock,
                                 traceparent=self.traceparent)
        if not ORDER_ID.fullmatch(event.order_id):
            raise InvalidEvent(f"{event_type}: instance id {event.order_id[:80]!r} is not 1-64 of "
                               f"A-Z a-z 0-9 _ . -")
        if self.models is not None:
            try:
                check_data(event, self.models)
            except MalformedEntry as exc:
                raise InvalidEvent(str(exc)) from None
        try:    # what it writes, every consumer must read back: no NaN, no lone surrogate
            fields = event.fields()
            if too_deep(fields["data"], decode_data(fields["data"])):   # as every consumer will
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        except (ValueError, msgspec.DecodeError, RecursionError) as exc:
            raise InvalidEvent(f"{event_type} data cannot be written as JSON every consumer "
                               f"reads: {exc}") from None
        self.emitted.append(event)
        if self.record is not None:
            self._traced[len(self.ops)] = self.record(event.order_id)
        self.ops.append(Publish(bus_keys.stream_for(event_type, event.order_id), fields,
                                trace=bus_keys.trace(event.order_id)))
        return event

    def publish_later(self, event_type: str, at_ms: int, job: str = PUBLISH_DUE) -> Timer:
        """Arrange for `event_type` (one the service `creates`) to be published at at_ms, caused
        by the event in hand, by `job` (workers.timers: the generic one publishes it whatever
        the state; the consumer decides). Arming twice (a redelivery) arms the same job once."""
        if event_type not in self._creates:
            raise UndeclaredEvent(f"{self.producer} does not declare that it creates {event_type}")
        if self.cause is None:
            raise InvalidEvent(f"{event_type}: a timer is armed by a handler, for the instance of "
                               f"the event it handles; a command (no cause) cannot arm one: emit an "
                               f"event whose handler does")
        job_id = timer_id(event_type, self.cause.order_id)
        if not JOB_ID.fullmatch(job_id):
            # rq refuses it when the runtime arms it, for the whole batch: refused here instead,
            # this entry's failure, dead-lettered with the reason once retried.
            raise InvalidEvent(f"{event_type} cannot be armed for {self.cause.order_id!r}: its timer "
                               f"would be rq job {job_id[:140]!r}, and rq's job ids are letters, "
                               f"digits, '_' and '-' (up to 128)")
        timer = Timer(job_id, int(at_ms), event_type, self.cause.order_id, self.cause.id,
                      self.producer, job)
        self.timers.append(timer)
        return timer

    def disarm(self, event_type: str) -> None:
        """The timer for event_type on this order is no longer needed. Best effort, after the
        commit: a timer that still fires must find nothing to do. Handling that timer's own
        event, there is nothing to disarm: it fired (and rq is still finishing its job).
        A round arms its timers before its commit and disarms after it (workers.committing) what
        the batch's last applied entry to name the timer disarmed: armed again by a later entry
        of the batch, it stays armed."""
        if self.cause is None:
            raise InvalidEvent(f"{event_type}: a timer is disarmed by a handler, for the instance "
                               f"of the event it handles; a command (no cause) cannot")
        if self.cause.type == event_type:
            return
        self.disarmed.append(timer_id(event_type, self.cause.order_id))

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def to_commit(self, ack: tuple[str, str] | None = None, seen: str = "", seen_id: str = "",
                  seen_ttl_s: int = 0) -> Commit:
        return Commit(checks=dict(self.checks), ops=self.commit_ops(), ack=ack, seen=seen,
                      seen_id=seen_id, seen_ttl_s=seen_ttl_s)

    def commit_ops(self) -> list[Op]:
        """What the commit writes: the ops, with publishes traced (_traced_ops) and settled
        records filed (_filed_ops). What a batch's view mirrors (BatchView.apply). Made once
        (until another op is added): filing reads the view, which mirroring it changes."""
        if self._made is None or self._made[0] != len(self.ops):
            ops = self._traced_ops()
            self._made = (len(self.ops), self._filed_ops(ops) if self._settled else ops)
        return list(self._made[1])

    def _filed_ops(self, ops: list[Op]) -> list[Op]:
        """Each settle()'s Expire replaced by its record's move into its bucket: the record as
        read (with its trace fields) and as this commit's writes leave it, FILEd; the bucket's
        expiry; the key deleted (EXPIRE 0) if it exists. The record's own writes are dropped: the
        move carries them. Its version check stays: a commit that read the record before the move
        is refused."""
        traced = self._traced.values()
        moved: dict[str, list[Op]] = {}
        for place, key in self._settled.items():
            home = bus_keys.filed(key)
            held = self._view.get(key)
            if home is None or key in traced or key in self._view.traced or key in moved \
                    or isinstance(held, filing.Filed):
                continue        # kept in its key (see settle()), or filed already
            record = dict(held)
            for op in ops:
                if isinstance(op, VERSIONED) and op.key == key:
                    write_to(record, op)
            existed = record.pop(VERSION, None) is not None
            bucket, field = home
            value = filing.pack(key, record)
            # What the value reads back as (bus.filing.unpack), for the batch's view: the record,
            # every value a str, unless there is none (an empty record reads back unreadable).
            unpacked = filing.Filed(record) if record else None
            moved[key] = [File(bucket, field, value, key, unpacked),
                          Expire(bucket, ops[place].seconds), *((Expire(key, 0),) if existed else ())]
        if not moved:
            return ops
        out: list[Op] = []
        for place, op in enumerate(ops):
            if place in self._settled and self._settled[place] in moved:
                out += moved[self._settled[place]]      # where the (first) settle() was
                moved[self._settled[place]] = []
            elif not (isinstance(op, (*VERSIONED, Expire)) and op.key in moved):
                out.append(op)
        return out

    def _traced_ops(self) -> list[Op]:
        """The ops, each publish traced in the service's record of its instance when this commit
        writes that record (so it exists, and expires as its owner settles it), else in the
        instance's trace key. An order then keeps no trace key of its own: ~290 B of Redis memory
        an order, its key and expiry entry (docs/keys.md)."""
        ops = list(self.ops)
        in_trace_key = self.record is None and bool(self.emitted)   # (a record-less service's)
        if self._traced:
            written = {op.key for op in ops if isinstance(op, VERSIONED)}
            for place, record in self._traced.items():
                if record in written:
                    op = ops[place]
                    ops[place] = Publish(op.stream, op.fields, record, op.max_len)
                else:
                    in_trace_key = True
        return ops + _trace_expiries(ops, self.retention_s) if in_trace_key else ops

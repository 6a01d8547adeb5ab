"""Dead-letter tools: list, show, replay and purge the entries on `dlq:<service>` streams.

The record and its fields are bus.dead_letters'. A dead letter is named on the command line as
`<service>/<dlq entry id>`, or by the bare dlq entry id, which is looked up on every service's
dead-letter stream. With partitions (bus.layout) a service has a dead-letter stream per partition,
each in the partition of the entries it holds; `<service>/p<N>/<id>` names one of them, and a
name without a partition is looked up in each (refused if two partitions hold that id).

Replay puts the original fields back on the original stream (a new entry id, the same event id)
and deletes the dead letter, in one Lua script, so a dead letter is replayed at most once even if
two operators race. Every group on that stream reads the new entry: the service that gave up
handles it afresh, and the services that had already handled the event acknowledge it and change
nothing, because their dedup set `seen:<service>` still holds the event id (kept
CHOREO_SEEN_TTL_S, 7 days by default: replaying an older dead letter can apply it twice).
Replay puts back the original entry as it still stands on its stream, matched with the letter's
sha256 — a service's user may write anything to its own dead-letter stream, so the letter's copy
is a claim, not a proof; once the original is trimmed, only `--trust-copy` replays the copy.
Replay first makes the checks the service's worker makes before handling (bus.envelope's parse,
the event type's schema, the producer), so what it puts back is never dead-lettered again at once.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable

from choreo.bus import dead_letters as store, keys as bus_keys
from choreo.bus.contract import BusError, BusUnavailable, Delivery, PermissionsMissing
from choreo.bus.dead_letters import DeadLetter, DeadLetterError
from choreo.bus.envelope import MalformedEntry
from choreo.bus.redis_streams import RedisStreamsBus
from choreo.workers import APP
from choreo.workers.app import App
from choreo.workers.handling import for_a_reader
from choreo.workers.runtime import parse_delivery
from choreo.workers.service import Service

# Prints one line. The CLI's escapes control characters (choreo.plain): lines here carry Redis values.
Out = Callable[[str], None]

def parse_ref(ref: str) -> tuple[str, int | None, str]:
    """(service or "", partition or None, dlq id) of `[<service>/][p<N>/]<id>`."""
    head, _, dlq_id = ref.rpartition("/")
    service, _, part = head.rpartition("/")
    if not (part.startswith("p") and part[1:].isdigit()):
        return head, None, dlq_id
    return service, int(part[1:]), dlq_id


def find(bus: RedisStreamsBus, ref: str, services: Iterable[str]) -> DeadLetter:
    """`<service>/[p<N>/]<id>` or a bare id searched on every service's dead-letter streams."""
    service, partition, dlq_id = parse_ref(ref)
    found = [letter for name in ([service] if service else services)
             for letter in store.read_matching(bus, name, dlq_id, partition)]
    if len(found) > 1:
        raise DeadLetterError(f"{dlq_id} names {len(found)} dead letters: "
                              f"{', '.join(letter.ref for letter in found)}; give one of these")
    if found:
        return found[0]
    where = (bus_keys.dead_letters(service, partition or 0) if service and partition is not None
             else bus_keys.any_partition(bus_keys.dead_letters(service)) if service
             else "any dead-letter stream")
    raise DeadLetterError(f"no dead letter {dlq_id} on {where}")


def replayable(bus: RedisStreamsBus, letter: DeadLetter, service: Service, max_entry_bytes: int,
               trust_copy: bool = False, app: App = APP) -> tuple[str, dict[str, str]]:
    """(stream, fields) to publish again: the original entry, read back from its stream and
    matched with the letter's sha256 (the letter itself was written with the service's own
    credentials, so it proves nothing); the letter's copy only when the original was trimmed and
    the operator says --trust-copy. DeadLetterError with the reason if the service's worker would
    dead-letter it again at once, or nothing trustworthy is left to replay."""
    try:
        fields = store.original_entry(bus, letter)
        if fields is None and not trust_copy:
            raise DeadLetterError(f"the original entry {letter.entry_id} is gone from {letter.stream} "
                                  f"(trimmed); --trust-copy replays the dead letter's own copy")
        fields = fields if fields is not None else letter.original()
    except DeadLetterError as exc:
        raise DeadLetterError(f"{letter.ref}: refused, {exc}") from None
    addressed = fields.get("for", letter.service)
    if addressed != letter.service and for_a_reader(app.consumers, letter.stream, addressed):
        # A replayed copy meant for another group: this one had the original (and kept no id of
        # it), so handing it the event again could apply it twice. Workers never dead-letter one.
        # (One whose `for` names no group that reads the stream, no group ever handled: each
        # dead-lettered it, and may have it again, addressed to itself by republish.)
        raise DeadLetterError(f"{letter.ref}: refused, the entry is a replay for {addressed[:40]!r}, "
                              f"not for {letter.service}")
    try:
        parse_delivery(Delivery(letter.stream, letter.entry_id, fields), max_entry_bytes, service,
                       app.publishers, app.events)
    except (MalformedEntry, RecursionError) as exc:
        raise DeadLetterError(f"{letter.ref}: refused, the entry is malformed: {exc}") from None
    return letter.stream, fields


def summary(letter: DeadLetter) -> str:
    cut = "  [truncated copy]" if letter.truncated else ""
    return (f"{letter.ref}  {letter.stream or '?'} {letter.entry_id or '?'}  "
            f"deliveries={letter.deliveries}  at={letter.at or '?'}  error={letter.error}{cut}")


# -- the verbs' bodies (choreo.cli parses, these print) ---------------------------------------

def _streams(service: str) -> str:
    """dlq:<service>, or with partitions dlq:{p*}:<service>: all of them."""
    return bus_keys.any_partition(bus_keys.dead_letters(service))


def list_cmd(bus: RedisStreamsBus, services: list[str], out: Out) -> int:
    for service in services:
        letters = store.read_all(bus, service)
        out(f"{_streams(service)}: {len(letters)} dead letter(s)")
        for letter in letters:
            out("  " + summary(letter))
    return 0


def show_cmd(bus: RedisStreamsBus, ref: str, services: list[str], out: Out) -> int:
    letter = find(bus, ref, services)
    out(letter.ref)
    for name, value in letter.to_fields().items():
        if name != "entry":
            out(f"  {name}: {value}")
    label = (f"entry (truncated copy, {len(letter.entry)} of {letter.entry_bytes} bytes; "
             f"replay reads the original from its stream)" if letter.truncated else "entry")
    if letter.copy:
        head, lines = f"  {label}: ", json.dumps(letter.copy, indent=2, sort_keys=True).splitlines()
    else:
        head, lines = f"  {label} (not a JSON object): ", [letter.entry]
    # One out() per line: out escapes every control character, a line break included.
    out(head + lines[0])
    for line in lines[1:]:
        out("  " + line)
    return 0


def replay_cmd(bus: RedisStreamsBus, service: Service, max_entry_bytes: int, dlq_id: str | None,
               dry_run: bool, out: Out, err: Out, trust_copy: bool = False, app: App = APP) -> int:
    """Replay one dead letter (dlq_id) or all of them; 1 if any was refused. The refused ones stay
    where they are, so nothing is lost by trying. dry_run: say what would be replayed, write
    nothing."""
    if dlq_id:
        named = parse_ref(dlq_id)[0]        # `inventory/p3/<id>` as `dlq list` prints it, or p3/<id>
        if named and named != service.name:
            raise DeadLetterError(f"{dlq_id} is a dead letter of {named}, not {service.name}")
        ref = dlq_id if named else f"{service.name}/{dlq_id}"
    letters = [find(bus, ref, [service.name])] if dlq_id else store.read_all(bus, service.name)
    refused = 0
    for letter in letters:
        try:
            stream, fields = replayable(bus, letter, service, max_entry_bytes, trust_copy, app)
            if dry_run:
                out(f"would replay {letter.ref} to {stream}: {fields['type']} {fields['id']} "
                    f"for {'order' if app.orders else 'instance'} {fields['order_id']}")
            else:
                out(f"replayed {letter.ref} to {stream} as {store.republish(bus, letter, stream, fields)}")
        except DeadLetterError as exc:
            refused += 1
            err(f"choreo: {exc}")
        except (BusUnavailable, PermissionsMissing):
            raise                           # the same for every letter: stop, in one line
        except BusError as exc:             # Redis refused this letter's reads or write (a stream
            refused += 1                    # of the wrong type): the rest are still looked at
            err(f"choreo: {letter.ref}: refused, Redis refused its reads or writes: {exc}")
    if not letters:
        out(f"{_streams(service.name)}: nothing to replay")
    return 1 if refused else 0


def purge_cmd(bus: RedisStreamsBus, service: str, yes: bool, out: Out, err: Out) -> int:
    """Delete a service's dead letters, only when asked twice (--yes): they cannot come back."""
    stream = _streams(service)
    if not yes:
        out(f"would purge {store.count(bus, service)} dead letter(s) from {stream}")
        err("choreo dlq purge: nothing deleted; add --yes to delete them")
        return 2
    out(f"purged {store.purge(bus, service)} dead letter(s) from {stream}")
    return 0

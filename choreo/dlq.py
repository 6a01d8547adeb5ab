"""Dead-letter tools: list, show, replay and purge the entries on `dlq:<service>` streams.

A dead letter carries: stream, entry_id, group, deliveries, error, at, and entry (the original
entry's fields as a JSON object). It is named on the command line as `<service>/<dlq entry id>`,
or by the bare dlq entry id, which is looked up on every service's dead-letter stream.

Replay puts the original fields back on the original stream (a new entry id, the same event id)
and deletes the dead letter, in one Lua script, so a dead letter is replayed at most once even if
two operators race. Every group on that stream reads the new entry: the service that gave up
handles it afresh, and the services that had already handled the event acknowledge it and change
nothing, because their dedup marker `seen:<service>:<event id>` is still there (it lives
CHOREO_SEEN_TTL_S, 7 days by default: replaying an older dead letter can apply it twice).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Collection, Iterable

from bus import keys as bus_keys
from bus.envelope import Envelope, MalformedEntry
from bus.redis_streams import RedisStreamsBus, translated_errors

# Prints one line. The CLI's escapes control characters (choreo.plain): lines here carry Redis values.
Out = Callable[[str], None]

# KEYS: dlq stream, original stream. ARGV: dlq entry id, then field, value, ...
# Returns the new entry id, or false when the dead letter is gone (replayed or purged meanwhile).
REPLAY_LUA = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""


class DeadLetterError(Exception):
    """A dead letter that cannot be found or replayed; the message says why."""


@dataclass(frozen=True)
class DeadLetter:
    service: str
    dlq_id: str
    fields: dict[str, str]

    @property
    def ref(self) -> str:
        return f"{self.service}/{self.dlq_id}"

    def summary(self) -> str:
        f = self.fields
        return (f"{self.ref}  {f.get('stream', '?')} {f.get('entry_id', '?')}  "
                f"deliveries={f.get('deliveries', '?')}  at={f.get('at', '?')}  "
                f"error={f.get('error', '?')}")

    def original(self) -> dict[str, str]:
        """The original entry's fields; DeadLetterError if they are not a JSON object of strings."""
        try:
            entry = json.loads(self.fields.get("entry", ""))
        except ValueError as exc:
            raise DeadLetterError(f"entry is not JSON: {exc}") from None
        if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
            raise DeadLetterError("entry is not a JSON object of string fields")
        return entry


def dead_letters(bus: RedisStreamsBus, service: str) -> list[DeadLetter]:
    with translated_errors():
        rows = bus.client.xrange(bus_keys.dead_letters(service))
    return [DeadLetter(service, entry_id, fields) for entry_id, fields in rows]


def find(bus: RedisStreamsBus, ref: str, services: Iterable[str]) -> DeadLetter:
    """`<service>/<id>` or a bare id searched on every service's dead-letter stream."""
    service, _, dlq_id = ref.rpartition("/")
    candidates = [service] if service else list(services)
    with translated_errors():
        for name in candidates:
            rows = bus.client.xrange(bus_keys.dead_letters(name), dlq_id, dlq_id)
            if rows:
                return DeadLetter(name, rows[0][0], rows[0][1])
    where = bus_keys.dead_letters(service) if service else "any dead-letter stream"
    raise DeadLetterError(f"no dead letter {dlq_id} on {where}")


def replayable(letter: DeadLetter, consumed: Collection[str]) -> tuple[str, dict[str, str]]:
    """(stream, fields) to publish again; DeadLetterError with the reason if it would only fail
    again. consumed: the streams the dead letter's service reads."""
    try:
        fields = letter.original()
    except DeadLetterError as exc:
        raise DeadLetterError(f"{letter.ref}: refused, {exc}") from None
    stream = letter.fields.get("stream", "")
    try:
        event = Envelope.parse(fields)
    except MalformedEntry as exc:
        raise DeadLetterError(f"{letter.ref}: refused, the entry is malformed: {exc}") from None
    if stream != bus_keys.stream(event.type):
        raise DeadLetterError(f"{letter.ref}: refused, a {event.type} event does not belong on "
                              f"{stream or 'an unnamed stream'}")
    if stream not in consumed:
        raise DeadLetterError(f"{letter.ref}: refused, {letter.service} does not consume {stream}")
    return stream, fields


def replay(bus: RedisStreamsBus, letter: DeadLetter, consumed: Collection[str]) -> str:
    """Publish the original entry again and delete the dead letter, atomically; the new id."""
    stream, fields = replayable(letter, consumed)
    args = [letter.dlq_id, *[x for kv in fields.items() for x in kv]]
    with translated_errors():
        new_id = bus.client.eval(REPLAY_LUA, 2, bus_keys.dead_letters(letter.service), stream, *args)
    if not new_id:
        raise DeadLetterError(f"{letter.ref}: gone meanwhile (replayed or purged by someone else)")
    return new_id


def purge(bus: RedisStreamsBus, service: str) -> int:
    """Delete the service's dead-letter stream; the number of dead letters it held."""
    key = bus_keys.dead_letters(service)
    with translated_errors():
        pipe = bus.client.pipeline(transaction=True)   # the count is of exactly what was deleted
        pipe.xlen(key)
        pipe.delete(key)
        count, _ = pipe.execute()
    return count


# -- the verbs' bodies (choreo.cli parses, these print) ---------------------------------------

def list_cmd(bus: RedisStreamsBus, services: list[str], out: Out) -> int:
    for service in services:
        letters = dead_letters(bus, service)
        out(f"{bus_keys.dead_letters(service)}: {len(letters)} dead letter(s)")
        for letter in letters:
            out("  " + letter.summary())
    return 0


def show_cmd(bus: RedisStreamsBus, ref: str, services: list[str], out: Out) -> int:
    letter = find(bus, ref, services)
    out(letter.ref)
    for name, value in letter.fields.items():
        if name != "entry":
            out(f"  {name}: {value}")
    try:
        head, lines = "  entry: ", json.dumps(letter.original(), indent=2, sort_keys=True).splitlines()
    except DeadLetterError as exc:
        head, lines = f"  entry ({exc}): ", [letter.fields.get("entry", "")]
    # One out() per line: out escapes every control character, a line break included.
    out(head + lines[0])
    for line in lines[1:]:
        out("  " + line)
    return 0


def replay_cmd(bus: RedisStreamsBus, service: str, consumed: Collection[str], dlq_id: str | None,
               out: Out, err: Out) -> int:
    """Replay one dead letter (dlq_id) or all of them; 1 if any was refused. The refused ones stay
    where they are, so nothing is lost by trying."""
    letters = ([find(bus, f"{service}/{dlq_id}", [service])] if dlq_id
               else dead_letters(bus, service))
    refused = 0
    for letter in letters:
        try:
            new_id = replay(bus, letter, consumed)
        except DeadLetterError as exc:
            refused += 1
            err(f"choreo: {exc}")
            continue
        out(f"replayed {letter.ref} to {letter.fields['stream']} as {new_id}")
    if not letters:
        out(f"{bus_keys.dead_letters(service)}: nothing to replay")
    return 1 if refused else 0


def purge_cmd(bus: RedisStreamsBus, service: str, out: Out) -> int:
    out(f"purged {purge(bus, service)} dead letter(s) from {bus_keys.dead_letters(service)}")
    return 0

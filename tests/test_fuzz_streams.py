"""Fuzzing every stream under the four running workers: hypothesis writes arbitrary field maps,
byte strings that are not UTF-8, and valid envelopes with one field replaced by anything. After
all of it: every worker alive, nothing pending in any group, every entry that cannot be an event
dead-lettered with a reason by each group that reads its stream, and real orders still complete."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from choreo.bus import keys as bus_keys
from choreo.bus.envelope import FIELDS, Envelope
from choreo.bus.trim import declared_groups
from tests.helpers import wait_for
from tests.saga_run import drained, start_workers
from choreo.workers import SERVICES, keys

STREAMS = sorted(declared_groups(SERVICES.values()))
READERS = declared_groups(SERVICES.values())

HOSTILE = [b"\xff\xfe", b"[" * 5000, b"{" * 3000, b"1e999", b"NaN", b"-1", b"null", b"x" * 70_000,
           b"\x1b[2J\x1b]0;pwned\x07", b"[/oops]"]
junk = st.one_of(st.sampled_from(HOSTILE), st.binary(max_size=40), st.text(max_size=40).map(str.encode))
# Field maps that lack some envelope field: never an event, always a dead letter.
field_maps = st.dictionaries(st.one_of(st.sampled_from([f.encode() for f in FIELDS]), st.binary(max_size=12)),
                             junk, min_size=0, max_size=6).filter(lambda m: not set(FIELDS) <= {
                                 k.decode(errors="replace") for k in m})
# Valid envelopes with one field replaced: some still valid, most not; none may stop a worker.
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@st.composite
def mutated(draw) -> tuple[str, dict]:
    stream = draw(st.sampled_from(STREAMS))
    event_type = bus_keys.event_type_of(stream)
    data = {"lines": [{"product_id": 102, "quantity": 1}], "total_cents": 4999,
            "amount_cents": 4999, "reason": "fuzz", "tracking_id": "TRK-FUZZ"}
    fields: dict = Envelope.new(event_type, f"fz{draw(st.integers(0, 10**6))}", "fuzz", data).fields()
    name = draw(st.sampled_from(FIELDS + ("data",) * 4))      # the JSON parser is the deep end
    fields[name] = draw(junk | json_values.map(lambda v: json.dumps(v).encode()))
    return stream, fields


def _one(name: str, value: bytes) -> tuple[str, dict]:
    """A valid OrderCreated with one field replaced: the fuzz's fixed regressions."""
    stream = bus_keys.stream("OrderCreated")
    fields = Envelope.new("OrderCreated", "fzfixed", "fuzz", {"lines": [{"product_id": 102, "quantity": 1}],
                                                             "total_cents": 4999}).fields()
    return stream, {**fields, name: value}


def test_fuzzed_entries_never_stop_a_worker(procs, redis_server):
    r, raw = redis_server.client(), redis_server.client(decode=False)
    start_workers(procs)
    wait_for(lambda: all(r.exists(s) and len(r.xinfo_groups(s)) == len(READERS[s]) for s in STREAMS),
             what="every group created")
    surely_bad: list[tuple[str, str]] = []

    @hsettings(max_examples=100, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(st.tuples(st.sampled_from(STREAMS), field_maps), max_size=3),
           st.lists(mutated(), max_size=3))
    @example([], [_one(f, v) for f in ("data", "producer", "type") for v in HOSTILE])
    def write(maps, mutations):
        for stream, fields in maps:
            entry_id = raw.xadd(stream, fields or {b"": b""}).decode()
            surely_bad.append((stream, entry_id))
        for stream, fields in mutations:
            raw.xadd(stream, fields)

    write()
    placed = [procs.run("place-order", "--product", "101", "--quantity", "1") for _ in range(3)]
    assert all(p.returncode == 0 for p in placed), [p.stderr for p in placed]
    orders = [p.stdout.strip() for p in placed]
    wait_for(lambda: drained(r), timeout=60, what="every group read and acknowledged everything")
    wait_for(lambda: all(r.hget(keys.order(o), "status") == "COMPLETED" for o in orders),
             what="real orders complete")
    assert all(p.poll() is None for p in procs.procs), "a worker died"

    letters = {s: {(f["stream"], f["entry_id"]): f for _, f in r.xrange(bus_keys.dead_letters(s))}
               for s in SERVICES}
    assert surely_bad
    for stream, entry_id in surely_bad:
        for service in READERS[stream]:
            letter = letters[service].get((stream, entry_id))
            assert letter is not None, f"{service} lost {stream} {entry_id}"
            assert letter["error"].startswith("malformed: "), letter["error"]

"""The dead-letter record (bus.dead_letters): kept whole when small, a bounded cut copy with the
original's size and sha256 when large, and dlq:<service> capped. The record's own logic runs
without Redis; the cap and the copies are checked through workers on a real redis-server."""

from __future__ import annotations

import hashlib
import json

import pytest

from choreo.bus import dead_letters, keys as bus_keys
from choreo.bus.contract import Delivery
from choreo.bus.dead_letters import ENTRY_COPY_BYTES, ERROR_CHARS, DeadLetter, DeadLetterError, cut_copy
from choreo.bus.envelope import Envelope
from choreo.cli import main
from choreo.config.settings import Settings
from tests.helpers import wait_for
from tests.inprocess import drain, start_workers
from choreo.workers.events import MAX_CENTS, MAX_QUANTITY, check_data

AT = "2024-01-01T00:00:00.000Z"


def letter_of(fields: dict, service: str = "inventory") -> DeadLetter:
    return DeadLetter.of(service, Delivery("events:OrderCreated", "5-0", fields, deliveries=2),
                         "malformed: test", AT)


def hostile(size: int = 60_000, order_id: str = "13") -> dict:
    event = Envelope.new("OrderCreated", order_id, "order", {"pad": "x" * size})
    return event.fields()


def whole_json(fields: dict) -> str:
    return json.dumps(fields, sort_keys=True)


# -- the record, no Redis ---------------------------------------------------------------------------

def test_a_small_entry_is_kept_whole_and_round_trips_through_its_fields():
    fields = Envelope.new("OrderCreated", "7", "order", {"total_cents": 1}).fields()
    letter = letter_of(fields)
    assert not letter.truncated and letter.original() == fields
    assert letter.entry_bytes == len(whole_json(fields))
    assert letter.entry_sha256 == hashlib.sha256(whole_json(fields).encode()).hexdigest()

    stored = letter.to_fields()
    assert stored["entry_truncated"] == "0" and stored["group"] == "inventory"
    back = DeadLetter.from_fields("inventory", "9-0", stored)
    assert back == letter and back.ref == "inventory/9-0" and (back.order_id, back.event_id) == ("7", fields["id"])


def test_the_largest_valid_event_is_kept_whole_so_it_can_be_replayed():
    lines = [{"product_id": 10 ** 9, "quantity": MAX_QUANTITY}] * 100
    event = Envelope.new("OrderCreated", "9" * 64, "order",
                         {"lines": lines, "total_cents": MAX_CENTS, "deadline_at_ms": 10 ** 13})
    check_data(event)
    letter = letter_of(event.fields())
    assert not letter.truncated and letter.original() == event.fields()


@pytest.mark.parametrize("fields", [
    hostile(),
    {**hostile(), "data": "\x00" * 60_000},            # each byte a six-byte JSON escape
    {**hostile(), "data": "\U0001F600" * 20_000},      # each char a twelve-byte escape pair
    {**hostile(), "a" * 30_000: "b"},                  # a huge field name, after the envelope's
    {f"f{n:05}": "v" * 20 for n in range(3000)},       # many small fields, no envelope at all
], ids=["padded", "escapes", "astral", "long-name", "many-fields"])
def test_an_oversized_entry_is_a_bounded_cut_copy_with_size_and_sha256(fields):
    letter = letter_of(fields)
    whole = whole_json(fields)

    assert letter.truncated and letter.to_fields()["entry_truncated"] == "1"
    assert len(letter.entry.encode()) <= ENTRY_COPY_BYTES
    assert letter.entry_bytes == len(whole.encode()) > ENTRY_COPY_BYTES
    assert letter.entry_sha256 == hashlib.sha256(whole.encode()).hexdigest()
    copy = json.loads(letter.entry)                     # still a JSON object, not a cut string
    assert all(fields[name].startswith(value) for name, value in copy.items())
    assert len(letter.entry) > ENTRY_COPY_BYTES - 200   # the room is used, not thrown away


def test_a_cut_copy_keeps_the_envelope_first_so_trace_can_place_it():
    fields = hostile(order_id="13")
    letter = letter_of(fields)
    assert (letter.order_id, letter.event_id) == ("13", fields["id"])
    assert {k: letter.copy[k] for k in ("type", "producer", "v")} == \
        {"type": "OrderCreated", "producer": "order", "v": "1"}


def test_a_cut_copy_cannot_be_restored():
    letter = letter_of(hostile())
    with pytest.raises(DeadLetterError, match="only a truncated copy is kept .* the original cannot be restored"):
        letter.original()


def test_a_long_reason_is_cut_and_says_how_long_it_was():
    letter = DeadLetter.of("payment", Delivery("events:InventoryChecked", "1-0", {}),
                           "KeyError: " + "k" * 50_000, AT)
    assert letter.error.startswith("KeyError: kkk") and letter.error.endswith("… (50010 characters)")
    assert len(letter.error) < ERROR_CHARS + 30


def test_cut_copy_fits_exactly_small_budgets():
    fields = {"id": "abc", "data": "é" * 100}
    for budget in range(2, 60):
        assert len(json.dumps(cut_copy(fields, budget))) <= budget


def test_a_dead_letter_written_by_hand_or_an_older_version_still_reads():
    letter = DeadLetter.from_fields("payment", "3-0", {"error": "boom", "deliveries": "x"})
    assert (letter.error, letter.deliveries, letter.stream, letter.truncated) == ("boom", 0, "", False)
    assert letter.copy == {} and letter.order_id == ""
    with pytest.raises(DeadLetterError, match="not JSON"):
        letter.original()


# -- on a real redis-server --------------------------------------------------------------------------

def test_writing_a_dead_letter_caps_the_stream_to_the_newest(real_bus):
    (inventory,) = start_workers(real_bus, Settings(dlq_max_entries=3), names=("inventory",))
    created = bus_keys.stream("OrderCreated")
    bad = [real_bus.client.xadd(created, {"junk": str(n)}) for n in range(7)]

    drain([inventory])

    kept = dead_letters.read_all(real_bus, "inventory")
    assert [d.entry_id for d in kept] == bad[-3:]
    assert all(d.error.startswith("malformed: missing field(s)") for d in kept)
    assert real_bus.client.xpending(created, "inventory")["pending"] == 0      # all acknowledged


def test_a_hostile_entry_read_by_two_groups_leaves_two_small_copies(procs, real_bus, capsys):
    """Through the real worker processes, with the cap from the environment: a 60 KB OrderCreated
    is dead-lettered by both services that consume it, each keeping a cut copy; `dlq show` says
    so, `dlq replay` (reading the original back) refuses it, and `trace` still places it."""
    c = real_bus.client
    for service in ("order", "inventory"):
        procs.worker(service, CHOREO_DLQ_MAX_ENTRIES=2)
    for n in range(3):
        c.xadd(bus_keys.stream("OrderCreated"), {"junk": str(n)})
    fields = hostile(order_id="13")
    entry_id = c.xadd(bus_keys.stream("OrderCreated"), fields)
    newest = lambda s: [d.entry_id for d in dead_letters.read_newest(real_bus, s, 1)]  # noqa: E731
    wait_for(lambda: newest("order") == newest("inventory") == [entry_id],
             what="the hostile entry dead-lettered by both groups")

    whole = whole_json(fields)
    for service in ("order", "inventory"):
        older, letter = dead_letters.read_all(real_bus, service)      # capped at 2
        assert older.copy == {"junk": "2"}
        assert (letter.entry_id, letter.truncated, letter.entry_bytes) == (entry_id, True, len(whole))
        assert letter.entry_sha256 == hashlib.sha256(whole.encode()).hexdigest()
        assert c.memory_usage(bus_keys.dead_letters(service)) < 4 * ENTRY_COPY_BYTES
    ref = dead_letters.read_all(real_bus, "inventory")[1].ref

    assert main(["dlq", "show", ref, "--redis-url", procs.url]) == 0
    out = capsys.readouterr().out
    assert "entry (truncated copy, " in out and f"of {len(whole)} bytes; replay reads the original" in out
    assert main(["dlq", "replay", "inventory", "--all", "--redis-url", procs.url]) == 1
    refused = capsys.readouterr().err            # the original, read back, is as malformed as ever
    assert f"{ref}: refused, the entry is malformed: OrderCreated data: Object missing required field `lines`" in refused
    assert c.xlen(bus_keys.stream("OrderCreated")) == 4 and c.xlen(bus_keys.dead_letters("inventory")) == 2
    assert main(["trace", "13", "--redis-url", procs.url]) == 0
    assert capsys.readouterr().out.count("DEAD LETTER") == 2

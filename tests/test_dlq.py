"""Dead-letter tools against a real redis-server: list, show, replay (at most once, refused when
malformed), purge. Through choreo.cli.main, as a user types them."""

from __future__ import annotations

import json

import pytest

from choreo.bus import dead_letters
from choreo.bus.contract import Delivery
from choreo.bus.dead_letters import DeadLetter
from choreo.bus.envelope import Envelope
from choreo.ops import dlq
from choreo.cli import main
from choreo.orders import OrderRequest, place_orders
from tests.helpers import wait_for
from tests.saga_run import place_mix, settle, start_workers
from choreo.workers import SERVICES


def letter_for(client, service: str, stream: str, entry_id: str, fields: dict,
               error: str = "gave up after 5 deliveries: TimeoutError: card gateway") -> str:
    """A dead letter as the runtime writes it (the fields docs/operations.md documents), for an entry that
    stands on its stream (written here unless it is there already), as replay requires."""
    if not client.xrange(stream, entry_id, entry_id):
        client.xadd(stream, fields, id=entry_id)
    letter = DeadLetter.of(service, Delivery(stream, entry_id, fields, deliveries=6), error,
                           "2024-01-01T00:00:00.000Z")
    return client.xadd(f"dlq:{service}", letter.to_fields())


def cli(capsys, *argv: str, url: str) -> tuple[int, str, str]:
    code = main([*argv, "--redis-url", url])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def an_event(type_="OrderCreated", order_id="1") -> dict:
    return Envelope.new(type_, order_id, "order", {"lines": [{"product_id": 101, "quantity": 1}],
                                                   "total_cents": 1999}).fields()


def test_list_and_show_by_service_and_by_bare_id(real_bus, redis_url, capsys):
    c = real_bus.client
    fields = an_event()
    dlq_id = letter_for(c, "inventory", "events:OrderCreated", "5-0", fields)

    code, out, _ = cli(capsys, "dlq", "list", url=redis_url)
    assert code == 0
    assert "dlq:inventory: 1 dead letter(s)" in out and "dlq:payment: 0 dead letter(s)" in out
    assert f"inventory/{dlq_id}  events:OrderCreated 5-0  deliveries=6" in out

    for ref in (f"inventory/{dlq_id}", dlq_id):
        code, out, _ = cli(capsys, "dlq", "show", ref, url=redis_url)
        assert code == 0 and f"inventory/{dlq_id}" in out
        assert "error: gave up after 5 deliveries" in out and f'"id": "{fields["id"]}"' in out


def test_show_of_an_unknown_letter_is_one_line_exit_1_and_bad_refs_exit_2(real_bus, redis_url, capsys):
    assert cli(capsys, "dlq", "show", "inventory/1-0", url=redis_url)[:1] == (1,)
    code, _, err = cli(capsys, "dlq", "show", "nosuch/1-0", url=redis_url)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert cli(capsys, "dlq", "show", "not-an-id", url=redis_url)[0] == 2
    assert cli(capsys, "dlq", "replay", "nosuch", "--all", url=redis_url)[0] == 2
    assert cli(capsys, "dlq", "replay", "inventory", url=redis_url)[0] == 2     # --id or --all


def test_replay_puts_the_same_fields_back_and_deletes_the_letter_atomically(real_bus, redis_url, capsys):
    c = real_bus.client
    fields = {**an_event(), "once": "1"}
    dlq_id = letter_for(c, "inventory", "events:OrderCreated", "5-0", fields)

    code, out, _ = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, url=redis_url)

    new_id = out.split()[-1]
    assert code == 0 and out.startswith(f"replayed inventory/{dlq_id} to events:OrderCreated as ")
    # The same fields, addressed to the letter's group alone (the others had the original), and
    # without `once`: a copy of an old id is what the group's seen set is for.
    copy = {k: v for k, v in fields.items() if k != "once"}
    assert c.xrange("events:OrderCreated", new_id, new_id)[0][1] == {**copy, "for": "inventory"}
    assert c.xlen("dlq:inventory") == 0


def test_a_letter_is_replayed_at_most_once(real_bus):
    c = real_bus.client
    letter_for(c, "inventory", "events:OrderCreated", "5-0", an_event())
    [letter] = dead_letters.read_all(real_bus, "inventory")
    stream, fields = dlq.replayable(real_bus, letter, SERVICES["inventory"], 64 * 1024)

    dead_letters.republish(real_bus, letter, stream, fields)
    with pytest.raises(dlq.DeadLetterError, match="gone meanwhile"):
        dead_letters.republish(real_bus, letter, stream, fields)    # a second operator, a stale listing
    assert c.xlen("events:OrderCreated") == 2                       # the original and one replay


@pytest.mark.parametrize("stream, entry, reason", [
    ("events:OrderCreated", "not json", "entry is not JSON"),
    ("events:OrderCreated", json.dumps({"type": "OrderCreated"}), "malformed: missing field(s)"),
    ("events:OrderCreated", json.dumps({**an_event(), "v": "9"}), "unknown schema version"),
    ("events:OrderCreated", json.dumps(an_event("PaymentFailed")), "does not belong on"),
    ("events:PaymentProcessed", json.dumps(an_event("PaymentProcessed")), "inventory does not handle PaymentProcessed"),
])
def test_replay_of_an_entry_that_would_only_fail_again_is_refused(real_bus, redis_url, capsys,
                                                                  stream, entry, reason):
    c = real_bus.client
    dlq_id = c.xadd("dlq:inventory", {"stream": stream, "entry_id": "5-0", "group": "inventory",
                                      "deliveries": "1", "error": "malformed", "at": "-",
                                      "entry": entry})

    # No original on the stream: only --trust-copy gets as far as the checks.
    code, out, err = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, "--trust-copy", url=redis_url)

    assert code == 1 and "refused" in err and reason in err and out == ""
    assert c.xlen("dlq:inventory") == 1 and not c.exists(stream)


def test_replay_all_replays_the_good_and_keeps_the_refused(real_bus, redis_url, capsys):
    c = real_bus.client
    good = letter_for(c, "inventory", "events:OrderCreated", "5-0", an_event())
    bad = letter_for(c, "inventory", "events:OrderCreated", "6-0", {"junk": "1"})

    code, out, err = cli(capsys, "dlq", "replay", "inventory", "--all", url=redis_url)

    assert code == 1 and f"replayed inventory/{good}" in out and f"inventory/{bad}: refused" in err
    assert [e for e, _ in c.xrange("dlq:inventory")] == [bad]


def test_replay_all_refuses_letters_naming_ids_or_streams_redis_refuses_and_replays_the_rest(
        real_bus, redis_url, capsys):
    """A letter is a claim of its service's user: one naming an id Redis would refuse (beyond 64
    bits, non-ASCII digits, not an id) or a stream of the wrong type is refused in its own line,
    and the letters after it are still replayed."""
    c = real_bus.client
    forged = []
    for stream, entry_id in (("events:OrderCreated", "nope"), ("events:OrderCreated", "99999999999999999999999-0"),
                             ("events:OrderCreated", "\u0661-0"), ("events:PaymentSettled", "1-0")):
        letter = DeadLetter.of("inventory", Delivery(stream, entry_id, an_event()), "x", "-")
        forged.append(c.xadd("dlq:inventory", letter.to_fields()))
    c.set("events:PaymentSettled", "not a stream")
    good = letter_for(c, "inventory", "events:OrderCreated", "5-0", an_event())

    code, out, err = cli(capsys, "dlq", "replay", "inventory", "--all", url=redis_url)

    assert code == 1 and out.splitlines() == [f"replayed inventory/{good} to events:OrderCreated as "
                                              f"{c.xrange('events:OrderCreated')[-1][0]}"]
    lines = err.splitlines()
    assert len(lines) == 4 and "Traceback" not in err
    for line, dlq_id in zip(lines[:3], forged):
        assert line.startswith(f"choreo: inventory/{dlq_id}: refused, it names no stream entry"), line
    assert lines[3].startswith(f"choreo: inventory/{forged[3]}: refused, Redis refused its reads or writes:")
    assert "WRONGTYPE" in lines[3]
    assert [e for e, _ in c.xrange("dlq:inventory")] == forged


@pytest.mark.parametrize("ref", ["99999999999999999999999-0", "1-18446744073709551616", "\u0661-0",
                                 "inventory/1-99999999999999999999999"])
def test_an_entry_id_redis_would_refuse_is_a_bad_argument(ref, redis_url, capsys):
    code, out, err = cli(capsys, "dlq", "show", ref, url=redis_url)
    assert (code, out) == (2, "") and len(err.strip().splitlines()) == 1 and "each part below 2^64" in err


def test_purge_without_yes_counts_and_exits_2_and_with_yes_deletes(real_bus, redis_url, capsys):
    c = real_bus.client
    for n in range(3):
        letter_for(c, "payment", "events:InventoryChecked", f"{n + 1}-0", an_event())

    code, out, err = cli(capsys, "dlq", "purge", "payment", url=redis_url)

    assert code == 2 and out.strip() == "would purge 3 dead letter(s) from dlq:payment"
    assert err.strip().splitlines() == ["choreo dlq purge: nothing deleted; add --yes to delete them"]
    assert c.xlen("dlq:payment") == 3

    code, out, _ = cli(capsys, "dlq", "purge", "payment", "--yes", url=redis_url)

    assert code == 0 and out.strip() == "purged 3 dead letter(s) from dlq:payment"
    assert not c.exists("dlq:payment")


def test_replay_dry_run_checks_and_prints_but_writes_nothing(real_bus, redis_url, capsys):
    c = real_bus.client
    fields = an_event(order_id="41")
    good = letter_for(c, "inventory", "events:OrderCreated", "5-0", fields)
    bad = letter_for(c, "inventory", "events:OrderCreated", "6-0", {"junk": "1"})

    code, out, err = cli(capsys, "dlq", "replay", "inventory", "--all", "--dry-run", url=redis_url)

    assert code == 1
    assert out.splitlines() == [f"would replay inventory/{good} to events:OrderCreated: "
                                f"OrderCreated {fields['id']} for order 41"]
    [refusal] = err.splitlines()
    assert refusal.startswith(f"choreo: inventory/{bad}: refused, the entry is malformed: missing")
    assert c.xlen("events:OrderCreated") == 2 and c.xlen("dlq:inventory") == 2     # the originals only


def test_replay_refuses_an_entry_its_event_schema_refuses(real_bus, redis_url, capsys):
    c = real_bus.client
    no_lines = Envelope.new("OrderCreated", "1", "order", {"lines": [], "total_cents": 5}).fields()
    dlq_id = letter_for(c, "inventory", "events:OrderCreated", "5-0", no_lines)

    code, out, err = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, url=redis_url)

    assert (code, out) == (1, "")
    assert err.strip() == (f"choreo: inventory/{dlq_id}: refused, the entry is malformed: "
                           f"OrderCreated data: Expected `array` of length >= 1 - at `$.lines`")
    assert c.xlen("events:OrderCreated") == 1 and c.xlen("dlq:inventory") == 1     # the original only


def test_replay_refuses_deeply_nested_data_in_one_line(real_bus, redis_url, capsys):
    """The issue's first row: 5,000 nested `[` in `data` made replay end in a traceback."""
    c = real_bus.client
    nested = {**an_event(), "data": "[" * 5000}
    dlq_id = letter_for(c, "inventory", "events:OrderCreated", "5-0", nested)

    code, out, err = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, url=redis_url)

    assert (code, out) == (1, "") and len(err.strip().splitlines()) == 1
    assert f"inventory/{dlq_id}: refused, the entry is malformed" in err
    assert c.xlen("events:OrderCreated") == 1 and c.xlen("dlq:inventory") == 1     # the original only


def test_replay_refuses_a_truncated_copy_once_the_original_is_trimmed(real_bus, redis_url, capsys):
    c = real_bus.client
    huge = {**an_event(), "data": json.dumps({"lines": [{"product_id": 101, "quantity": 1}],
                                              "total_cents": 1999, "pad": "x" * 60_000})}
    dlq_id = letter_for(c, "inventory", "events:OrderCreated", "5-0", huge)
    code, out, _ = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, "--dry-run", url=redis_url)
    assert code == 0 and out.startswith(f"would replay inventory/{dlq_id}")     # the original is there
    c.xdel("events:OrderCreated", "5-0")                                        # trimmed

    code, out, err = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, "--dry-run", url=redis_url)
    assert (code, out) == (1, "") and "is gone from events:OrderCreated (trimmed); --trust-copy" in err

    code, out, err = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, "--dry-run",
                         "--trust-copy", url=redis_url)

    assert (code, out) == (1, "") and len(err.strip().splitlines()) == 1
    assert (f"inventory/{dlq_id}: refused, only a truncated copy is kept" in err
            and "the original cannot be restored" in err)
    assert c.xlen("dlq:inventory") == 1


def test_a_forged_letter_that_does_not_match_its_entry_is_refused(real_bus, redis_url, capsys):
    """A service's user may write anything to its own dlq: a letter claiming a ShippingArranged
    that shipping never wrote must not be replayed as if it were real (a forgery)."""
    c = real_bus.client
    real = {**an_event("ShippingArranged", order_id="42"), "producer": "shipping", "data": '{"tracking_id":"T"}'}
    real_id = c.xadd("events:ShippingArranged", real)
    forged = {**real, "data": '{"tracking_id":"FORGED"}'}
    for entry_id, why in ((real_id, f"does not match entry {real_id} on events:ShippingArranged"),
                          ("99999999999999-0", "is gone from events:ShippingArranged (trimmed)")):
        letter = DeadLetter.of("inventory", Delivery("events:ShippingArranged", entry_id, forged), "x", "-")
        dlq_id = c.xadd("dlq:inventory", letter.to_fields())

        code, out, err = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, url=redis_url)

        assert (code, out) == (1, "") and why in err
    assert c.xlen("events:ShippingArranged") == 1


def test_the_runtime_dead_letters_a_malformed_entry_and_replay_refuses_it(procs, real_bus, capsys):
    c = real_bus.client
    procs.worker("inventory")
    entry_id = c.xadd("events:OrderCreated", {"junk": "1"})
    wait_for(lambda: c.xlen("dlq:inventory") == 1, what="the malformed entry dead-lettered")
    [(dlq_id, _)] = c.xrange("dlq:inventory")

    code, out, _ = cli(capsys, "dlq", "show", f"inventory/{dlq_id}", url=procs.url)
    assert code == 0 and f"entry_id: {entry_id}" in out and "missing field(s)" in out

    code, _, err = cli(capsys, "dlq", "replay", "inventory", "--all", url=procs.url)
    assert code == 1 and "refused, the entry is malformed: missing field(s)" in err
    assert c.xlen("events:OrderCreated") == 1 and c.xlen("dlq:inventory") == 1


def test_replay_of_a_letter_the_service_never_handled_completes_the_order(procs, real_bus, capsys):
    """Inventory gave up on an OrderCreated (its group moved past it): the order is stuck until
    the dead letter is replayed; then it completes, and the order service, which had already
    confirmed that event, changes nothing."""
    c = real_bus.client
    place_orders(real_bus, [OrderRequest("77", [{"product_id": 101, "quantity": 1}])])
    [(entry_id, fields)] = c.xrange("events:OrderCreated")
    c.xgroup_create("events:OrderCreated", "inventory", id="$")
    dlq_id = letter_for(c, "inventory", "events:OrderCreated", entry_id, fields)
    start_workers(procs)
    wait_for(lambda: confirmed(c, "events:OrderCreated", "order", entry_id), what="order confirmed the event")
    assert c.hget("order:77", "status") == "PENDING"

    code, _, _ = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, url=procs.url)
    settle(c)

    assert code == 0 and c.hget("order:77", "status") == "COMPLETED"
    assert c.hget("order:77", "ended_by") == "ShippingArranged" and c.hget("order:77", "_v") == "2"
    assert c.xlen("events:InventoryChecked") == 1


def test_replay_of_an_event_every_service_already_handled_has_no_second_effect(procs, real_bus, capsys):
    c = real_bus.client
    start_workers(procs)
    place_mix(procs)
    settle(c)
    [(entry_id, fields)] = c.xrange("events:OrderCreated", count=1)
    before = state(c)
    dlq_id = letter_for(c, "inventory", "events:OrderCreated", entry_id, fields)

    code, out, _ = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, url=procs.url)
    wait_for(lambda: c.xlen("events:OrderCreated") == before["lengths"]["events:OrderCreated"] + 1,
             what="the replayed entry")
    settle(c)

    assert code == 0 and "replayed" in out
    after = state(c)
    assert after["lengths"].pop("events:OrderCreated") == before["lengths"].pop("events:OrderCreated") + 1
    assert after == before


def test_a_replay_is_for_its_letters_group_alone(procs, real_bus, capsys):
    """Order and inventory both handled an OrderCreated; inventory's (forged) letter for it is
    replayed. The order service acknowledges the copy and does nothing with it; inventory handles
    it under its seen set's guard, the copy having no `once`."""
    c = real_bus.client
    start_workers(procs)
    place_orders(real_bus, [OrderRequest("77", [{"product_id": 101, "quantity": 1}])])
    settle(c)
    [(entry_id, fields)] = c.xrange("events:OrderCreated")
    dlq_id = letter_for(c, "inventory", "events:OrderCreated", entry_id, fields)

    code, _, _ = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, url=procs.url)
    copy_id = c.xrevrange("events:OrderCreated", count=1)[0][0]
    wait_for(lambda: all(confirmed(c, "events:OrderCreated", g, copy_id) for g in ("order", "inventory")),
             what="both groups acknowledged the copy")
    settle(c)

    assert code == 0 and fields["once"] == "1"
    assert c.zscore("seen:inventory", fields["id"]) is not None     # handled, under the guard
    assert not c.exists("seen:order")                               # acknowledged, nothing else
    assert c.hget("order:77", "_v") == "2" and c.hget("order:77", "status") == "COMPLETED"


def test_replay_refuses_a_copy_meant_for_another_group(real_bus, redis_url, capsys):
    """Inventory holds a letter of a replayed copy meant for the order service (which reads
    OrderCreated too): inventory had the original (keeping no id of it), so handing it the event
    again could apply it twice."""
    c = real_bus.client
    dlq_id = letter_for(c, "inventory", "events:OrderCreated", "5-0", {**an_event(), "for": "order"})

    code, out, err = cli(capsys, "dlq", "replay", "inventory", "--id", dlq_id, url=redis_url)

    assert code == 1 and out == ""
    assert "refused, the entry is a replay for 'order', not for inventory" in err
    assert c.xlen("dlq:inventory") == 1 and c.xlen("events:OrderCreated") == 1


def test_a_verbatim_copy_of_every_event_changes_nothing_in_the_saga(procs, real_bus):
    """Copies of entries marked `once` (XRANGE then XADD by hand) are new events to every group,
    which keeps no id of the originals (docs/design.md): the saga's handlers still change nothing,
    as their state makes a repeated event a no-op."""
    c = real_bus.client
    start_workers(procs)
    place_mix(procs)
    settle(c)
    before = state(c)
    copied = 0
    for stream in before["lengths"]:
        for _, fields in c.xrange(stream):
            assert fields["once"] == "1"
            c.xadd(stream, fields)
            copied += 1
    wait_for(lambda: sum(state(c)["lengths"].values()) == sum(before["lengths"].values()) + copied,
             what="the copies on their streams")
    settle(c)
    after = state(c)
    assert {s: n * 2 for s, n in before.pop("lengths").items()} == after.pop("lengths")   # no new events
    assert after == before and not c.exists("dlq:order", "dlq:inventory", "dlq:payment", "dlq:shipping")


def confirmed(c, stream: str, group: str, entry_id: str) -> bool:
    """The group was handed the entry and acknowledged it."""
    info = next((g for g in c.xinfo_groups(stream) if g["name"] == group), None)
    return info is not None and info["last-delivered-id"] == entry_id and info["pending"] == 0


def state(c) -> dict:
    """Everything a second handling of an event could change."""
    return {
        "stock": [c.hgetall(f"stock:{p}") for p in (101, 102, 103)],
        "totals": c.hgetall("payments:totals"),
        "by_status": c.hgetall("orders:by_status"),
        "lengths": {s: c.xlen(s) for s in c.scan_iter(match="events:*")},
        "reservations": {k: c.hgetall(k) for k in c.scan_iter(match="reservation:*")},
    }

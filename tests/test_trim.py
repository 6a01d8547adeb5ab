"""Safe trimming against a real redis-server: nothing a group still needs is ever deleted."""

from __future__ import annotations

from dataclasses import dataclass

from choreo.bus.trim import Retention, after, format_id, parse_id, trim_stream, trim_streams
from choreo.cli import main
from tests.helpers import wait_for
from tests.saga_run import place_mix, settle

STREAM = "events:Thing"


@dataclass(frozen=True)
class Declared:
    name: str
    streams: tuple[str, ...] = (STREAM,)


def fill(client, n: int, ids=None) -> list[str]:
    return [client.xadd(STREAM, {"n": str(i)}, id=ids[i] if ids else "*") for i in range(n)]


def consume(client, group: str, count: int, ack=()) -> list[str]:
    """Read `count` new entries as `group`; acknowledge those at the positions in ack."""
    read = [e for _, entries in client.xreadgroup(group, f"{group}-1", {STREAM: ">"}, count=count)
            for e, _ in entries]
    if ack:
        client.xack(STREAM, group, *[read[i] for i in ack])
    return read


def groups(client, *names: str) -> None:
    for name in names:
        client.xgroup_create(STREAM, name, id="0", mkstream=True)


def remaining(client) -> list[str]:
    return [e for e, _ in client.xrange(STREAM)]


def test_a_slow_groups_pending_and_unread_entries_survive(real_bus):
    c = real_bus.client
    groups(c, "fast", "slow")
    ids = fill(c, 10)
    consume(c, "fast", 10, ack=range(10))
    consume(c, "slow", 4, ack=(0, 1, 3))         # ids[2] pending; ids[4:] never read

    report = trim_stream(real_bus, STREAM, ["fast", "slow"])

    assert report.trimmed == 2 and report.trim_point == ids[2]
    assert remaining(c) == ids[2:]
    assert [p["message_id"] for p in c.xpending_range(STREAM, "slow", "-", "+", 10)] == [ids[2]]
    assert consume(c, "slow", 10) == ids[4:]       # the slow group still gets every unread one


def test_without_pending_the_point_is_just_after_the_last_delivered_entry(real_bus):
    c = real_bus.client
    groups(c, "fast", "slow")
    ids = fill(c, 8)
    consume(c, "fast", 8, ack=range(8))
    consume(c, "slow", 5, ack=range(5))

    report = trim_stream(real_bus, STREAM, ["fast", "slow"])

    assert report.trimmed == 5 and remaining(c) == ids[5:]
    assert report.trim_point == format_id(after(ids[4]))


def test_a_missing_declared_group_blocks_the_stream_and_says_so(real_bus):
    c = real_bus.client
    groups(c, "fast")
    fill(c, 5)
    consume(c, "fast", 5, ack=range(5))

    report = trim_stream(real_bus, STREAM, ["fast", "shipping"])

    assert report.blocked_by == ("shipping",) and report.trimmed == 0 and c.xlen(STREAM) == 5
    assert "blocked" in report.line() and "shipping" in report.line()


def test_an_existing_undeclared_group_is_honoured_too(real_bus):
    c = real_bus.client
    groups(c, "fast", "adhoc")
    ids = fill(c, 6)
    consume(c, "fast", 6, ack=range(6))
    consume(c, "adhoc", 1, ack=(0,))

    trim_stream(real_bus, STREAM, ["fast"])

    assert remaining(c) == ids[1:]


def test_keep_entries_keeps_acknowledged_history(real_bus):
    c = real_bus.client
    groups(c, "fast")
    ids = fill(c, 10)
    consume(c, "fast", 10, ack=range(10))

    assert trim_stream(real_bus, STREAM, ["fast"], Retention(keep_entries=20)).trimmed == 0
    report = trim_stream(real_bus, STREAM, ["fast"], Retention(keep_entries=3))

    assert report.trimmed == 7 and remaining(c) == ids[7:]


def test_keep_seconds_keeps_recent_history_by_entry_time(real_bus):
    c = real_bus.client
    groups(c, "fast")
    ids = fill(c, 10, ids=[f"{(i + 1) * 1000}-0" for i in range(10)])
    consume(c, "fast", 10, ack=range(10))

    report = trim_stream(real_bus, STREAM, ["fast"], Retention(keep_seconds=3), clock=lambda: 10.5)

    assert report.trim_point == "7500-0" and remaining(c) == ids[7:]


def test_retention_never_moves_the_point_past_what_a_group_needs(real_bus):
    c = real_bus.client
    groups(c, "slow")
    ids = fill(c, 10, ids=[f"{(i + 1) * 1000}-0" for i in range(10)])
    consume(c, "slow", 10, ack=(0, 1, 2, 4, 5, 6, 7, 8, 9))    # ids[3] still pending

    report = trim_stream(real_bus, STREAM, ["slow"], Retention(keep_entries=1, keep_seconds=1),
                         clock=lambda: 10.5)

    assert report.trim_point == ids[3] and remaining(c) == ids[3:]


def test_dry_run_counts_and_deletes_nothing(real_bus):
    c = real_bus.client
    groups(c, "fast")
    fill(c, 4)
    consume(c, "fast", 4, ack=range(4))

    report = trim_stream(real_bus, STREAM, ["fast"], dry_run=True)

    assert report.trimmed == 4 and c.xlen(STREAM) == 4 and "would trim 4" in report.line()


def test_ids_after_the_last_sequence_roll_over_to_the_next_millisecond():
    assert after("5-3") == (5, 4)
    assert after(f"5-{2 ** 64 - 1}") == (6, 0)
    assert parse_id("12-0") < parse_id("12-1") < parse_id("13-0")


def test_ids_ahead_of_the_clock_do_not_keep_every_later_entry_for_ever(real_bus):
    """One XADD with an id years ahead (by hand) makes every later id as far ahead, and keeping
    "the last S seconds" by id kept all of them: a stream the trimmer never shortened. Its ids
    are then taken as no clock's: --keep-seconds does not apply to it, --keep-entries does."""
    c = real_bus.client
    groups(c, "fast")
    ids = fill(c, 3) + [c.xadd(STREAM, {"n": "planted"}, id="300000000000000-0")] + fill(c, 5)
    assert all(parse_id(i)[0] == 300000000000000 for i in ids[3:])
    consume(c, "fast", 9, ack=range(9))
    report = trim_stream(real_bus, STREAM, ["fast"], Retention(keep_entries=2, keep_seconds=3600))
    assert report.trimmed == 7 and remaining(c) == ids[7:]
    assert "ahead of the clock" in report.line()
    # Ids a clock made (another host's, a minute ahead) are still kept by their time.
    c.delete(STREAM)
    groups(c, "fast")
    ids = fill(c, 4, ids=[f"{(i + 1) * 1000}-0" for i in range(3)] + ["60000-0"])
    consume(c, "fast", 4, ack=range(4))
    report = trim_stream(real_bus, STREAM, ["fast"], Retention(keep_seconds=3), clock=lambda: 2.5)
    assert remaining(c) == ids[0:] and "ahead" not in report.line()


def test_a_stream_that_has_read_the_largest_id_is_trimmed_and_audited_without_an_error(real_bus, capsys):
    """An XADD of the largest id there is: nothing comes after it, and `after` of it, like an
    exclusive range from it, has no answer Redis takes (trim and audit failed on every stream)."""
    largest = f"{2 ** 64 - 1}-{2 ** 64 - 1}"
    assert after(largest) == parse_id(largest)
    c = real_bus.client
    groups(c, "fast")
    ids = fill(c, 2) + [c.xadd(STREAM, {"n": "planted"}, id=largest)]
    consume(c, "fast", 3, ack=range(3))
    report = trim_stream(real_bus, STREAM, ["fast"])
    assert report.trimmed == 2 and remaining(c) == ids[2:]
    from choreo.bus import inspect
    assert inspect.count_after(real_bus, STREAM, largest) == 0


def test_trim_streams_covers_each_declared_stream_with_all_its_groups(real_bus):
    other = "events:Other"
    c = real_bus.client
    groups(c, "a", "b")
    fill(c, 3)
    consume(c, "a", 3, ack=range(3))
    consume(c, "b", 3, ack=range(3))
    c.xadd(other, {"n": "0"})

    reports = trim_streams(real_bus, [Declared("a"), Declared("b", (STREAM, other))])

    assert [(r.stream, r.trimmed, r.blocked_by) for r in reports] == \
        [(other, 0, ("b",)), (STREAM, 3, ())]


def test_choreo_trim_on_a_real_run_blocks_only_where_a_service_is_down(procs, real_bus, capsys):
    """Shipping has never started: the streams it consumes keep everything; the rest are trimmed;
    once shipping starts, every order still completes (nothing it needed was lost)."""
    c = real_bus.client
    for name in ("order", "inventory", "payment"):
        procs.worker(name)
    expected = place_mix(procs)
    wait_for(lambda: c.xlen("events:PaymentProcessed") == 3, what="three orders paid")
    wait_for(lambda: all(g["lag"] == 0 and g["pending"] == 0
                         for g in c.xinfo_groups("events:OrderCreated")), what="orders read")

    assert main(["trim", "--redis-url", procs.url]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert "events:PaymentProcessed: blocked by missing group(s) shipping" in "\n".join(lines)
    assert any(line.startswith("events:OrderCreated: trimmed 5 entries") for line in lines)
    assert c.xlen("events:PaymentProcessed") == 3
    procs.worker("shipping")
    settle(c)
    assert {i: c.hget(f"order:{i}", "status") for i in expected} == expected
    assert main(["audit", "--strict", "--redis-url", procs.url]) == 0


def test_trim_every_takes_an_explicit_zero_over_the_settings_default(procs, real_bus):
    """`--keep-entries 0 --keep-seconds 0` keeps no history; with --every, an absent option
    takes CHOREO_TRIM_KEEP_*, but a given 0 was read as absent and replaced by 10,000 / 3600 s."""
    given = procs.start("trim", "--every", "1", "--keep-entries", "0", "--keep-seconds", "0", name="trim-0")
    default = procs.start("trim", "--every", "1", name="trim-default", CHOREO_TRIM_KEEP_ENTRIES="7")
    for proc, said in ((given, "keeping 0 entries / 0s"), (default, "keeping 7 entries / 3600s")):
        wait_for(lambda: said in open(proc.log_path).read(), what=said)

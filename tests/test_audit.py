"""`choreo audit` against a real redis-server: clean after a real run of the four workers, and
each kind of violation found when the state is corrupted by hand."""

from __future__ import annotations

import json

import pytest
import redis
from redis.connection import AbstractConnection

from choreo.bus import filing, keys as bus_keys
from choreo.ops.audit import audit, gather
from choreo.cli import main
from tests.conftest import Processes
from tests.helpers import record
from tests.saga_run import place_mix, settle, start_workers
from choreo.workers import SERVICES


@pytest.fixture(scope="module")
def settled_dump(redis_server, tmp_path_factory):
    """One real run (every way an order can end), drained, workers stopped; its keys DUMPed so
    each test starts from the same state without running the workers again."""
    redis_server.client().flushall()
    procs = Processes(redis_server.url, tmp_path_factory.mktemp("audit-run"))
    try:
        start_workers(procs)
        expected = place_mix(procs)
        settle(redis_server.client())
    finally:
        procs.stop_all()
    raw = redis.Redis(port=redis_server.port)
    dump = [(k, raw.pttl(k), raw.dump(k)) for k in raw.scan_iter()]
    raw.close()
    return expected, dump


@pytest.fixture
def run(settled_dump, redis_url, real_bus):
    """(client, {order id: final status}) on a fresh copy of the settled run."""
    expected, dump = settled_dump
    raw = redis.Redis.from_url(redis_url)
    for key, pttl, value in dump:
        raw.restore(key, max(pttl, 0), value)
    raw.close()
    return real_bus.client, expected


def order_in(expected: dict, status: str, nth: int = 0) -> str:
    return [i for i, s in expected.items() if s == status][nth]


def refunded_order(c, expected) -> str:
    return next(i for i, s in expected.items()
                if s == "CANCELLED" and record(c, f"payment:{i}").get("status") == "REFUNDED")


def edit(c, key: str, **fields) -> dict[str, str]:
    """Change fields of a record where it is: its hash, or its filed value in its bucket."""
    if c.exists(key):
        c.hset(key, mapping=fields)
        return c.hgetall(key)
    bucket, field = bus_keys.filed(key)
    changed = {**record(c, key), **{k: str(v) for k, v in fields.items()}}
    c.hset(bucket, field, filing.pack(key, changed))
    return changed


def audit_cli(capsys, url: str, *flags: str) -> tuple[int, list[str], str]:
    code = main(["audit", "--redis-url", url, *flags])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_a_real_run_audits_clean_even_strictly(run, redis_url, capsys):
    c, expected = run
    assert {i: c.hget(f"order:{i}", "status") for i in expected} == expected

    code, lines, _ = audit_cli(capsys, redis_url, "--strict")

    assert code == 0 and len(lines) == 1
    assert lines[0].startswith("audit clean: 5 orders (CANCELLED=2 COMPLETED=2 REJECTED=1)")
    assert "settled: nothing in flight" in lines[0]


def test_a_stale_entries_read_is_not_taken_for_entries_trimmed_unread(run, redis_url, capsys):
    """A Redis 7.0 replica does not advance a group's entries-read: after a failover (or a
    resync) the new primary's lag reads high on streams every group had read to the end, and
    audit reported those entries deleted before they were read. Trimming takes from the head,
    so nothing after what a group read was trimmed while the first entry left is no later."""
    c, _ = run
    stream = "events:OrderCreated"
    (group,) = [g for g in c.xinfo_groups(stream) if g["name"] == "inventory"]
    c.execute_command("XGROUP", "SETID", stream, "inventory", group["last-delivered-id"], "ENTRIESREAD", 0)
    assert c.xinfo_groups(stream)[[g["name"] for g in c.xinfo_groups(stream)].index("inventory")]["lag"] > 0
    code, lines, _ = audit_cli(capsys, redis_url, "--strict")
    assert code == 0, lines


# Each corruption: what is done by hand, and the violation audit must print for it.
def bad_status(c, e):
    c.hset(f"order:{order_in(e, 'COMPLETED')}", "status", "SHIPPED?")


def counter_off(c, e):
    c.hincrby("orders:by_status", "COMPLETED", 1)


def stock_created(c, e):
    c.hincrby("stock:101", "available", 1)


def stock_negative(c, e):
    c.hset("stock:102", "sold", -1)


def reserved_without_reservation(c, e):
    c.hincrby("stock:101", "available", -1)
    c.hincrby("stock:101", "reserved", 1)


def totals_off(c, e):
    c.hincrby("payments:totals", "charged_cents", 100)


def shipped_and_refunded(c, e):
    oid = order_in(e, "COMPLETED")
    paid = edit(c, f"payment:{oid}", status="REFUNDED")
    c.hincrby("payments:totals", "refunded_cents", int(paid["amount_cents"]))


def cancelled_still_charged(c, e):
    oid = refunded_order(c, e)
    paid = edit(c, f"payment:{oid}", status="CHARGED")
    c.hincrby("payments:totals", "refunded_cents", -int(paid["amount_cents"]))


def completed_unpaid(c, e):
    oid = order_in(e, "COMPLETED")
    edit(c, f"payment:{oid}", amount_cents=1)


def missing_from_index(c, e):
    c.zrem("orders:index", order_in(e, "REJECTED"))


def stray_payment(c, e):
    c.hset("payment:999", mapping={"status": "CHARGED", "amount_cents": 0})


def pending_trimmed_away(c, e):
    c.xadd("events:OrderCreated", {"junk": "1"})
    c.xreadgroup("inventory", "inventory-gone-1", {"events:OrderCreated": ">"}, count=1)
    c.xtrim("events:OrderCreated", maxlen=0, approximate=False)


def unread_trimmed_away(c, e):
    c.xadd("events:PaymentProcessed", {"junk": "1"})
    c.xtrim("events:PaymentProcessed", maxlen=0, approximate=False)


def unread_partly_trimmed_away(c, e):
    """Entries left after the one trimmed unread: the first entry left is past what it read."""
    for n in range(3):
        c.xadd("events:PaymentProcessed", {"junk": str(n)})
    c.xtrim("events:PaymentProcessed", maxlen=1, approximate=False)


def group_set_past_the_end(c, e):
    c.execute_command("XGROUP", "SETID", "events:OrderCreated", "order", "9999999999999-0")


def status_count_not_a_number(c, e):
    c.hset("orders:by_status", "COMPLETED", "abc")


def totals_not_a_number(c, e):
    c.hset("payments:totals", "charged_cents", "abc")


def completed_cents_not_a_number(c, e):
    c.hset("orders:totals", "completed_cents", "1e3")


def expired_not_a_number(c, e):
    c.set("orders:expired", "abc")


def order_total_not_a_number(c, e):
    edit(c, f"order:{order_in(e, 'COMPLETED')}", total_cents="nan")


def amount_not_a_number(c, e):
    edit(c, f"payment:{order_in(e, 'COMPLETED')}", amount_cents="abc")


def count_python_reads_redis_refuses(c, e):
    c.hset("payments:totals", "charged_cents", "1_000")        # int() took it; HINCRBY would not


def count_beyond_64_bits(c, e):
    c.hset("orders:totals", "completed_cents", str(2 ** 63))


def lines_not_json(c, e):
    c.hset("reservation:777", mapping={"status": "RESERVED", "lines": "[{"})


@pytest.mark.parametrize("corrupt, violation", [
    (bad_status, "is neither terminal nor PENDING"),
    (counter_off, "orders:by_status: COMPLETED=3 but 2 order hashes are COMPLETED"),
    (stock_created, "stock:101: start"),
    (stock_negative, "stock:102: sold is negative (-1)"),
    (reserved_without_reservation, "stock:101: reserved 1 but RESERVED reservations hold 0"),
    (totals_off, "payments:totals: charged_cents="),
    (totals_off, "money: charged - refunded ="),
    (shipped_and_refunded, "both shipped (shipment BOOKED) and refunded"),
    (cancelled_still_charged, "CANCELLED but its payment is still CHARGED (no refund)"),
    (completed_unpaid, "COMPLETED with total"),
    (missing_from_index, "exists but is not in orders:index"),
    (stray_payment, "order 999: payment:999 exists but order:999 does not"),
    (pending_trimmed_away, "group inventory: 1 pending entries were deleted before they were"),
    (unread_trimmed_away, "group shipping: 1 entries after its last-delivered-id"),
    (unread_partly_trimmed_away, "group shipping: 2 entries after its last-delivered-id"),
    (group_set_past_the_end, "group order: its last-delivered-id 9999999999999-0 is past the stream's last entry"),
    # Values the saga never writes, by hand: each a violation naming its key, the other checks still run.
    (status_count_not_a_number, "orders:by_status COMPLETED is not a whole number: 'abc'"),
    (totals_not_a_number, "payments:totals charged_cents is not a whole number: 'abc'"),
    (completed_cents_not_a_number, "orders:totals completed_cents is not a whole number: '1e3'"),
    (expired_not_a_number, "orders:expired is not a whole number: 'abc'"),
    (order_total_not_a_number, "total_cents is not a whole number: 'nan'"),
    (amount_not_a_number, "amount_cents is not a whole number: 'abc'"),
    (count_python_reads_redis_refuses, "payments:totals charged_cents is not a whole number: '1_000'"),
    (count_beyond_64_bits, "orders:totals completed_cents is not a whole number: '9223372036854775808'"),
    (lines_not_json, "reserved: stopped at a value the saga never writes (JSONDecodeError"),
])
def test_each_violation_is_found_and_exits_1(run, redis_url, capsys, corrupt, violation):
    c, expected = run
    corrupt(c, expected)

    code, lines, err = audit_cli(capsys, redis_url)

    assert code == 1, lines
    assert any(line.startswith("VIOLATION ") and violation in line for line in lines), lines
    assert "violation(s)" in err


def test_in_flight_entries_are_reported_and_only_strict_calls_them_violations(run, redis_url, capsys):
    c, _ = run
    c.xadd("events:InventoryRejected", {"junk": "1"})                 # unread by order
    c.xadd("events:ShippingFailed", {"junk": "2"})
    c.xreadgroup("payment", "payment-slow-1", {"events:ShippingFailed": ">"}, count=1)

    code, lines, _ = audit_cli(capsys, redis_url)
    assert code == 0 and "in flight: 0 orders PENDING, 3 unread, 1 pending" in lines[0]

    code, lines, _ = audit_cli(capsys, redis_url, "--strict")
    assert code == 1
    assert "VIOLATION events:InventoryRejected group order: 1 unread and 0 pending after the run " \
           "drained" in lines


def test_a_pending_order_is_in_flight_and_a_strict_violation(run, redis_url, capsys):
    c, expected = run
    oid = order_in(expected, "REJECTED")
    c.hset(f"order:{oid}", "status", "PENDING")
    c.hincrby("orders:by_status", "REJECTED", -1)
    c.hincrby("orders:by_status", "PENDING", 1)

    assert audit_cli(capsys, redis_url)[0] == 0
    code, lines, _ = audit_cli(capsys, redis_url, "--strict")
    assert code == 1 and f"VIOLATION order {oid}: still PENDING after the run drained" in lines


def test_a_declared_group_missing_on_a_stream_with_entries_is_reported(run, redis_url, capsys):
    c, _ = run
    c.xgroup_destroy("events:OrderCreated", "inventory")

    code, lines, _ = audit_cli(capsys, redis_url)

    assert code == 1
    assert any("events:OrderCreated group inventory: declared but missing (5 entries" in line
               for line in lines), lines


def test_ten_thousand_settled_orders_audit_in_a_few_round_trips(real_bus, monkeypatch):
    c, n = real_bus.client, 10_000
    pipe = c.pipeline(transaction=False)
    lines = json.dumps([{"product_id": 101, "quantity": 1}])
    for i in range(1, n + 1):
        pipe.hset(f"order:{i}", mapping={"status": "COMPLETED", "total_cents": 1999, "lines": lines})
        pipe.zadd("orders:index", {str(i): i})
        pipe.hset(f"reservation:{i}", mapping={"status": "SOLD", "lines": lines})
        pipe.hset(f"payment:{i}", mapping={"status": "CHARGED", "amount_cents": 1999})
        pipe.hset(f"shipment:{i}", mapping={"status": "BOOKED"})
        pipe.set(f"seen:order:{i:032x}", 1)
    pipe.hset("orders:by_status", "COMPLETED", n)
    pipe.hset("payments:totals", mapping={"charged_cents": 1999 * n, "refunded_cents": 0})
    pipe.hset("stock:101", mapping={"start": n, "available": 0, "reserved": 0, "sold": n})
    pipe.execute()

    round_trips = count_round_trips(monkeypatch)
    report = audit(gather(real_bus, SERVICES.values()), strict=True)

    assert report.violations == [] and report.settled
    # Fast because pipelined, not because this machine is: a read per key would be 40,000 round
    # trips, where the audit needs a few per thousand orders (SCAN pages, pipelined HGETALLs).
    assert round_trips["n"] <= n // 100



def count_round_trips(monkeypatch) -> dict[str, int]:
    """From now on, counts each write redis-py sends to a server: one command or one pipeline."""
    count = {"n": 0}
    send = AbstractConnection.send_packed_command

    def counted(self, *args, **kwargs):
        count["n"] += 1
        return send(self, *args, **kwargs)
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return count


def test_an_id_pruned_while_the_audit_reads_the_index_is_counted_once(redis_server, redis_url):
    """The trimmer moves an id from orders:index to orders:expired between the audit's reads:
    the audit reads again rather than count it in both."""
    from choreo.bus.connect import open_bus
    from choreo.ops.audit import index_and_pruned
    client = redis_server.client()
    client.zadd("orders:index", {"1": 1.0, "2": 2.0})
    reads = []
    with open_bus(redis_url) as bus:
        pipeline = bus.client.pipeline

        def racing_pipeline(*args, **kwargs):
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute

            def execute_then_prune():
                replies = execute()
                reads.append(replies)
                if len(reads) == 1:             # the trimmer prunes id 1 just after the index read
                    client.zrem("orders:index", "1")
                    client.incr("orders:expired")
                    replies[2] = "1"
                return replies
            pipe.execute = execute_then_prune
            return pipe
        bus.client.pipeline = racing_pipeline
        index, pruned = index_and_pruned(bus)
    assert len(reads) == 2 and (sorted(index), int(pruned)) == (["2"], 1)

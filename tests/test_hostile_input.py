"""Hostile writers (issue: nothing a Redis writer sends can stop a worker or run code). Each test
writes what an attacker with write access to Redis could, against a real redis-server with the
real processes running, and checks every worker is still alive afterwards."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

import pytest

from choreo.bus import keys as bus_keys
from choreo.bus.contract import BusError
from choreo.bus.envelope import Envelope
from choreo.scheduling.timers import QUEUE
from tests.helpers import log_lines, wait_for
from tests.saga_run import settle, start_workers
from choreo.workers import SERVICES, keys


def _valid_order(order_id: str) -> dict:
    return Envelope.new("OrderCreated", order_id, "order",
                        {"lines": [{"product_id": 101, "quantity": 1}], "total_cents": 1999}).fields()


def _dead_letters(client, service: str) -> list[dict]:
    return [fields for _, fields in client.xrange(bus_keys.dead_letters(service))]


def _all_alive(procs) -> None:
    dead = [p.args for p in procs.procs if p.poll() is not None]
    assert not dead, f"exited: {dead}"


def test_deeply_nested_data_is_dead_lettered_and_no_worker_dies(procs, redis_server):
    r = redis_server.client()
    start_workers(procs)
    bomb = {**_valid_order("bomb"), "data": "[" * 5000}
    r.xadd(bus_keys.stream("OrderCreated"), bomb)
    r.xadd(bus_keys.stream("OrderCreated"), _valid_order("after"))
    for service in ("order", "inventory"):
        wait_for(lambda: _dead_letters(r, service), what=f"{service} dead-letters the bomb")
        (letter,) = _dead_letters(r, service)
        assert letter["deliveries"] == "1" and "nested too deeply" in letter["error"]
    wait_for(lambda: r.hget(keys.reservation("after"), "status"), what="the next entry handled")
    _all_alive(procs)
    replay = procs.run("dlq", "replay", "inventory", "--all")
    assert "Traceback" not in replay.stderr + replay.stdout
    _all_alive(procs)


def test_bytes_that_are_not_utf8_are_dead_lettered_and_every_reader_copes(procs, redis_server):
    r = redis_server.client()
    start_workers(procs)
    redis_server.client(decode=False).xadd(bus_keys.stream("OrderCreated"), {**_valid_order("x"), "producer": b"\xff\xfe"})
    wait_for(lambda: _dead_letters(r, "inventory"), what="dead-lettered")
    assert "not UTF-8" in _dead_letters(r, "inventory")[0]["error"]
    for args in (("trim", "--dry-run"), ("trim",), ("dashboard", "--once", "--refresh", "0.1"),
                 ("dashboard", "--json", "--refresh", "0.1"), ("dlq", "list"), ("audit",)):
        done = procs.run(*args)
        assert "Traceback" not in done.stderr, (args, done.stderr)
        assert done.returncode in (0, 1), (args, done.returncode)
    _all_alive(procs)


def test_housekeeping_reads_non_utf8_entries_without_stopping(real_bus):
    """Trimming with retention reads whole entries (XREVRANGE): bytes that are not UTF-8 come
    back escaped, never as a UnicodeDecodeError out of the worker's housekeeping."""
    from choreo.bus.trim import Retention, trim_streams
    real_bus.raw.xadd(bus_keys.stream("OrderCreated"), {b"junk": b"\xff\xfe"})
    for service in SERVICES.values():
        real_bus.ensure_groups(service.name, service.streams)
    reports = trim_streams(real_bus, SERVICES.values(), Retention(keep_entries=1))
    assert {r.stream for r in reports} >= {bus_keys.stream("OrderCreated")}


def test_a_failing_housekeeping_step_is_logged_and_the_loop_goes_on(fake_bus, caplog):
    from choreo.config.settings import Settings
    from choreo.workers.runtime import Worker

    def broken(*_):
        raise RuntimeError("XINFO exploded on some key")

    fake_bus.forget_idle_consumers = broken
    worker = Worker(SERVICES["inventory"], fake_bus, Settings(housekeeping_every_s=0.001), "c-1")
    worker.start()
    for _ in range(3):
        worker.poll(1)
        time.sleep(0.002)
    failures = [l for l in log_lines(caplog, logging.WARNING) if "forgetting idle consumers on events:" in l and "failed, will retry" in l]
    assert len(failures) >= 2 and "XINFO exploded on some key" in failures[0]


def test_timers_refuse_a_job_that_is_not_a_declared_timer(procs, redis_server, tmp_path):
    r = redis_server.client()
    pwned = tmp_path / "pwned.txt"
    foreign = Queue(QUEUE, connection=redis_server.client(decode=False), serializer=JSONSerializer)
    # Callbacks are functions named by the entry too: print would show what rq hands a failure
    # callback (the exception's class) in the timers' log, were it ever called.
    job = foreign.enqueue("os.system", f"id > {pwned}", on_failure=Callback("builtins.print"),
                          on_stopped=Callback("builtins.print"))
    timers = procs.start("timers", name="timers")
    wait_for(lambda: Job.fetch(job.id, connection=foreign.connection,
                               serializer=JSONSerializer).get_status() == JobStatus.FAILED,
             timeout=20, what="the foreign job failed")
    time.sleep(0.3)
    assert not pwned.exists()
    failed = Job.fetch(job.id, connection=foreign.connection, serializer=JSONSerializer)
    assert "not a timer" in (failed.latest_result().exc_string or "")
    assert timers.poll() is None
    assert not r.exists("events:DeadlinePassed")
    assert "RefusedJob'>" not in open(timers.log_path).read()      # print(exc_type) never ran


def test_an_event_claiming_a_producer_that_does_not_publish_it_is_dead_lettered(procs, redis_server):
    """Without ACLs, a writer can still forge the producer field (docs/security.md); what it
    cannot do is have a forged claim believed: the real order completes."""
    r = redis_server.client()
    start_workers(procs)
    placed = procs.run("place-order", "--product", "101", "--quantity", "1")
    order_id = placed.stdout.strip()
    forged = Envelope.new("InventoryRejected", order_id, "mallory", {"reason": "forged"}).fields()
    r.xadd(bus_keys.stream("InventoryRejected"), forged)
    wait_for(lambda: _dead_letters(r, "order"), what="the forgery dead-lettered")
    assert "producer 'mallory' does not publish InventoryRejected" in _dead_letters(r, "order")[0]["error"]
    wait_for(lambda: r.hget(keys.order(order_id), "status") == "COMPLETED", what="the real order completes")
    _all_alive(procs)


def test_an_entry_addressed_to_a_group_that_does_not_consume_its_stream_is_dead_lettered(procs, redis_server):
    """`for` marks a replayed copy for the one group it is for; every other group acknowledges it
    and does nothing. Naming a group that does not read the stream, it would be acknowledged by
    every group and lost: each dead-letters it instead. A copy for a real consumer stays ignored
    by the others (and handled by it)."""
    r = redis_server.client()
    start_workers(procs)
    stream = bus_keys.stream("OrderCreated")        # read by order and inventory
    r.xadd(stream, {"garbage": "1", "for": "nobody"})
    r.xadd(stream, {**_valid_order("for-payment"), "for": "payment"})    # payment reads no OrderCreated
    r.xadd(stream, {**_valid_order("for-inventory"), "for": "inventory"})
    for service in ("order", "inventory"):
        wait_for(lambda: len(_dead_letters(r, service)) == 2, what=f"{service} dead-letters both")
        errors = [letter["error"] for letter in _dead_letters(r, service)]
        assert errors == ["malformed: `for` names 'nobody', which does not consume OrderCreated",
                          "malformed: `for` names 'payment', which does not consume OrderCreated"]
    wait_for(lambda: r.hget(keys.reservation("for-inventory"), "status"), what="inventory handles its copy")
    assert not r.exists(keys.order("for-inventory"))    # the order service ignored it
    wait_for(lambda: r.xpending(stream, "order")["pending"] == 0, what="order acknowledges all three")
    # Dead-lettered, not lost: the event addressed to no reader replays to the group that had it.
    replay = procs.run("dlq", "replay", "inventory", "--all")
    assert replay.returncode == 1 and "malformed" in replay.stderr          # the garbage stays refused
    assert "replayed inventory/" in replay.stdout and "Traceback" not in replay.stderr, replay.stderr
    wait_for(lambda: r.hget(keys.reservation("for-payment"), "status"), what="the replay handled")
    _all_alive(procs)


def test_a_malformed_timer_is_refused_and_the_others_still_fire(procs, redis_server):
    """One job hash rq cannot read (anyone who may arm a timer may write one) used to stop rq's
    scheduler for every timer; now it is refused alone, and a real order's deadline still fires.
    One pushed straight onto the queue makes rq's worker quit: it is started again."""
    r, raw = redis_server.client(), redis_server.client(decode=False)
    procs.worker("order")
    timers = procs.start("timers", name="timers")
    assert procs.run("place-order", "--product", "101", "--quantity", "1", "--deadline", "1").returncode == 0
    evil = Queue(QUEUE, connection=raw, serializer=JSONSerializer)
    for name in ("DeadlinePassed-evil", "DeadlinePassed-evil2"):
        evil.enqueue_at(datetime.now(timezone.utc), "choreo.workers.deadlines.pass_deadline", "1", "c", job_id=name)
    r.hset("rq:job:DeadlinePassed-evil", "timeout", "abc")
    r.hset("rq:job:DeadlinePassed-evil2", "created_at", "garbage")
    wait_for(lambda: r.xlen("events:DeadlinePassed") == 1, timeout=20, what="the real deadline fired")
    log = lambda: open(timers.log_path).read()  # noqa: E731
    wait_for(lambda: "refused scheduled job 'DeadlinePassed-evil2'" in log(), what="the bad ones refused")
    assert "refused scheduled job 'DeadlinePassed-evil'" in log()

    pushed = Job.create("choreo.workers.deadlines.pass_deadline", args=("1", "c"), connection=raw,
                        serializer=JSONSerializer, origin=QUEUE)
    pushed.save()
    r.hset(f"rq:job:{pushed.id}", "timeout", "abc")
    r.rpush(evil.key, pushed.id)                  # onto the queue only once it is malformed
    wait_for(lambda: "starting it again" in log(), what="rq's worker quit and started again")
    later = evil.enqueue("os.system", "true")
    wait_for(lambda: Job.fetch(later.id, connection=raw, serializer=JSONSerializer).get_status()
             == JobStatus.FAILED, what="the next job handled (refused)")
    assert timers.poll() is None


LAST_ID = "18446744073709551615-18446744073709551615"


def test_a_stream_whose_ids_are_used_up_refuses_the_commit_and_loses_nothing(real_bus):
    """An XADD with the largest id there is leaves a stream that takes no more entries. A commit
    publishing there must be refused whole, before its XACK: it was acknowledged with its other
    writes made and its event never published (an order held stock and hung; a dead letter was
    reported written and was not)."""
    from choreo.config.settings import Settings
    from choreo.orders import OrderRequest, place_orders
    from tests.inprocess import drain, start_workers as in_process
    c = real_bus.client
    # One id short of the largest: the batch's first XADD would take it and its second fail.
    c.xadd(bus_keys.stream("InventoryChecked"), {"x": "y"}, id=f"{2 ** 64 - 1}-{2 ** 64 - 2}")
    workers = in_process(real_bus, Settings(max_deliveries=2, retry_base_ms=1, retry_max_ms=1),
                         names=("inventory",))
    place_orders(real_bus, [OrderRequest("1", [{"product_id": 101, "quantity": 3}]),
                            OrderRequest("2", [{"product_id": 101, "quantity": 4}])])
    before = c.hgetall(keys.stock(101))
    created = bus_keys.stream("OrderCreated")
    wait_for(lambda: drain(workers) or len([x for x in _dead_letters(c, "inventory") if x["stream"] == created]) == 2,
             what="dead-lettered")
    letters = [x for x in _dead_letters(c, "inventory") if x["stream"] == created]
    assert all("events:InventoryChecked has used up its entry ids" in x["error"] for x in letters), letters
    assert c.hgetall(keys.stock(101)) == before
    assert not c.exists(keys.reservation("1"), keys.reservation("2"))
    assert c.xlen(bus_keys.stream("InventoryChecked")) == 1
    # The dead-letter stream used up too: nothing can be written for the entry, so it stays
    # pending (not acknowledged, not reported as dead-lettered), and the worker goes on.
    c.xadd(bus_keys.dead_letters("order"), {"x": "y"}, id=LAST_ID)
    order = in_process(real_bus, Settings(max_deliveries=1, retry_base_ms=1, retry_max_ms=1),
                       names=("order",))
    c.xadd(bus_keys.stream("InventoryRejected"), {"garbage": "1"})
    for _ in range(2):      # the worker's loop backs off on this and tries again (Worker.run)
        with pytest.raises(BusError, match="dlq:order has used up its entry ids"):
            drain(order)
        time.sleep(0.05)    # past the entry's retry backoff (1 ms, 2 ms)
    assert c.xpending(bus_keys.stream("InventoryRejected"), "order")["pending"] == 1
    assert c.xlen(bus_keys.dead_letters("order")) == 1


def test_ids_no_clock_made_leave_audit_trim_and_the_views_working(real_bus, redis_url, capsys):
    """Entry ids written by hand: the largest there is (audit and trim failed on it: an exclusive
    range from it is refused), and one centuries ahead (the dashboard, --json and the exporter
    failed formatting its time). Each is shown or counted like any other entry."""
    from choreo.cli import main
    from choreo.ops.exporter import fleet_metrics
    from choreo.ops.snapshot import gather
    c = real_bus.client
    for service in SERVICES.values():
        real_bus.ensure_groups(service.name, service.streams)
    failed = bus_keys.stream("PaymentFailed")
    c.xadd(failed, {"x": "y"}, id=LAST_ID)
    for group in ("order", "inventory"):        # each group has read it: nothing comes after it
        c.xreadgroup(group, f"{group}-1", {failed: ">"})
        c.xack(failed, group, LAST_ID)
    c.xadd(bus_keys.stream("ShippingFailed"), {"x": "y"}, id="300000000000000-0")
    for argv in (["audit"], ["trim", "--dry-run"], ["trim"], ["dashboard", "--once"],
                 ["dashboard", "--json", "--refresh", "0.1"]):
        assert main([*argv, "--redis-url", redis_url]) == 0, (argv, capsys.readouterr())
    out = capsys.readouterr().out
    assert "300000000000000 ms" in out and "Traceback" not in out
    assert list(fleet_metrics(gather(real_bus, redis_url)))      # what the exporter serves


def test_data_a_handler_cannot_copy_and_a_null_deadline_are_not_retried_as_failures(real_bus):
    """Two entries the schema takes: a line carrying a field nested ~1,000 deep (parsed, but
    the handler's copy of it raised RecursionError on every try, retried as a failure) is
    dead-lettered at its first delivery, as input, by every reader, once deeper than 64 levels;
    a `deadline_at_ms` of null (the model's Optional) is no deadline, where the order service
    raised TypeError on every try."""
    from choreo.config.settings import Settings
    from tests.inprocess import drain, start_workers as in_process
    c = real_bus.client
    workers = in_process(real_bus, Settings(max_deliveries=5, retry_base_ms=1, retry_max_ms=1),
                         names=("order", "inventory"))
    nested = Envelope.new("OrderCreated", "7", "order", {"lines": [], "total_cents": 1999}).fields()
    nested["data"] = ('{"lines":[{"note":' + "[" * 62 + "]" * 62 +     # 65 levels in all
                      ',"product_id":101,"quantity":1}],"total_cents":1999}')
    c.xadd(bus_keys.stream("OrderCreated"), nested)
    null = Envelope.new("OrderCreated", "8", "order", {"lines": [{"product_id": 101, "quantity": 1}],
                                                         "total_cents": 1999, "deadline_at_ms": None})
    c.xadd(bus_keys.stream("OrderCreated"), null.fields())
    drain(workers)
    (letter,) = _dead_letters(c, "inventory")
    assert letter["deliveries"] == "1" and "nested deeper than 64 levels" in letter["error"], letter
    assert [x["entry_id"] for x in _dead_letters(c, "order")] == [letter["entry_id"]]
    assert c.hget(keys.reservation("8"), "status") == "RESERVED"
    summary = c.xpending(bus_keys.stream("OrderCreated"), "order")      # confirmed, not failing
    assert summary["pending"] == 0, summary

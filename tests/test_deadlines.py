"""Order deadlines: armed as rq jobs (JSON serializer) by the order service, fired by `choreo
timers`; shipping is the point of no return."""

from __future__ import annotations

import json
import time

import pytest
import redis

from choreo.bus.envelope import Envelope
from choreo.bus.ops import Count, SetFields
from choreo.cli import main
from tests.helpers import record, wait_for
from tests.test_handlers import handle
from choreo.workers import SERVICES, keys
from choreo.workers.deadlines import scheduled_call
from choreo.workers.unit_of_work import Timer
from choreo.bus import keys as bus_keys
from choreo.scheduling.timers import QUEUE, RqTimers


def test_order_confirmation_arms_the_deadline_carried_by_the_event():
    created = Envelope.new("OrderCreated", "7", "order", {"lines": [{"product_id": 101, "quantity": 1}],
                                                           "total_cents": 1999, "deadline_at_ms": 123_000})
    uow = handle(SERVICES["order"], created)
    (timer,) = uow.timers
    assert (timer.job_id, timer.at_ms, timer.event_type, timer.causation_id) == \
        ("DeadlinePassed-7", 123_000, "DeadlinePassed", created.id)
    assert ":" not in timer.job_id                       # rq job ids may not contain ':'


def test_deadline_before_booking_cancels_shipping_with_shipping_failed():
    passed = Envelope.new("DeadlinePassed", "7", "order", {})
    uow = handle(SERVICES["shipping"], passed)
    assert [e.type for e in uow.emitted] == ["ShippingFailed"]
    assert SetFields(keys.shipment("7"), {"status": "CANCELLED", "reason": "deadline passed before shipping"}) in uow.ops


def test_deadline_after_booking_changes_nothing():
    passed = Envelope.new("DeadlinePassed", "7", "order", {})
    assert handle(SERVICES["shipping"], passed, {"shipment:7": {"status": "BOOKED"}}).ops == []


def test_payment_told_of_a_failure_before_charging_never_charges():
    failed = Envelope.new("ShippingFailed", "7", "shipping", {"reason": "deadline passed before shipping"})
    uow = handle(SERVICES["payment"], failed)
    assert (uow.ops[0].key, uow.ops[0].fields["status"]) == (keys.payment("7"), "CANCELLED")
    checked = Envelope.new("InventoryChecked", "7", "inventory",
                           {"lines": [{"product_id": 101, "quantity": 1}], "total_cents": 1999})
    assert handle(SERVICES["payment"], checked, {"payment:7": {"status": "CANCELLED"}}).ops == []


def test_an_order_past_its_deadline_is_cancelled_and_compensated(procs, redis_server):
    r = redis_server.client()
    for s in ("order", "inventory", "shipping"):
        procs.worker(s)                                  # payment is down: the order cannot finish
    procs.start("timers", "--redis-url", procs.url, name="timers", REDIS_URL="redis://127.0.0.1:1/0")
    assert main(["place-order", "--product", "101", "--quantity", "2", "--deadline", "1",
                 "--redis-url", procs.url]) == 0
    wait_for(lambda: r.hget(keys.order("1"), "status") == "CANCELLED", timeout=20, what="cancelled")
    assert r.hget(keys.order("1"), "reason") == "deadline passed before shipping"
    wait_for(lambda: record(r, keys.reservation("1")).get("status") == "RELEASED", what="stock released")
    procs.worker("payment")          # comes back to both events at once: the charge never happens
    wait_for(lambda: record(r, keys.payment("1")).get("status") == "CANCELLED", timeout=20, what="no charge")
    assert not r.hget(keys.payment_totals(), "charged_cents")
    assert record(r, keys.shipment("1")).get("status") == "CANCELLED"
    wait_for(lambda: procs.run("audit", "--strict").returncode == 0, timeout=20, what="audit clean")
    trace = json.loads(procs.run("trace", "1", "--json").stdout)
    assert "OrderService: Deadline passed for order 1" in json.dumps(trace)


def test_a_deadline_redis_refuses_is_retried_not_dropped(procs, redis_server):
    """A DeadlinePassed whose commit Redis would refuse (here its trace key holds a sorted set)
    was returned as REFUSED from the job, which rq counted done: the deadline was gone, the
    order PENDING for good, and nothing said so. The job now fails with the reason, logged, and
    rq retries it: once the key is mended, the deadline fires and the order is cancelled."""
    from pathlib import Path
    r = redis_server.client()
    for s in ("order", "inventory", "shipping"):
        procs.worker(s)                                  # payment is down: the order cannot finish
    timers = procs.start("timers", name="timers")
    r.zadd(bus_keys.trace("1"), {"not a trace": 1})
    assert main(["place-order", "--product", "101", "--quantity", "1", "--deadline", "1",
                 "--redis-url", procs.url]) == 0
    wait_for(lambda: "DeadlinePassed not published" in Path(timers.log_path).read_text(),
             timeout=20, what="the refusal logged")
    assert "holds a zset, not a hash" in Path(timers.log_path).read_text()
    # choreo timers' own line says it first, and what becomes of the job (rq's holds a traceback)
    assert ("DeadlinePassed not published: Redis would refuse it (trace:1 holds a zset, not a hash); "
            "rq tries it again (5 more time(s)), then keeps it failed in rq:failed:choreo-timers: "
            "once mended, `choreo timers --rearm` arms it again") in Path(timers.log_path).read_text()
    assert r.hget(keys.order("1"), "status") == "PENDING"
    r.delete(bus_keys.trace("1"))
    wait_for(lambda: r.hget(keys.order("1"), "status") == "CANCELLED", timeout=30, what="cancelled")


def test_a_deadline_whose_order_moved_meanwhile_reads_it_again(real_bus):
    """A DeadlinePassed whose commit conflicted (the order's record written between the timer's
    read and its commit) was returned as CONFLICT, and the deadline was lost: it reads again."""
    from choreo.workers.deadlines import fire_deadline
    from tests.test_holds import place
    place(real_bus, {"1": [(101, 1)]})
    commit = real_bus.commit

    def moved_once(group, commits):             # the order worker writes the record meanwhile
        real_bus.commit = commit
        real_bus.client.hincrby(keys.order("1"), "_v", 1)
        return commit(group, commits)
    real_bus.commit = moved_once
    assert fire_deadline(real_bus, "1", "cause") == "order 1: DeadlinePassed APPLIED"
    assert real_bus.client.xlen(bus_keys.stream_for("DeadlinePassed", "1")) == 1


def test_deadlines_lost_with_the_timers_redis_are_armed_again_by_rearm(tmp_path):
    """Losing rq's keys (the timers' Redis restarted empty, timers that failed for good) left
    PENDING orders without their deadline, and nothing armed them again. `choreo timers --rearm`
    does, from the orders' records, as the rendered timers user: a deadline already past fires
    once `choreo timers` runs, and the order is cancelled."""
    from choreo.workers import APP
    from tests.conftest import on_rendered_users
    with on_rendered_users("choreo.workers:APP", APP, tmp_path) as (server, procs, _):
        for s in ("order", "inventory", "shipping"):
            procs.worker(s)                          # payment is down: the orders cannot finish
        admin = server.client()
        for deadline in ("1", "3600", "3600", "3600"):
            placed = procs.run("place-order", "--product", "101", "--quantity", "1", "--deadline", deadline)
            assert placed.returncode == 0, placed.stderr
        wait_for(lambda: admin.exists(*(f"rq:job:DeadlinePassed-{i}" for i in "1234")) == 4,
                 what="the deadlines armed")
        admin.delete(*admin.keys("rq:*"))           # rq's keys lost
        admin.hdel(keys.order("3"), "deadline_at_ms")           # as versions before 95bfb9a wrote it
        admin.hset(keys.order("4"), "deadline_at_ms", "\u00b2")  # a digit to str.isdigit, no time
        # Index members no order of the saga's has: an id rq takes no timer for, and a key of
        # another type. Each is named and skipped; the others are armed.
        admin.hset(keys.order("x.y"), mapping={"status": "PENDING", "deadline_at_ms": "1"})
        admin.set(keys.order("s1"), "not a record")
        admin.zadd(keys.orders_index(), {"x.y": 1, "s1": 2})
        time.sleep(1.5)                             # order 1's deadline passes: nothing fires
        rearmed = procs.run("timers", "--rearm")
        assert rearmed.returncode == 0, rearmed.stderr
        assert "re-armed the deadlines of 2 PENDING order(s), 1 of them already past" in rearmed.stdout
        assert "1 PENDING order(s) record no deadline" in rearmed.stdout
        assert ("3 whose record, id, deadline or creation time is unusable, not armed: 'x.y', 's1', '4'"
                in rearmed.stdout)
        assert admin.zscore(f"rq:scheduled:{QUEUE}", "DeadlinePassed-2") == pytest.approx(
            int(admin.hget(keys.order("2"), "deadline_at_ms")) / 1000, abs=1)
        assert admin.zscore(f"rq:scheduled:{QUEUE}", "DeadlinePassed-3") is None
        given = procs.run("timers", "--rearm", "--deadline", "60")
        assert "re-armed the deadlines of 3 PENDING order(s)" in given.stdout, given.stdout + given.stderr
        assert "1 of them at created_at_ms + 60 s" in given.stdout
        assert admin.zscore(f"rq:scheduled:{QUEUE}", "DeadlinePassed-3") == pytest.approx(
            int(admin.hget(keys.order("3"), "created_at_ms")) / 1000 + 60, abs=1)
        alone = procs.run("timers", "--deadline", "60")
        assert alone.returncode == 2 and "--deadline goes with --rearm" in alone.stderr
        procs.start("timers", name="timers")
        wait_for(lambda: admin.hget(keys.order("1"), "status") == "CANCELLED", timeout=20, what="cancelled")
        assert admin.hget(keys.order("2"), "status") == "PENDING"


def test_rearm_says_a_refused_permission_and_counts_a_dotted_id_without_deadline_as_such(
        procs, redis_server):
    """A user that may not HMGET the orders: --rearm counted each order "unusable" and exited 0,
    arming nothing. It now stops on the refusal, one line, exit 1. And an order placed without a
    deadline counts as such whatever its id ('a.b', which could have no timer anyway)."""
    admin = redis_server.client()
    for order_id in ("a.b", "c"):
        placed = procs.run("place-order", "--product", "101", "--quantity", "1", "--order-id", order_id,
                           CHOREO_ORDER_DEADLINE_S="0")
        assert placed.returncode == 0, placed.stderr
    counted = procs.run("timers", "--rearm")
    assert counted.returncode == 0 and "0 PENDING order(s)" in counted.stdout
    assert "2 PENDING order(s) record no deadline" in counted.stdout and "unusable" not in counted.stdout
    admin.execute_command("ACL", "SETUSER", "nohmget", "on", ">pw", "+@all", "-hmget", "~*", "&*")
    try:
        refused = procs.run("timers", "--rearm", REDIS_URL=procs.url.replace("redis://", "redis://nohmget:pw@"))
        assert refused.returncode == 1 and "hmget" in refused.stderr.lower(), refused.stdout + refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        admin.execute_command("ACL", "DELUSER", "nohmget")


def test_rearm_pages_the_index_by_score_so_a_prune_meanwhile_hides_no_order(real_bus):
    """Paged by rank, each expired id the trimmer pruned between two pages shifted a later
    order out of sight: --rearm missed PENDING orders at the index's tail."""
    from choreo.bus import inspect
    c, index = real_bus.client, "orders:index"
    c.zadd(index, {f"old-{i:03}": i for i in range(30)})
    c.zadd(index, {f"same-{i}": 100 for i in range(7)})        # a score shared across pages
    c.zadd(index, {f"new-{i}": 200 + i for i in range(20)})
    seen = []
    for page in inspect.members_by_score(real_bus, index, chunk=5):
        seen += page
        c.zremrangebyscore(index, 0, 29)                       # pruned between the pages
    assert seen[:5] == [f"old-{i:03}" for i in range(5)]
    assert sorted(seen[5:]) == sorted([f"same-{i}" for i in range(7)] + [f"new-{i}" for i in range(20)])
    assert len(seen) == len(set(seen))


def test_a_deadline_a_killed_timers_process_left_in_flight_fires_within_a_minute_not_ten(procs, redis_server):
    """`choreo timers` SIGKILLed between taking a job off rq's queue and starting it leaves the job
    in rq's intermediate list. The upkeep (every MAINTENANCE_S) fails it into its retries once it has been
    there a minute: here the minute is made to have passed, with a timers process already up, so
    only its periodic upkeep, not the one at its start, can find it."""
    from rq.intermediate_queue import IntermediateQueue
    QUEUE_WIP = IntermediateQueue.get_intermediate_queue_key(f"rq:queue:{QUEUE}")
    r = redis_server.client()
    procs.start("timers", name="timers")
    procs.worker("order")                                 # arms the deadline; nobody reserves:
    assert main(["place-order", "--product", "101", "--quantity", "1", "--deadline", "3600",
                 "--redis-url", procs.url]) == 0          # the order stays PENDING
    job = "DeadlinePassed-1"
    wait_for(lambda: r.zscore(f"rq:scheduled:{QUEUE}", job), what="the deadline armed")
    time.sleep(1)                                         # the timers process's first upkeep is done
    # As the killed process left it: off the schedule, in the work-in-progress list, seen there
    # by an upkeep two minutes ago.
    r.zrem(f"rq:scheduled:{QUEUE}", job)
    r.rpush(QUEUE_WIP, job)
    r.set(f"{QUEUE_WIP}:first_seen:{job}", time.time() - 120)
    wait_for(lambda: r.exists(bus_keys.stream("DeadlinePassed")) and r.xlen(bus_keys.stream("DeadlinePassed")),
             timeout=30, what="the deadline fired")       # MAINTENANCE_S (15) and its retry


def test_completion_disarms_the_deadline_and_a_late_one_publishes_nothing(procs, redis_server, real_bus):
    r = redis_server.client()
    for s in ("order", "inventory", "payment", "shipping"):
        procs.worker(s)
    assert main(["place-order", "--product", "101", "--quantity", "1", "--deadline", "60",
                 "--redis-url", procs.url]) == 0
    wait_for(lambda: r.hget(keys.order("1"), "status") == "COMPLETED", what="completed")
    wait_for(lambda: not r.exists("rq:job:DeadlinePassed-1"), what="timer disarmed")
    assert r.zscore("rq:scheduled:choreo-timers", "DeadlinePassed-1") is None
    # A timer that fires anyway (its disarming was lost) finds the order ended and does nothing.
    cause = min((f for f in r.hkeys(keys.order("1")) if " " in f), key=lambda ref: ref.split()[1]).split()
    created_id = r.xrange(cause[0], cause[1], cause[1])[0][1]["id"]
    RqTimers(real_bus).schedule([scheduled_call(Timer("DeadlinePassed-1", int(time.time() * 1000),
                                            "DeadlinePassed", "1", created_id))])
    assert r.exists("rq:job:DeadlinePassed-1")
    # The timers worker is told the server by --redis-url only; its REDIS_URL points nowhere.
    procs.start("timers", "--redis-url", procs.url, name="timers", REDIS_URL="redis://127.0.0.1:1/0")
    wait_for(lambda: not r.exists("rq:job:DeadlinePassed-1"), timeout=20, what="timer ran")
    assert r.xlen("events:DeadlinePassed") == 0
    assert r.hget(keys.order("1"), "status") == "COMPLETED"


def test_shipping_back_after_the_deadline_refuses_to_book_whichever_event_it_reads_first(procs, redis_server):
    """The issue's run: shipping is down, the deadline passes (DeadlinePassed is published), then
    shipping starts and finds PaymentProcessed and DeadlinePassed both waiting. Its streams are
    read PaymentProcessed first; it must still not book: the deadline travels on the event."""
    r = redis_server.client()
    for s in ("order", "inventory", "payment"):
        procs.worker(s)
    procs.start("timers", name="timers")
    # The 2 s deadline runs from the order's placing: on a busy machine the workers' start alone
    # could take that long, so the order waits until each is reading.
    wait_for(lambda: reading(r, {"order": "events:OrderCreated", "inventory": "events:OrderCreated",
                                 "payment": "events:InventoryChecked"}), what="the workers reading")
    assert main(["place-order", "--product", "101", "--quantity", "1", "--deadline", "2",
                 "--redis-url", procs.url]) == 0
    wait_for(lambda: record(r, keys.payment("1")).get("status") == "CHARGED", what="charged before the deadline")
    wait_for(lambda: r.xlen("events:DeadlinePassed") == 1, timeout=20, what="the deadline fired")
    procs.worker("shipping")
    wait_for(lambda: r.hget(keys.order("1"), "status") == "CANCELLED", timeout=20, what="cancelled")
    assert r.hget(keys.order("1"), "reason") == "deadline passed before shipping"
    wait_for(lambda: record(r, keys.payment("1")).get("status") == "REFUNDED", what="refunded")
    wait_for(lambda: record(r, keys.reservation("1")).get("status") == "RELEASED", what="stock released")
    assert record(r, keys.shipment("1")).get("status") == "CANCELLED"
    assert r.xlen("events:ShippingArranged") == 0
    wait_for(lambda: procs.run("audit", "--strict").returncode == 0, timeout=20, what="audit clean")
    assert r.hget(keys.order("1"), "status") == "CANCELLED"          # and it stays so


def reading(r, streams: dict[str, str]) -> bool:
    """Each service has its group on its stream and a client blocked in XREADGROUP."""
    try:
        groups = {g["name"] for s in set(streams.values()) for g in r.xinfo_groups(s)}
    except redis.ResponseError:     # a stream not made yet
        return False
    readers = sum(c.get("cmd") == "xreadgroup" for c in r.client_list())
    return set(streams) <= groups and readers >= len(streams)


def test_a_timer_is_never_armed_to_fire_before_its_time(real_bus, redis_server):
    """rq keeps whole seconds; a deadline at x.4 s must be armed at x+1 s, not x s (early)."""
    RqTimers(real_bus).schedule([scheduled_call(Timer("DeadlinePassed-9", 1_800_000_000_400, "DeadlinePassed", "9", "c"))])
    assert redis_server.client().zscore("rq:scheduled:choreo-timers", "DeadlinePassed-9") == 1_800_000_001


def test_payment_refuses_to_charge_an_order_past_its_deadline():
    checked = Envelope.new("InventoryChecked", "7", "inventory",
                           {"lines": [{"product_id": 101, "quantity": 1}], "total_cents": 1999,
                            "deadline_at_ms": 1_700_000_000_000})   # handle()'s clock: due now
    uow = handle(SERVICES["payment"], checked)
    assert [(e.type, e.data["reason"]) for e in uow.emitted] == [("PaymentFailed", "deadline passed before payment")]
    assert not any(isinstance(op, Count) for op in uow.ops)            # nothing charged


def test_the_timers_rq_worker_stops_within_a_second_whenever_it_is_told(redis_server):
    """rq's command channel (a pubsub thread) caught between an unsubscribe and its next poll held
    a stop for that poll's length: 60 s in rq, so honcho's SIGKILL came first."""
    import threading as th
    from rq import Queue
    from rq.serializers import JSONSerializer
    from choreo.scheduling.timers import QUEUE, TimersWorker
    raw = redis_server.client(decode=False)
    worker = TimersWorker([Queue(QUEUE, connection=raw, serializer=JSONSerializer)], connection=raw,
                          serializer=JSONSerializer, name="stop-test")
    worker.subscribe()
    worker.pubsub.unsubscribe()                 # the thread reads the reply and polls again ...
    time.sleep(0.3)
    stopping = th.Thread(target=worker.unsubscribe, daemon=True)   # ... where rq's stop finds it
    started = time.monotonic()
    stopping.start()
    stopping.join(5)
    assert not stopping.is_alive() and time.monotonic() - started < 2.5


def test_disarming_leaves_a_timer_the_sweep_already_took_to_rq(real_bus, redis_server):
    """The order service disarms a deadline once the order ends, which may be while its job runs
    (the job's own DeadlinePassed ended it). A timer still scheduled goes, registry entry and
    hash; one the sweep already moved to the queue (or rq is running) keeps its hash: deleted
    under a running job, rq failed the job it had just run, with a traceback in the timers' log.
    Left, it runs and finds nothing to do."""
    from rq import Queue
    from rq.serializers import JSONSerializer
    from choreo.scheduling.timers import QUEUE, sweep_due
    from choreo.workers.deadlines import JOB
    r = redis_server.client()
    timers = RqTimers(real_bus)
    timers.schedule([scheduled_call(Timer("DeadlinePassed-1", 1_000_000_000_000, "DeadlinePassed", "1", "c")),
                     scheduled_call(Timer("DeadlinePassed-2", 4_000_000_000_000, "DeadlinePassed", "2", "c"))])
    queue = Queue(QUEUE, connection=real_bus.raw, serializer=JSONSerializer)
    assert sweep_due(queue, [JOB], now=2_000_000_000) == 1      # the first is due: queued
    timers.unschedule(["DeadlinePassed-1", "DeadlinePassed-2"])
    assert r.exists("rq:job:DeadlinePassed-1") and queue.job_ids == ["DeadlinePassed-1"]
    assert not r.exists("rq:job:DeadlinePassed-2") and r.zcard("rq:scheduled:choreo-timers") == 0


def test_a_sweep_killed_halfway_moves_nothing_and_the_next_one_moves_the_timer(real_bus, redis_server,
                                                                              monkeypatch):
    """The sweep took a due timer out of the registry (ZREM) and then enqueued it, two steps: a
    timers process SIGKILLed between them lost the timer for good (its order never ended). Now
    both are one transaction: a death anywhere before it leaves the timer due."""
    from rq import Queue
    from rq.serializers import JSONSerializer
    import choreo.scheduling.timers as timers_module
    from choreo.scheduling.timers import QUEUE, sweep_due
    from choreo.workers.deadlines import JOB
    r = redis_server.client()
    RqTimers(real_bus).schedule([scheduled_call(Timer("DeadlinePassed-1", 1_000_000_000_000,
                                                      "DeadlinePassed", "1", "c"))])
    queue = Queue(QUEUE, connection=real_bus.raw, serializer=JSONSerializer)
    checked = timers_module.checked_timer

    def dies(*args, **kwargs):
        checked(*args, **kwargs)            # the job read, as the sweep does before its move
        raise SystemExit("SIGKILL")         # nothing the sweep catches: the process is gone
    monkeypatch.setattr(timers_module, "checked_timer", dies)
    with pytest.raises(SystemExit):
        sweep_due(queue, [JOB], now=2_000_000_000)
    assert r.zrange("rq:scheduled:choreo-timers", 0, -1) == ["DeadlinePassed-1"] and queue.job_ids == []
    monkeypatch.setattr(timers_module, "checked_timer", checked)
    assert sweep_due(queue, [JOB], now=2_000_000_000) == 1
    assert r.zcard("rq:scheduled:choreo-timers") == 0 and queue.job_ids == ["DeadlinePassed-1"]
    assert sweep_due(queue, [JOB], now=2_000_000_000) == 0 and queue.job_ids == ["DeadlinePassed-1"]


def test_a_sweep_while_redis_refuses_writes_leaves_the_timer_due(real_bus, redis_server):
    """Out of memory (noeviction), Redis refused the sweep's move; the sweep took that for a
    hostile job and refused it: its hash and registry entry deleted (Redis still takes deletes),
    the order's deadline lost for good. Now the timer stays due and the next sweep moves it."""
    from rq import Queue
    from rq.serializers import JSONSerializer
    from choreo.scheduling.timers import QUEUE, sweep_due
    from choreo.workers.deadlines import JOB
    r = redis_server.client()
    RqTimers(real_bus).schedule([scheduled_call(Timer("DeadlinePassed-1", 1_000_000_000_000,
                                                      "DeadlinePassed", "1", "c"))])
    queue = Queue(QUEUE, connection=real_bus.raw, serializer=JSONSerializer)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            sweep_due(queue, [JOB], now=2_000_000_000)
    finally:
        r.config_set("maxmemory", "0")
    r.config_set("min-replicas-to-write", "1")          # NOREPLICAS: a plain ResponseError
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="NOREPLICAS"):
            sweep_due(queue, [JOB], now=2_000_000_000)
    finally:
        r.config_set("min-replicas-to-write", "0")
    assert r.zrange("rq:scheduled:choreo-timers", 0, -1) == ["DeadlinePassed-1"]
    assert r.exists("rq:job:DeadlinePassed-1")
    assert sweep_due(queue, [JOB], now=2_000_000_000) == 1 and queue.job_ids == ["DeadlinePassed-1"]


def test_a_scheduled_timer_whose_job_ran_meanwhile_is_dropped_quietly(real_bus, redis_server, caplog):
    """A timer re-armed (`--rearm`) while its job was queued or running: rq deleted the job when
    it was done, and the sweep logged the leftover registry entry as a refused hostile job, at
    ERROR, once for every such timer. It is dropped, said at INFO."""
    import logging
    from rq import Queue
    from rq.serializers import JSONSerializer
    from choreo.scheduling.timers import QUEUE, sweep_due
    from choreo.workers.deadlines import JOB
    caplog.set_level(logging.INFO, logger="choreo.timers")
    r = redis_server.client()
    r.zadd("rq:scheduled:choreo-timers", {"DeadlinePassed-9": 1})
    queue = Queue(QUEUE, connection=real_bus.raw, serializer=JSONSerializer)
    assert sweep_due(queue, [JOB], now=2_000_000_000) == 0
    assert r.zcard("rq:scheduled:choreo-timers") == 0
    said = [(rec.levelname, rec.getMessage()) for rec in caplog.records if rec.name == "choreo.timers"]
    assert said == [("INFO", "timers: scheduled timer 'DeadlinePassed-9' has no job any more (it ran "
                             "meanwhile): dropped")]


def test_the_rq_worker_failing_is_started_again_not_the_end_of_choreo_timers(monkeypatch, caplog):
    """rq's worker raised out of work() (its own upkeep meeting a Redis that refused writes) and
    the exception ended `choreo timers`, exit 1: under honcho, the whole fleet. It is logged
    and the worker started again, as when it quits."""
    import choreo.scheduling.timers as timers_module
    lives = []

    def work(self, **kwargs):
        lives.append(self.name)
        if len(lives) == 1:
            raise redis.exceptions.OutOfMemoryError("OOM command not allowed")
        self._shutdown_requested_date = object()        # then SIGTERM
    monkeypatch.setattr(timers_module.TimersWorker, "work", work)
    monkeypatch.setattr(timers_module.time, "sleep", lambda s: None)
    import fakeredis
    from rq import Queue
    connection = fakeredis.FakeRedis()
    timers_module._work(Queue(QUEUE, connection=connection), connection, "t", None, "INFO")
    assert lives == ["t-1", "t-2"]
    assert any("the rq worker failed (OutOfMemoryError" in r.getMessage() for r in caplog.records)


def test_a_timer_re_armed_for_later_is_not_moved_by_a_sweep_that_listed_it_due(real_bus, redis_server):
    """The sweep lists the due ids, then moves each: one re-armed for later in between (the same
    job id, a new time) stays scheduled for its new time."""
    from rq import Queue
    from rq.serializers import JSONSerializer
    from choreo.scheduling import timers as timers_module
    from choreo.scheduling.timers import QUEUE, ScheduledJobRegistry, sweep_due
    from choreo.workers.deadlines import JOB
    r = redis_server.client()
    timers = RqTimers(real_bus)
    timers.schedule([scheduled_call(Timer("DeadlinePassed-1", 1_000_000_000_000, "DeadlinePassed", "1", "c"))])
    queue = Queue(QUEUE, connection=real_bus.raw, serializer=JSONSerializer)
    listed = ScheduledJobRegistry.get_jobs_to_schedule

    def re_armed_meanwhile(self, *args, **kwargs):
        due = listed(self, *args, **kwargs)
        timers.schedule([scheduled_call(Timer("DeadlinePassed-1", 3_000_000_000_000, "DeadlinePassed", "1", "c"))])
        return due
    with pytest.MonkeyPatch.context() as m:
        m.setattr(timers_module.ScheduledJobRegistry, "get_jobs_to_schedule", re_armed_meanwhile)
        assert sweep_due(queue, [JOB], now=2_000_000_000) == 0
    assert r.zscore("rq:scheduled:choreo-timers", "DeadlinePassed-1") == 3_000_000_000 and queue.job_ids == []

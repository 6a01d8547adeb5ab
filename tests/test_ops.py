"""What production tooling reads: log lines (plain and JSON, by level), heartbeats, `choreo health`
and `choreo --version`, against real worker processes on a real redis-server."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

from choreo.bus import keys as bus_keys
from choreo.bus.envelope import Envelope
from choreo.cli import main
from choreo.ops.dashboard import gather
from tests.helpers import wait_for

HOST = socket.gethostname()
PAYMENT = f"payment-{HOST}-1"
CHECKED = bus_keys.stream("InventoryChecked")
FAST = {"CHOREO_HEARTBEAT_EVERY_S": 0.2}        # TTL 0.6 s: a frozen worker is gone that soon


def lines(proc) -> list[str]:
    return open(proc.log_path).read().splitlines()


def records(proc) -> list[dict]:
    return [json.loads(line) for line in lines(proc)]       # every line one object, or this fails


def checked_event(order_id: str, total_cents) -> dict:
    return Envelope.new("InventoryChecked", order_id, "inventory",
                        {"total_cents": total_cents, "lines": [{"product_id": 101, "quantity": 1}]}).fields()


def stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(10)


def test_version_exits_0_naming_the_package_version():
    from importlib.metadata import version
    done = subprocess.run([sys.executable, "-m", "choreo", "--version"], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, f"choreo {version('choreo')}")


def test_json_logs_every_line_an_object_start_to_stop(procs, redis_server):
    r = redis_server.client()
    worker = procs.worker("payment", **FAST, CHOREO_LOG_FORMAT="json")
    wait_for(lambda: r.exists(bus_keys.heartbeat("payment", PAYMENT)), what="worker up")
    r.xadd(CHECKED, checked_event("1", 1999))
    wait_for(lambda: any("Processing payment for order 1" in l for l in lines(worker)), what="handled")
    assert stop(worker) == 0
    found = records(worker)
    assert len(found) >= 3
    for record in found:
        assert {"time", "level", "service", "consumer", "msg"} <= set(record)
        assert (record["service"], record["consumer"]) == ("payment", PAYMENT)
        assert record["time"].endswith("Z") and len(record["time"]) == len("2026-01-01T00:00:00.000Z")
    assert found[0]["msg"].startswith(f"PaymentService: {PAYMENT} on ") and found[0]["level"] == "INFO"
    assert found[-1]["msg"] == f"PaymentService: {PAYMENT} stopped"
    handled = next(x for x in found if x["msg"] == "PaymentService: Processing payment for order 1")
    assert handled["level"] == "INFO" and handled["order_id"] == "1" and handled["stream"] == CHECKED
    assert {"event_id", "entry_id", "deliveries", "ms"} <= set(handled)


def test_log_level_warning_drops_event_lines_and_keeps_dead_letters(procs, redis_server):
    r = redis_server.client()
    worker = procs.start("worker", "payment", "--log-level", "warning", name="payment.1",
                         CHOREO_SLOT=1, **FAST)
    wait_for(lambda: r.exists(bus_keys.heartbeat("payment", PAYMENT)), what="worker up")
    r.xadd(CHECKED, checked_event("1", 1999))
    bad = r.xadd(CHECKED, {**checked_event("2", 1999), "v": "9"})  # malformed: dead-lettered
    wait_for(lambda: r.xlen(bus_keys.dead_letters("payment")) == 1 and r.exists("payment:1"),
             what="one handled, one dead-lettered")
    assert stop(worker) == 0
    out = lines(worker)
    assert any("dead-lettered" in l and "unknown schema version" in l and f"entry_id={bad}" in l for l in out), out
    assert not any("Processing payment" in l or " on redis://" in l for l in out), out


def test_plain_per_event_line_is_the_tutorials_words_then_context(procs, redis_server):
    r = redis_server.client()
    worker = procs.worker("payment", **FAST)
    wait_for(lambda: r.exists(bus_keys.heartbeat("payment", PAYMENT)), what="worker up")
    entry = r.xadd(CHECKED, checked_event("1", 1999))
    wait_for(lambda: any("Processing payment" in l for l in lines(worker)), what="handled")
    line = next(l for l in lines(worker) if "Processing payment" in l)
    assert line.startswith(f"PaymentService: Processing payment for order 1  event_id=")
    assert f" order_id=1 stream={CHECKED} entry_id={entry} deliveries=1 ms=" in line


def health(procs, *args: str) -> subprocess.CompletedProcess:
    return procs.run("health", "payment", *args, timeout=30)


def test_heartbeat_frozen_worker_expires_and_comes_back_and_health_says_so(procs, redis_server, redis_url):
    from choreo.bus.connect import open_bus
    r = redis_server.client()
    key = bus_keys.heartbeat("payment", PAYMENT)
    assert health(procs).returncode == 1 and "no live heartbeat" in health(procs).stdout
    worker = procs.worker("payment", **FAST)
    wait_for(lambda: r.hget(key, "last_read_ms"), what="a heartbeat after a first read")
    beat = r.hgetall(key)
    assert (beat["service"], beat["consumer"], beat["host"], beat["pid"]) == ("payment", PAYMENT, HOST, str(worker.pid))
    assert 0 < r.pttl(key) <= 600
    time.sleep(1.5)                     # a quiet worker (nothing to read) stays live: the old bug
    ok = health(procs, "--max-silence", "2")
    assert ok.returncode == 0 and ok.stdout.startswith("payment: healthy:"), ok.stdout + ok.stderr
    with open_bus(redis_url) as bus:
        assert {g.state for g in gather(bus, redis_url).groups if g.group == "payment"} == {"OK"}
        worker.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: not r.exists(key), timeout=3, what="the frozen worker's heartbeat expired")
            s = gather(bus, redis_url)
            assert {g.state for g in s.groups if g.group == "payment"} == {"NO CONSUMERS"}
            assert all(c.stale for c in s.consumers if c.group == "payment")
            down = health(procs)
            assert down.returncode == 1 and "no live heartbeat" in down.stdout
            assert len(down.stdout.splitlines()) == 1
        finally:
            worker.send_signal(signal.SIGCONT)
        wait_for(lambda: r.exists(key), timeout=3, what="the heartbeat back")
        wait_for(lambda: health(procs).returncode == 0, timeout=5, what="healthy again")
    assert stop(worker) == 0
    assert not r.exists(key)                # a clean stop deletes it at once


def test_health_fails_on_an_old_pending_entry_and_json_parses(procs, redis_server):
    r = redis_server.client()
    # An entry read by a consumer that died holding it: pending, and older than the threshold
    # (the live worker claims it only after CHOREO_CLAIM_IDLE_MS, 15 s).
    r.xgroup_create(CHECKED, "payment", id="0", mkstream=True)
    r.xadd(CHECKED, checked_event("1", 1999), id=f"{int(time.time() * 1000) - 120_000}-0")
    r.xreadgroup("payment", "payment-dead-1", {CHECKED: ">"})
    worker = procs.worker("payment", **FAST)
    wait_for(lambda: r.hget(bus_keys.heartbeat("payment", PAYMENT), "last_read_ms"), what="a first read")
    answer = health(procs, "--max-pending-age", "60", "--json")
    assert answer.returncode == 1
    verdict = json.loads(answer.stdout)
    assert verdict["healthy"] is False and verdict["oldest_pending_stream"] == CHECKED
    assert 119 < verdict["oldest_pending_age_s"] < 200 and "oldest pending entry" in verdict["reason"]
    assert [c["consumer"] for c in verdict["consumers"]] == [PAYMENT]
    line = health(procs, "--max-pending-age", "60")
    assert line.returncode == 1 and line.stdout.startswith("payment: unhealthy: oldest pending entry on ")
    assert health(procs, "--max-pending-age", "600").returncode == 0
    stop(worker)


def test_health_bad_arguments_one_line_exit_2(capsys):
    for argv in (["health", "nobody"], ["health", "payment", "--max-silence", "nan"],
                 ["health", "payment", "--max-pending-age", "-1"]):
        assert main(argv) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_health_unreachable_redis_one_line_exit_1(capsys):
    from tests.redis_server import free_port
    assert main(["health", "payment", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("choreo: cannot reach Redis at")


def test_health_json_unreachable_redis_is_a_verdict_on_stdout_exit_1(capsys):
    from tests.redis_server import free_port
    assert main(["health", "payment", "--json", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"]) == 1
    out, err = capsys.readouterr()
    verdict = json.loads(out)
    assert (verdict["service"], verdict["healthy"]) == ("payment", False)
    assert verdict["reason"].startswith("cannot reach Redis at") and verdict["consumers"] == []
    assert len(err.strip().splitlines()) == 1 and err.startswith("choreo: cannot reach Redis at")


def test_a_heartbeat_redis_refuses_is_said_once_per_reason_and_beats_again_once_mended(real_bus, caplog):
    """Only the heartbeat thread writes its key: a refusal there (a key of the wrong type) is not
    met by the worker's loop, so the thread says so itself, once, not every beat."""
    import threading
    from choreo.bus.heartbeat import Heartbeat
    key = bus_keys.heartbeat("order", "order-odd-1")
    c = real_bus.client
    c.set(key, "planted")
    beat, stop = Heartbeat(real_bus, "order", "order-odd-1", every_s=0.05), threading.Event()
    thread = beat.start(stop)
    try:
        wait_for(lambda: len([r for r in caplog.records if "heartbeat" in r.getMessage()]) >= 1,
                 what="the refusal said")
        time.sleep(0.3)                             # several more beats, refused alike
        c.delete(key)
        wait_for(lambda: c.type(key) == "hash", what="beating again")
        c.delete(key)
        c.set(key, "planted again")
        wait_for(lambda: len([r for r in caplog.records if "heartbeat" in r.getMessage()]) >= 2,
                 what="said again after beating in between")
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(5)
    said = [r for r in caplog.records if "heartbeat" in r.getMessage()]
    assert len(said) == 2 and all(r.levelname == "WARNING" and "WRONGTYPE" in r.getMessage()
                                  and "order/order-odd-1 refused" in r.getMessage() for r in said)


def test_a_heartbeat_key_of_another_type_reads_as_no_heartbeat_not_a_failed_view(real_bus, redis_url, capsys):
    """Written by hand: health, the dashboard and the exporter's gathering read it as that
    consumer having no heartbeat, and every other figure as before (the exporter said Redis was
    down, the dashboard and health exited 1 with a bare WRONGTYPE)."""
    from choreo.bus import inspect
    from choreo.bus.heartbeat import Heartbeat
    for name in ("order-ok-1", "order-odd-1"):
        beat = Heartbeat(real_bus, "order", name, every_s=5)
        beat.read_done()                                  # a consumer that has read: live
        beat.beat()
    real_bus.client.delete(bus_keys.heartbeat("order", "order-odd-1"))
    real_bus.client.set(bus_keys.heartbeat("order", "order-odd-1"), "planted")
    assert [h.consumer for h in inspect.heartbeats(real_bus, "order")] == ["order-ok-1"]
    real_bus.client.set(bus_keys.heartbeats("payment"), "planted too")
    assert inspect.heartbeats(real_bus, "payment") == []
    assert gather(real_bus, redis_url).connected
    assert main(["dashboard", "--json", "--refresh", "0.1", "--redis-url", redis_url]) == 0
    assert main(["health", "order", "--redis-url", redis_url]) == 0
    capsys.readouterr()
    # A user who may not read them is told so, not shown every worker as gone.
    real_bus.client.execute_command("ACL", "SETUSER", "blind", "reset", "on", ">pw", "+@all", "~*", "-zrange")
    try:
        assert main(["health", "order", "--redis-url", redis_url.replace("redis://", "redis://blind:pw@")]) == 1
        err = capsys.readouterr().err
        assert "no permissions to run the 'zrange' command" in err and "no live heartbeat" not in err, err
    finally:
        real_bus.client.execute_command("ACL", "DELUSER", "blind")


def test_timers_keep_a_heartbeat(procs, redis_server):
    r = redis_server.client()
    timers = procs.start("timers", **FAST)
    wait_for(lambda: r.zcard(bus_keys.heartbeats("timers")) == 1, what="timers heartbeat")
    (name,) = r.zrange(bus_keys.heartbeats("timers"), 0, -1)
    assert name == f"timers-{HOST}-{timers.pid}"
    wait_for(lambda: procs.run("health", "timers", timeout=30).returncode == 0, timeout=5, what="healthy")
    assert stop(timers) == 0
    assert not r.exists(bus_keys.heartbeat("timers", name))


# -- every line after the arguments are parsed goes through logging -------------------------------

def test_json_worker_with_metrics_says_where_in_json_and_warning_drops_it(procs, redis_server):
    from choreo.measure.redis_server import free_port
    r = redis_server.client()
    port = free_port()
    worker = procs.start("worker", "payment", "--metrics-port", str(port), "--log-format", "json",
                         name="payment.1", CHOREO_SLOT=1, **FAST)
    wait_for(lambda: r.exists(bus_keys.heartbeat("payment", PAYMENT)), what="worker up")
    assert stop(worker) == 0
    said = [x for x in records(worker) if "/metrics" in x["msg"]]
    assert [(x["level"], x["logger"], x["consumer"]) for x in said] == [("INFO", "choreo.worker", PAYMENT)]
    assert said[0]["msg"] == f"PaymentService: metrics on http://0.0.0.0:{port}/metrics"
    quiet = procs.start("worker", "payment", "--metrics-port", str(free_port()), "--log-level",
                        "WARNING", name="payment.quiet", CHOREO_SLOT=1, **FAST)
    wait_for(lambda: r.exists(bus_keys.heartbeat("payment", PAYMENT)), what="worker up")
    assert stop(quiet) == 0
    assert lines(quiet) == []


def test_json_exporter_start_and_unreadable_redis_are_json_lines(procs):
    from choreo.measure.redis_server import free_port
    from tests.test_metrics import _try_scrape
    port = free_port()
    exporter = procs.start("exporter", "--port", str(port), "--log-format", "json", "--redis-url",
                           f"redis://127.0.0.1:{free_port()}/0", name="exporter")
    wait_for(lambda: _try_scrape(port), timeout=20, what="the exporter's /metrics")
    assert stop(exporter) == 0
    found = records(exporter)
    assert found[0]["level"] == "INFO" and found[0]["service"] == "exporter"
    assert found[0]["msg"].startswith("exporter: fleet metrics of redis://127.0.0.1:")
    assert any(x["level"] == "WARNING" and x["msg"].startswith("exporter: cannot read Redis: ")
               for x in found[1:]), found


def test_json_startup_errors_are_one_json_line_with_their_exit_code(procs):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = procs.run("worker", "inventory", "--metrics-port", str(port), "--log-format", "json",
                           timeout=20)
    bad_setting = procs.run("worker", "payment", "--log-format", "json", CHOREO_SEEN_TTL_S="-5")
    bad_from_env = procs.run("timers", CHOREO_SEEN_TTL_S="-5", CHOREO_LOG_FORMAT="json")
    for done, code, msg in ((in_use, 1, f"choreo: cannot serve metrics on 0.0.0.0:{port}: Address already in use"),
                            (bad_setting, 2, "choreo: CHOREO_SEEN_TTL_S must be "),
                            (bad_from_env, 2, "choreo: CHOREO_SEEN_TTL_S must be ")):
        assert done.returncode == code and done.stdout == "", done
        (line,) = done.stderr.splitlines()
        record = json.loads(line)
        assert record["level"] == "ERROR" and record["msg"].startswith(msg), record


def test_json_timers_lines_all_carry_the_consumer_rqs_and_refusals_included(procs, redis_server):
    from datetime import datetime, timezone
    from rq import Queue
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer
    from choreo.scheduling.timers import QUEUE
    r, raw = redis_server.client(), redis_server.client(decode=False)
    timers = procs.start("timers", CHOREO_LOG_FORMAT="json", **FAST)
    name = f"timers-{HOST}-{timers.pid}"
    queue = Queue(QUEUE, connection=raw, serializer=JSONSerializer)
    # rq's own error line (a job that is not a timer) and the sweeper's (a malformed timer).
    foreign = queue.enqueue("os.system", "true")
    queue.enqueue_at(datetime.now(timezone.utc), "choreo.workers.deadlines.pass_deadline", "1", "c",
                     job_id="DeadlinePassed-evil")
    r.hset("rq:job:DeadlinePassed-evil", "created_at", "garbage")
    wait_for(lambda: Job.fetch(foreign.id, connection=raw, serializer=JSONSerializer).get_status()
             == JobStatus.FAILED, timeout=20, what="the foreign job failed")
    wait_for(lambda: "refused scheduled job" in open(timers.log_path).read(), what="the bad timer refused")
    assert stop(timers) == 0
    found = records(timers)
    assert {"rq.worker", "choreo.timers"} <= {x["logger"] for x in found}
    assert [x for x in found if (x["service"], x["consumer"]) != ("timers", name)] == []


def test_health_fails_on_an_old_entry_no_consumer_reads_a_partition_nobody_serves(procs, redis_server):
    """CHOREO_PARTITIONS=2 and a payment worker that serves partition 0 only: an InventoryChecked
    waiting on partition 1 two minutes is nobody's; health says so, though the worker is live
    and nothing is pending."""
    r = redis_server.client()
    unserved = "events:{p1}:InventoryChecked"
    r.xgroup_create(unserved, "payment", id="0", mkstream=True)
    r.xadd(unserved, {"type": "InventoryChecked"}, id=f"{int(time.time() * 1000) - 120_000}-0")
    worker = procs.start("worker", "payment", "--partitions", "0", name="payment.1", CHOREO_SLOT=1,
                         CHOREO_PARTITIONS=2, **FAST)
    wait_for(lambda: r.hget("heartbeat:{payment}:" + PAYMENT, "last_read_ms"), what="a first read")
    answer = procs.run("health", "payment", "--max-pending-age", "60", timeout=30, CHOREO_PARTITIONS=2)
    assert answer.returncode == 1, answer.stdout
    assert answer.stdout.startswith(f"payment: unhealthy: oldest unread entry on {unserved} is 1")
    assert "is every partition served?" in answer.stdout
    assert procs.run("health", "payment", "--max-pending-age", "600", timeout=30,
                     CHOREO_PARTITIONS=2).returncode == 0
    stop(worker)


def test_a_key_of_another_type_is_named_in_the_one_line_a_command_prints(real_bus, redis_url, capsys):
    """Redis's WRONGTYPE names no key, and redis-py names the command only in a pipeline: a key
    written by hand stopped the dashboard, audit, trace and place-order with a line that did not
    say which key to look at."""
    c = real_bus.client
    assert main(["place-order", "--product", "101", "--quantity", "1", "--redis-url", redis_url]) == 0
    cases = [("orders:index", ["dashboard", "--once"], "ZREVRANGE orders:index"),
             ("orders:seq", ["place-order", "--product", "101", "--quantity", "1"], "INCRBY orders:seq"),
             ("order:1", ["trace", "1"], "order:1"),
             ("orders:by_status", ["audit"], "HGETALL orders:by_status")]
    for key, argv, said in cases:
        kept = c.dump(key)
        c.delete(key)
        c.set(key, "planted") if key != "orders:seq" else c.hset(key, "a", "1")
        try:
            capsys.readouterr()
            assert main([*argv, "--redis-url", redis_url]) == 1, argv
            (line,) = capsys.readouterr().err.strip().splitlines()
            assert said in line and "WRONGTYPE" in line, (argv, line)
        finally:
            c.delete(key)
            c.restore(key, 0, kept)

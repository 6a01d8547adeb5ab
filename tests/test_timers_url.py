"""CHOREO_TIMERS_URL: rq's queue on a plain Redis of its own (the streams' server may be a Redis
Cluster, which rq cannot use), while the timers still publish into REDIS_URL's server. Both
servers are real: the shared one (redis_server) and a second one (timers_server)."""

from __future__ import annotations

import time

from choreo.bus import keys as bus_keys
from choreo.cli import main
from choreo.config.settings import Settings
from choreo.scheduling.timers import RqTimers
from choreo.workers import keys
from choreo.workers.deadlines import scheduled_call
from choreo.workers.unit_of_work import Timer
from tests.helpers import wait_for

SCHEDULED = "rq:scheduled:choreo-timers"
FAST = {"CHOREO_HEARTBEAT_EVERY_S": 0.2}


def rq_keys(client) -> list[str]:
    return sorted(client.keys("rq:*"))


def test_the_timers_url_is_a_setting_like_the_others():
    assert Settings.from_env({}).timers_url is None
    env = {"CHOREO_TIMERS_URL": "redis://rq:6379/0", "CHOREO_TIMERS_URL_ORDER": "redis://rq-order:6379/0"}
    assert Settings.from_env(env).timers_url == "redis://rq:6379/0"
    assert Settings.from_env(env, service="order").timers_url == "redis://rq-order:6379/0"
    assert Settings.from_env(env, service="timers").timers_url == "redis://rq:6379/0"


def test_timers_are_armed_and_disarmed_on_the_timers_server(real_bus, redis_server, timers_url, timers_server):
    timers = RqTimers(real_bus, timers_url)
    try:
        timers.schedule([scheduled_call(Timer("DeadlinePassed-9", 1_800_000_000_400, "DeadlinePassed", "9", "c"))])
        t = timers_server.client()
        assert t.zscore(SCHEDULED, "DeadlinePassed-9") == 1_800_000_001
        assert t.exists("rq:job:DeadlinePassed-9")
        assert rq_keys(redis_server.client()) == []
        timers.unschedule(["DeadlinePassed-9"])
        assert t.zscore(SCHEDULED, "DeadlinePassed-9") is None and not t.exists("rq:job:DeadlinePassed-9")
    finally:
        timers.close()


def test_a_deadline_armed_on_the_timers_server_fires_into_the_main_one(procs, redis_server, timers_url,
                                                                       timers_server):
    r, t = redis_server.client(), timers_server.client()
    for s in ("order", "inventory", "shipping"):             # payment is down: the order cannot finish
        procs.worker(s, CHOREO_TIMERS_URL=timers_url)
    assert main(["place-order", "--product", "101", "--quantity", "1", "--deadline", "1",
                 "--redis-url", procs.url]) == 0
    wait_for(lambda: t.exists("rq:job:DeadlinePassed-1"), what="armed on the timers server")
    assert t.zscore(SCHEDULED, "DeadlinePassed-1") is not None
    assert rq_keys(r) == []
    timers = procs.start("timers", name="timers", CHOREO_TIMERS_URL=timers_url, **FAST)
    wait_for(lambda: r.hget(keys.order("1"), "status") == "CANCELLED", timeout=20, what="cancelled")
    assert r.hget(keys.order("1"), "reason") == "deadline passed before shipping"
    assert r.xlen(bus_keys.stream("DeadlinePassed")) == 1
    assert t.xlen(bus_keys.stream("DeadlinePassed")) == 0 and t.keys("order:*") == []
    wait_for(lambda: not t.exists("rq:job:DeadlinePassed-1"), what="the job done")
    # The heartbeat stays on the main server, where health and the dashboard read it.
    wait_for(lambda: r.zcard(bus_keys.heartbeats("timers")) == 1, what="timers heartbeat")
    assert procs.run("health", "timers", timeout=30).returncode == 0
    assert rq_keys(r) == []
    assert f"rq worker on {timers_url}, publishing on {procs.url}" in open(timers.log_path).read()


def test_completion_disarms_the_deadline_on_the_timers_server(procs, redis_server, real_bus, timers_url,
                                                             timers_server):
    r, t = redis_server.client(), timers_server.client()
    for s in ("order", "inventory", "payment", "shipping"):
        procs.worker(s, CHOREO_TIMERS_URL=timers_url)
    assert main(["place-order", "--product", "101", "--quantity", "1", "--deadline", "60",
                 "--redis-url", procs.url]) == 0
    wait_for(lambda: r.hget(keys.order("1"), "status") == "COMPLETED", what="completed")
    wait_for(lambda: t.zcard(SCHEDULED) == 0 and not t.exists("rq:job:DeadlinePassed-1"), what="disarmed")
    assert t.exists("rq:queues")                    # it was armed there: rq named its queue
    assert rq_keys(r) == []
    # A timer that fires anyway finds the order ended: nothing is published, on either server.
    cause = min((f for f in r.hkeys(keys.order("1")) if " " in f), key=lambda ref: ref.split()[1]).split()
    created_id = r.xrange(cause[0], cause[1], cause[1])[0][1]["id"]
    armed = RqTimers(real_bus, timers_url)
    armed.schedule([scheduled_call(Timer("DeadlinePassed-1", int(time.time() * 1000), "DeadlinePassed",
                                         "1", created_id))])
    armed.close()
    procs.start("timers", name="timers", CHOREO_TIMERS_URL=timers_url)
    wait_for(lambda: not t.exists("rq:job:DeadlinePassed-1"), timeout=20, what="timer ran")
    assert r.xlen(bus_keys.stream("DeadlinePassed")) == 0
    assert r.hget(keys.order("1"), "status") == "COMPLETED"


def test_an_unreachable_timers_server_is_one_line_with_its_password_hidden(procs, redis_url):
    done = procs.run("timers", CHOREO_TIMERS_URL="redis://rq:hunter2@127.0.0.1:1/0", timeout=30)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("choreo: cannot reach Redis (CHOREO_TIMERS_URL) at redis://rq:***@127.0.0.1:1/0")
    assert line.endswith("(or set CHOREO_TIMERS_URL)") and "hunter2" not in done.stdout + done.stderr


def test_a_worker_says_where_its_timers_are_and_refuses_an_unusable_url(procs):
    """The order worker arms timers and names their server; payment arms none and names none
    (it never connects there)."""
    worker = procs.worker("order", CHOREO_TIMERS_URL="redis://rq:hunter2@127.0.0.1:1/0", **FAST)
    payment = procs.worker("payment", CHOREO_TIMERS_URL="redis://rq:hunter2@127.0.0.1:1/0", **FAST)
    wait_for(lambda: "timers on" in open(worker.log_path).read(), what="worker up")
    text = open(worker.log_path).read()
    assert "(timers on redis://rq:***@127.0.0.1:1/0)" in text and "hunter2" not in text
    wait_for(lambda: "consuming" in open(payment.log_path).read(), what="payment up")
    assert "timers on" not in open(payment.log_path).read()
    done = procs.run("worker", "payment", CHOREO_TIMERS_URL="ftp://127.0.0.1/0", timeout=30)
    assert done.returncode == 2 and "cannot use Redis URL ftp://127.0.0.1/0" in done.stderr


def test_a_worker_whose_timers_server_refuses_its_password_stops_naming_the_url(procs, tmp_path):
    """Refused credentials on CHOREO_TIMERS_URL: a worker that arms timers stops at start in one
    line naming that URL (password hidden), not retries for ever as for a server that is down;
    one that arms none never asks that server."""
    from tests.redis_server import RedisServer
    server = RedisServer(tmp_path / "rq", extra=("--requirepass", "right-password"),
                         auth=("default", "right-password")).start()
    try:
        wrong = server.url_for("default", "wrong-password")
        done = procs.run("worker", "order", CHOREO_TIMERS_URL=wrong, timeout=30)
        assert done.returncode == 1, done.stderr[-2000:]
        (line,) = [x for x in done.stderr.splitlines() if x.startswith("choreo: ")]
        assert "the timers' Redis (CHOREO_TIMERS_URL)" in line and "refused the user name and password" in line
        assert "wrong-password" not in done.stderr + done.stdout and "Traceback" not in done.stderr
        payment = procs.worker("payment", CHOREO_TIMERS_URL=wrong, **FAST)    # arms no timer: runs
        wait_for(lambda: "consuming" in open(payment.log_path).read(), what="payment up")
        time.sleep(1)
        assert payment.poll() is None, open(payment.log_path).read()[-2000:]
    finally:
        server.stop()


def test_a_worker_waiting_for_its_timers_redis_says_how_to_start_that_one(procs):
    """The order service arms timers: with CHOREO_TIMERS_URL's server down it waits at start,
    saying how to start that server, not REDIS_URL's (which answers)."""
    from tests.redis_server import free_port
    port = free_port()
    worker = procs.worker("order", CHOREO_TIMERS_URL=f"redis://127.0.0.1:{port}/0", **FAST)
    wait_for(lambda: "retry 1" in open(worker.log_path).read(), what="the first retry line")
    (line,) = [x for x in open(worker.log_path).read().splitlines() if "retry 1" in x]
    assert "cannot reach the timers' Redis (CHOREO_TIMERS_URL)" in line, line
    assert f"redis-server --port {port} " in line and line.count("start one with") == 1, line
    assert worker.poll() is None

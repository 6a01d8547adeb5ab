"""Workers against a redis-server that dies under them: they reconnect with capped backoff (one
line per attempt), recreate lost groups, and finish the run."""

from __future__ import annotations

import subprocess
import time

from choreo.bus import keys as bus_keys
from choreo.bus.connect import open_bus
from choreo.orders import OrderRequest, place_orders
from tests.conftest import BIN, ROOT
from tests.helpers import FIGURES, wait_for
from tests.redis_server import RedisServer
from tests.saga_run import drained
from choreo.workers import keys

SERVICES = ("order", "inventory", "payment", "shipping")


def start_workers(procs, url):
    return [procs.start("worker", s, name=s, REDIS_URL=url, CHOREO_RECONNECT_MAX_S=1) for s in SERVICES]


def all_groups_exist(r) -> bool:
    from choreo.workers import SERVICES as DECLARED
    for service in DECLARED.values():
        for stream in service.streams:
            if not r.exists(stream) or service.name not in {g["name"] for g in r.xinfo_groups(stream)}:
                return False
    return True


def statuses(r):
    return {k: int(v) for k, v in r.hgetall(keys.orders_by_status()).items() if int(v)}


def test_workers_survive_a_redis_kill_and_restart_and_finish_the_run(procs, own_redis):
    workers = start_workers(procs, own_redis.url)
    bus = open_bus(own_redis.url)
    place_orders(bus, [OrderRequest(str(i), [{"product_id": 101, "quantity": 1}]) for i in range(1, 301)])
    bus.close()
    r = own_redis.client()
    wait_for(lambda: statuses(r).get("COMPLETED", 0) > 0, what="some orders completed")
    own_redis.kill()                          # SIGKILL: AOF (fsync always) keeps what was acked
    time.sleep(2)
    own_redis.start()
    r = own_redis.client()
    wait_for(lambda: statuses(r) == {"COMPLETED": 300}, timeout=60, what="all 300 completed")
    wait_for(lambda: r.hget(keys.stock(101), "sold") == "300", what="all sold")
    assert int(r.hget(keys.payment_totals(), "charged_cents")) == 300 * 1999
    for w in workers:
        assert w.poll() is None
        lines = open(w.log_path).read().splitlines()
        retries = [l for l in lines if "Redis unavailable" in l]
        assert 1 <= len(retries) <= 8, retries          # one line per attempt, no flood


def test_a_paced_load_rides_through_a_redis_restart_and_every_order_completes(procs, own_redis):
    start_workers(procs, own_redis.url)
    r = own_redis.client()
    wait_for(lambda: all_groups_exist(r), what="every worker's groups created")
    load = subprocess.Popen([str(BIN / "choreo"), "load", "--orders", "150", "--rate", "50",
                             "--timeout", "60"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=procs.env(REDIS_URL=own_redis.url, CHOREO_RECONNECT_MAX_S=1))
    wait_for(lambda: statuses(r).get("COMPLETED", 0) >= 20, what="the load under way")
    assert load.poll() is None, "the load ended before the restart it is meant to ride through"
    own_redis.kill()                          # SIGKILL mid-load: placing and polling both see it
    time.sleep(1)                             # the outage itself, not a wait for anything
    own_redis.start()
    out, err = load.communicate(timeout=60)
    assert load.returncode == 0, err
    m = FIGURES.match(out.splitlines()[-1])
    assert m, out
    orders, completed, outages, outage_s = m.groups()
    assert (orders, completed, outages) == ("150", "150", "1"), out
    assert float(outage_s) >= 0.9, out
    assert err.count("choreo load: Redis unavailable") == 1, err      # one line per outage
    assert "outages" in err and "latencies (ms) leave out" in err, err
    r = own_redis.client()
    assert statuses(r) == {"COMPLETED": 150}                # each order placed once, none twice
    assert r.xlen(bus_keys.stream("OrderCreated")) == 150
    wait_for(lambda: drained(r), timeout=30, what="every group drained")
    audit = procs.run("audit", "--strict", REDIS_URL=own_redis.url)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_a_redis_that_comes_back_empty_gets_its_groups_recreated(procs, tmp_path):
    server = RedisServer(tmp_path / "volatile").start()
    try:
        start_workers(procs, server.url)
        r = server.client()
        wait_for(lambda: r.exists(keys.stock(101)), what="workers started")
        server.kill()
        server.start()                         # no persistence: streams, groups, stock all gone
        r = server.client()
        wait_for(lambda: r.exists(keys.stock(101)), timeout=15, what="stock seeded again")
        bus = open_bus(server.url)
        place_orders(bus, [OrderRequest("1", [{"product_id": 101, "quantity": 2}])])
        bus.close()
        wait_for(lambda: r.hget(keys.order("1"), "status") == "COMPLETED", timeout=20,
                 what="an order after the empty restart completes")
    finally:
        server.kill()


def test_groups_flushed_away_under_running_workers_are_recreated_without_a_hot_loop(procs, redis_server):
    workers = [procs.worker(s) for s in SERVICES]
    r = redis_server.client()
    wait_for(lambda: all_groups_exist(r), what="every worker's groups created")
    r.flushall()                               # NOGROUP on the workers' next read
    wait_for(lambda: r.exists(keys.stock(101)), timeout=15, what="groups recreated, stock reseeded")
    bus = open_bus(procs.url)
    place_orders(bus, [OrderRequest("1", [{"product_id": 101, "quantity": 2}])])
    bus.close()
    wait_for(lambda: r.hget(keys.order("1"), "status") == "COMPLETED", timeout=20, what="completed")
    for w in workers:
        lines = open(w.log_path).read().splitlines()
        assert 1 <= sum("group missing" in l for l in lines) <= 3, lines

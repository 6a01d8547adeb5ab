"""The worker runtime as real processes against a real redis-server: restarts, SIGKILL between
handling and commit, racing consumers, SIGTERM."""

from __future__ import annotations

import signal
import time

import pytest

from choreo.bus import keys as bus_keys
from choreo.cli import main
from choreo.orders import OrderRequest, place_orders
from tests.helpers import order_statuses, pending_count, wait_for
from choreo.workers import keys

ORDER_CREATED = bus_keys.stream("OrderCreated")


def place(url, product=101, quantity=1, n=1):
    for _ in range(n):
        assert main(["place-order", "--product", str(product), "--quantity", str(quantity),
                     "--redis-url", url]) == 0


def test_group_at_zero_sees_orders_placed_before_any_worker_started(procs, redis_server, capsys):
    place(procs.url, n=3)
    for s in ("order", "inventory", "payment", "shipping"):
        procs.worker(s)
    r = redis_server.client()
    wait_for(lambda: order_statuses(r).get("COMPLETED") == 3, what="3 completed orders")


def test_restarted_worker_finishes_its_own_pending_entries_first(procs, redis_server, real_bus):
    r = redis_server.client()
    place(procs.url, n=4)
    # A previous life of inventory slot 1 read the entries, then died before committing.
    real_bus.ensure_groups("inventory", [ORDER_CREATED])
    consumer = "inventory-crashed-1"
    assert len(real_bus.read_new("inventory", consumer, [ORDER_CREATED], 10, 10)) == 4
    # Claiming and retry_due would wait a minute: only "own pending first" can pick these up now.
    procs.start("worker", "inventory", "--consumer", consumer, name="inventory.re",
                CHOREO_CLAIM_IDLE_MS=60_000, CHOREO_RETRY_BASE_MS=60_000, CHOREO_RETRY_MAX_MS=60_000)
    wait_for(lambda: pending_count(r, ORDER_CREATED, "inventory") == 0, timeout=10,
             what="own pending entries handled")
    assert all(r.hget(keys.reservation(str(i)), "status") == "RESERVED" for i in range(1, 5))
    assert int(r.hget(keys.stock(101), "reserved")) == 4


@pytest.mark.parametrize("victim", ["inventory", "payment"])
def test_sigkill_between_handling_and_commit_applies_the_entry_exactly_once(procs, redis_server, victim):
    r = redis_server.client()
    for s in ("order", "inventory", "payment", "shipping"):
        if s != victim:
            procs.worker(s)
    slow = procs.worker(victim, slot=1, CHOREO_COMMIT_DELAY_MS=5000)
    wait_for(lambda: r.exists(keys.stock(101)) if victim == "inventory" else r.exists(bus_keys.stream("InventoryChecked")),
             what="workers started")
    place(procs.url, quantity=3)
    stream = ORDER_CREATED if victim == "inventory" else bus_keys.stream("InventoryChecked")
    wait_for(lambda: pending_count(r, stream, victim) == 1, what=f"{victim} holding the entry")
    slow.send_signal(signal.SIGKILL)
    slow.wait(5)
    # Nothing of the handled-but-uncommitted entry is visible.
    if victim == "inventory":
        assert r.hget(keys.stock(101), "reserved") == "0" and not r.exists(keys.reservation("1"))
    else:
        assert r.hget(keys.payment_totals(), "charged_cents") is None and not r.exists(keys.payment("1"))
    assert pending_count(r, stream, victim) == 1
    # Another consumer of the group claims it once it has been idle for a moment.
    procs.worker(victim, slot=2, CHOREO_CLAIM_IDLE_MS=300, CHOREO_CLAIM_EVERY_S=0.2)
    wait_for(lambda: order_statuses(r).get("COMPLETED") == 1, what="order completed")
    wait_for(lambda: int(r.hget(keys.stock(101), "sold") or 0) == 3, what="sale recorded")
    stock = r.hgetall(keys.stock(101))
    assert (int(stock["available"]), int(stock["reserved"]), int(stock["sold"])) == \
        (int(stock["start"]) - 3, 0, 3)
    assert int(r.hget(keys.payment_totals(), "charged_cents")) == 3 * 1999
    assert pending_count(r, stream, victim) == 0


def test_an_entry_that_kills_its_worker_is_given_up_alone_not_with_its_batch(procs, redis_server):
    """Nine entries read in one batch, the seventh killing the process whenever it is handled:
    after each restart the worker's own pending entries are read one at a time, so only the
    seventh counts a delivery per crash, the crash guard dead-letters it alone (here after 3:
    CHOREO_MAX_DELIVERIES=1), and the eight others are applied."""
    from choreo.bus.envelope import Envelope
    c = redis_server.client()
    stream = bus_keys.stream("Go")
    for i in range(1, 10):
        c.xadd(stream, Envelope.new("Go", str(i), "goer", {}).fields())
    innocent = {f"went:{i}" for i in range(1, 10) if i != 7}

    def done() -> bool:
        return set(c.keys("went:*")) == innocent and c.exists("dlq:goer")

    crashes = 0
    for run in range(10):
        worker = procs.start("worker", "goer", "--app", "tests.apps.poison:app", name=f"goer.{run}",
                             POISON_ID="7", CHOREO_MAX_DELIVERIES="1")
        deadline = time.monotonic() + 30
        while worker.poll() is None and not done() and time.monotonic() < deadline:
            time.sleep(0.05)
        if worker.poll() is not None:
            assert worker.returncode == -signal.SIGKILL, open(worker.log_path).read()
            crashes += 1
            continue
        break
    worker.terminate()
    assert worker.wait(10) == 0
    assert done(), (sorted(c.keys("went:*")), c.xlen("dlq:goer") if c.exists("dlq:goer") else 0)
    (letter,) = [fields for _, fields in c.xrange("dlq:goer")]
    assert letter["entry_id"] == c.xrange(stream)[6][0] and "gave up after 3 deliveries" in letter["error"]
    assert crashes == 3 and pending_count(c, stream, "goer") == 0


def test_three_racing_inventory_workers_never_oversell(procs, redis_server, real_bus):
    r = redis_server.client()
    racers = [procs.worker("inventory", slot=slot, CHOREO_BATCH_SIZE=4) for slot in (1, 2, 3)]
    # All three are blocked reading the group before the orders arrive, so they race for them.
    wait_for(lambda: inventory_consumers(r) == 3, what="three inventory consumers reading")
    place_orders(real_bus, [OrderRequest(str(i), [{"product_id": 103, "quantity": 1}])
                            for i in range(1, 41)])            # product 103 starts with 5 in stock
    for s in ("order", "payment", "shipping"):
        procs.worker(s)
    wait_for(lambda: sum(order_statuses(r).values()) == 40 and "PENDING" not in order_statuses(r),
             timeout=60, what="40 terminal orders")
    assert order_statuses(r) == {"COMPLETED": 5, "REJECTED": 35}
    wait_for(lambda: r.hget(keys.stock(103), "sold") == "5", what="5 sold")
    assert r.hgetall(keys.stock(103)) | {"_v": "x"} == \
        {"start": "5", "available": "0", "reserved": "0", "sold": "5", "_v": "x"}
    handled = [open(p.log_path).read().count("Checking inventory") for p in racers]
    assert sum(handled) == 40 and sum(1 for n in handled if n) >= 2, handled   # they did race


def inventory_consumers(r) -> int:
    try:
        return len(r.xinfo_consumers(ORDER_CREATED, "inventory"))
    except Exception:                       # the group does not exist yet
        return 0


def test_sigterm_commits_and_exits_0_well_inside_5_seconds(procs, redis_server):
    worker = procs.worker("inventory", CHOREO_COMMIT_DELAY_MS=800)
    r = redis_server.client()
    wait_for(lambda: r.exists(keys.stock(101)), what="worker started")
    place(procs.url, n=5)
    wait_for(lambda: pending_count(r, ORDER_CREATED, "inventory") > 0, what="batch in hand")
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(5) == 0
    assert time.monotonic() - started < 3
    # The batch in hand was committed, not abandoned.
    assert pending_count(r, ORDER_CREATED, "inventory") == 0


def test_worker_waits_for_redis_with_capped_backoff_and_one_line_per_attempt(procs, own_redis):
    url = own_redis.url
    own_redis.kill()
    worker = procs.start("worker", "order", name="order.wait", REDIS_URL=url, CHOREO_RECONNECT_MAX_S=0.5)
    time.sleep(2.5)
    assert worker.poll() is None                        # still alive, not a crash loop
    own_redis.start()
    r = own_redis.client()
    wait_for(lambda: r.exists(ORDER_CREATED), timeout=5, what="groups created after reconnect")
    worker.terminate()
    assert worker.wait(5) == 0
    log = open(worker.log_path).read().splitlines()
    attempts = [l for l in log if "Redis unavailable" in l]
    assert 3 <= len(attempts) <= 8, log
    # The first says how to start one (a worker waits for Redis; every other command exits so).
    port = url.rsplit(":", 1)[1].split("/")[0]
    assert attempts[0].endswith(f"; start one with: redis-server --port {port} --save '' --daemonize yes "
                                f"(or set REDIS_URL)"), attempts[0]
    assert not any("start one" in line for line in attempts[1:])


def test_a_worker_on_a_cluster_url_waits_while_its_node_does_not_answer(procs):
    """A cluster client learns the slot map from the node named as it is made: with that node
    down (failed over, restarting) the worker exited 1 at start, where on a plain URL it waits.
    It now waits too, saying why, and stops cleanly on SIGTERM."""
    import signal as signals
    from tests.redis_server import free_port
    url = f"redis://127.0.0.1:{free_port()}/0?cluster=true"
    worker = procs.worker("payment", REDIS_URL=url, CHOREO_ORDER_DEADLINE_S="0")
    wait_for(lambda: "retry 2" in open(worker.log_path).read(), timeout=20, what="two retries")
    assert worker.poll() is None
    assert "cannot reach Redis Cluster" in open(worker.log_path).read()
    worker.send_signal(signals.SIGTERM)
    assert worker.wait(10) == 0


def test_a_worker_on_a_cluster_url_whose_node_refuses_its_password_stops(procs, tmp_path):
    """Refused credentials are no outage: on a plain URL a worker stops in one line; on a
    cluster URL redis-py's cluster client reported them as a node it could not reach, and the
    worker waited for ever (one node holding every slot is cluster enough)."""
    from choreo.measure.redis_cluster import free_cluster_port
    from tests.redis_server import RedisServer
    server = RedisServer(tmp_path / "node", port=free_cluster_port(),
                         extra=("--cluster-enabled", "yes", "--cluster-config-file",
                                                   "nodes.conf", "--requirepass", "right-password"),
                         auth=("default", "right-password")).start()
    try:
        node = server.client()
        node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        wait_for(lambda: "cluster_state:ok" in node.execute_command("CLUSTER", "INFO"), what="cluster ok")
        url = server.url_for("default", "wrong-password") + "?cluster=true"
        done = procs.run("worker", "payment", REDIS_URL=url, CHOREO_ORDER_DEADLINE_S="0", timeout=30)
        assert done.returncode == 1, done.stderr[-2000:]
        (line,) = [x for x in done.stderr.splitlines() if x.startswith("choreo: ")]
        assert "Redis Cluster at" in line and "refused the user name and password" in line, line
        assert "wrong-password" not in done.stderr + done.stdout and "Traceback" not in done.stderr
    finally:
        server.stop()

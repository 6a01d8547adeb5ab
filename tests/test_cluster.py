"""The saga on a real local Redis Cluster (three primaries, three replicas) with eight partitions:
end to end, racing inventory workers, SIGKILLs under load, and a primary killed under load. Each
run ends with `choreo audit --strict` clean. Workers and commands are the real `choreo` command in
subprocesses, on `REDIS_URL=...?cluster=true`; rq's timers keep their queue on a plain
redis-server (CHOREO_TIMERS_URL), as rq needs."""

from __future__ import annotations

import json

import subprocess
import time
from urllib.parse import urlsplit

import pytest
from redis.cluster import RedisCluster

from choreo.bus import keys as bus_keys
from choreo.bus.layout import Layout, use
from choreo.workers import SERVICES, keys
from tests.conftest import BIN, ROOT, Processes
from tests.test_chaos import drained, sigkills_under_load
from tests.helpers import wait_for

PARTITIONS = 8
TERMINAL = ("COMPLETED", "REJECTED", "CANCELLED")
FAST_CLAIMS = {"CHOREO_CLAIM_IDLE_MS": 1500, "CHOREO_CLAIM_EVERY_S": 0.5, "CHOREO_BATCH_SIZE": 20}


@pytest.fixture
def layout():
    previous = use(Layout(PARTITIONS, cluster=True))
    yield
    use(previous)


@pytest.fixture
def cluster(redis_cluster, layout):
    client = RedisCluster.from_url(redis_cluster.url.replace("/0?cluster=true", ""), decode_responses=True)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture
def on_cluster(redis_cluster, cluster, redis_server, tmp_path):
    """Processes on the cluster; rq on the throwaway plain server."""
    redis_server.client().flushall()
    p = Processes(redis_cluster.url, tmp_path)
    p.base_env.update({"CHOREO_PARTITIONS": str(PARTITIONS), "CHOREO_TIMERS_URL": redis_server.url})
    yield p
    p.stop_all()


def statuses(client) -> dict[str, str]:
    ids = [i for key in keys.every(keys.orders_index) for i in client.zrange(key, 0, -1)]
    return {i: client.hget(keys.order(i), "status") for i in ids}


def dead_letters(client) -> int:
    return sum(client.xlen(k) for s in SERVICES for k in bus_keys.all_dead_letters(s))


def audit_clean(procs) -> str:
    audit = procs.run("audit", "--strict")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    return audit.stdout.strip()


def test_the_saga_ends_every_way_on_a_cluster_with_eight_partitions(on_cluster, cluster):
    for name in SERVICES:
        on_cluster.worker(name)
    on_cluster.start("timers")
    mix = {(101, 1): "COMPLETED", (103, 6): "REJECTED", (102, 101): "CANCELLED", (101, 60): "CANCELLED"}
    expected = {}
    for _ in range(3):
        for (product, quantity), status in mix.items():
            done = on_cluster.run("place-order", "--product", str(product), "--quantity", str(quantity))
            assert done.returncode == 0, done.stderr
            expected[done.stdout.strip()] = status
    wait_for(lambda: all(statuses(cluster).get(i) in TERMINAL for i in expected) and drained(cluster),
             timeout=60, what="every order terminal")
    assert statuses(cluster) == expected
    # One order's keys share its partition's slot; the orders are spread over the partitions.
    for order_id in expected:
        slot = {cluster.keyslot(k) for k in (keys.order(order_id), keys.payment(order_id),
                                             bus_keys.trace(order_id), keys.reservation(order_id))}
        assert len(slot) == 1
    assert len({bus_keys.partition_of(keys.order(i)) for i in expected}) >= 4
    nodes = {cluster.get_node_from_key(keys.order(i)).port for i in expected}
    assert len(nodes) >= 2
    assert dead_letters(cluster) == 0
    print("\naudit:", audit_clean(on_cluster))
    status = on_cluster.run("status", next(iter(expected)))
    assert status.returncode == 0 and "order" in status.stdout
    # Its trace, gathered from its records on the order's node; a list trace an earlier version
    # made (here one naming an event that is gone) is read beside them.
    done = next(i for i, status in expected.items() if status == "COMPLETED")
    gone = f"{bus_keys.stream_for('OrderCreated', done)[:-len('OrderCreated')]}Nothing 1-0"
    cluster.rpush(bus_keys.trace(done), gone)
    trace = on_cluster.run("trace", done, "--json")
    assert trace.returncode == 0, trace.stderr
    shown = json.loads(trace.stdout)
    assert [e["type"] for e in shown["events"]] == ["OrderCreated", "InventoryChecked",
                                                   "PaymentProcessed", "ShippingArranged"]
    assert [t["type"] for t in shown["trimmed"]] == ["Nothing"]


def test_racing_inventory_workers_on_a_cluster_never_oversell(on_cluster, cluster):
    """Product 103 starts with 5: two inventory workers on different partitions race 40 orders
    of one each; exactly 5 are sold."""
    on_cluster.worker("inventory", slot=1, CHOREO_BATCH_SIZE=3)
    on_cluster.worker("inventory", slot=2, CHOREO_BATCH_SIZE=3)
    for name in ("order", "payment", "shipping"):
        on_cluster.worker(name)
    wait_for(lambda: cluster.exists(keys.stock(103)), what="stock seeded")
    load = on_cluster.run("load", "--orders", "40", "--product", "103", "--quantity", "1",
                          "--timeout", "90", timeout=120)
    assert load.returncode == 0, load.stdout + load.stderr
    wait_for(lambda: drained(cluster), timeout=60, what="drained")
    stock = cluster.hgetall(keys.stock(103))
    assert stock["sold"] == "5" and stock["available"] == "0" and stock["reserved"] == "0"
    final = list(statuses(cluster).values())
    assert final.count("COMPLETED") == 5 and final.count("REJECTED") == 35
    print("\naudit:", audit_clean(on_cluster))


def test_random_sigkills_under_load_on_a_cluster_lose_and_double_nothing(on_cluster, cluster):
    kills, figures = sigkills_under_load(on_cluster, FAST_CLAIMS, 600, 50, seed=20261129,
                                         ready=lambda: cluster.exists(keys.stock(101)))
    print(f"\ncluster chaos: {kills} SIGKILLs survived; load: {figures}")
    wait_for(lambda: drained(cluster), timeout=60, what="every group drained")
    print("audit:", audit_clean(on_cluster))
    assert dead_letters(cluster) == 0


def replica_lag_bytes(redis_cluster, primary: int) -> int:
    """How far the primary's replicas are behind it, in replication-stream bytes, right now."""
    info = redis_cluster.node(primary).info("replication")
    offsets = [int(v["offset"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return max(int(info["master_repl_offset"]) - o for o in offsets) if offsets else -1


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_a_primary_killed_under_load_fails_over_and_every_order_completes(on_cluster, cluster,
                                                                          redis_cluster, wait_replicas):
    """With CHOREO_WAIT_REPLICAS=1 no commit is answered before a replica has it; without, the
    window is what the replica lags at the kill (printed)."""
    on_cluster.base_env["CHOREO_WAIT_REPLICAS"] = str(wait_replicas)
    for s in SERVICES:
        on_cluster.worker(s, **FAST_CLAIMS)
    wait_for(lambda: cluster.exists(keys.stock(101)), what="workers up")
    load = subprocess.Popen([str(BIN / "choreo"), "load", "--orders", "400", "--rate", "40",
                             "--timeout", "120"], env=on_cluster.env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    # The primary holding the most partitions' streams.
    owners = [cluster.get_node_from_key(bus_keys.stream("OrderCreated", p)).port for p in range(PARTITIONS)]
    victim = max(set(owners), key=owners.count)
    lag = replica_lag_bytes(redis_cluster, victim)
    redis_cluster.kill_primary(victim)
    started = time.monotonic()
    during = on_cluster.run("audit", timeout=60)         # the node gone, not yet replaced
    assert "Traceback" not in during.stderr
    if during.returncode:
        assert len(during.stderr.strip().splitlines()) == 1 and during.stderr.startswith("choreo: "), \
            during.stderr
    promoted = redis_cluster.wait_failover(victim, timeout=30)
    took = time.monotonic() - started
    # Back as the new primary's replica: until then a WAIT for one replica there can only time
    # out, and every commit in its slots takes CHOREO_WAIT_TIMEOUT_MS (docs/cluster.md).
    redis_cluster.restart(victim)
    out, err = load.communicate(timeout=150)
    figures = out.strip().splitlines()[-1] if out.strip() else ""
    print(f"\nfailover (CHOREO_WAIT_REPLICAS={wait_replicas}): primary {victim} killed with its replica "
          f"{lag} bytes behind, replica {promoted} took over in {took:.1f} s; load: {figures}")
    assert load.returncode == 0, out + err
    assert "orders=400 completed=400 " in figures
    wait_for(lambda: drained(cluster), timeout=60, what="every group drained")
    print("audit:", audit_clean(on_cluster))


def acl_setuser_args(line: str) -> list[str]:
    """`user NAME rule rule (selector rule) …` as ACL SETUSER's arguments, a selector one."""
    args, selector = [], None
    for word in line.split()[1:]:
        if selector is not None:
            selector.append(word)
            if word.endswith(")"):
                args.append(" ".join(selector))
                selector = None
        elif word.startswith("(") and not word.endswith(")"):
            selector = [word]
        else:
            args.append(word)
    return args


def test_every_service_runs_as_its_own_user_on_every_node(on_cluster, cluster, redis_cluster):
    """`choreo acl render` on a cluster, loaded on every node (ACLs are per node), the default
    user left on for the test's own checks: nobody is refused anything (ACL LOG empty on every
    node), orders complete, the dashboard user reads it all."""
    from tests.test_acl import PASSWORDS, USERS
    env = {f"CHOREO_ACL_PASSWORD_{u.upper()}": p for u, p in PASSWORDS.items()}
    rendered = on_cluster.run("acl", "render", **env)
    assert rendered.returncode == 0, rendered.stderr
    assert "+cluster|slots" in rendered.stdout
    users = [l for l in rendered.stdout.splitlines() if l.startswith("user ") and " default " not in f"{l} "]
    for port in redis_cluster.alive():
        for line in users:
            redis_cluster.ask(port, "ACL", "SETUSER", *acl_setuser_args(line))
        redis_cluster.ask(port, "ACL", "LOG", "RESET")
    host = redis_cluster.url.split("//", 1)[1]
    for user in USERS:
        on_cluster.base_env[f"REDIS_URL_{user.upper()}"] = f"redis://{user}:{PASSWORDS[user]}@{host}"
    try:
        for name in SERVICES:
            on_cluster.worker(name)
        on_cluster.start("timers")
        load = on_cluster.run("load", "--orders", "60", "--timeout", "60", timeout=90)
        assert load.returncode == 0, load.stdout + load.stderr
        wait_for(lambda: drained(cluster), timeout=30, what="drained")
        for verb in (("dashboard", "--once"), ("dlq", "list"), ("trim",), ("audit", "--strict")):
            answer = on_cluster.run(*verb)
            assert answer.returncode == 0, (verb, answer.stdout, answer.stderr)
        refused = {port: redis_cluster.ask(port, "ACL", "LOG") for port in redis_cluster.alive()}
        assert not any(refused.values()), refused
    finally:
        on_cluster.stop_all()
        for port in redis_cluster.alive():
            for user in USERS:
                redis_cluster.ask(port, "ACL", "DELUSER", user)


def test_a_cluster_misnamed_is_one_line_saying_what_to_set(on_cluster, redis_cluster, redis_server):
    """No CHOREO_TIMERS_URL for a worker that arms deadlines, rq pointed at a cluster node, or a
    cluster URL without ?cluster=true: one line naming the setting, never a traceback."""
    no_timers = on_cluster.run("worker", "order", CHOREO_TIMERS_URL="", timeout=30)
    assert no_timers.returncode == 2 and "set CHOREO_TIMERS_URL" in no_timers.stderr
    node = redis_cluster.url.replace("?cluster=true", "")
    rq_on_node = on_cluster.run("timers", CHOREO_TIMERS_URL=node, timeout=30)
    assert rq_on_node.returncode == 2 and "is a Redis Cluster node: rq needs a plain Redis" in rq_on_node.stderr
    for verb in (("place-order", "--product", "101", "--quantity", "1"), ("status", "1")):
        plain = on_cluster.run(*verb, REDIS_URL=node, CHOREO_PARTITIONS="1", timeout=30)
        assert "Traceback" not in plain.stderr
        if plain.returncode:
            assert "on a cluster REDIS_URL needs ?cluster=true" in plain.stderr, plain.stderr
    assert "Traceback" not in no_timers.stderr + rq_on_node.stderr


def test_a_url_whose_node_is_down_finds_the_cluster_through_the_nodes_it_lists(on_cluster, redis_cluster):
    """The URL names one node; a process started while that node was down waited for it (or
    failed, exit 1), however healthy the cluster. `&nodes=host:port,...` names others to learn
    the slot map from; a malformed list is one line, exit 2."""
    from choreo.measure.redis_server import free_port
    alive = urlsplit(redis_cluster.url).port
    down = f"redis://127.0.0.1:{free_port()}/0?cluster=true"
    placed = on_cluster.run("place-order", "--product", "101", "--quantity", "1",
                            REDIS_URL=f"{down}&nodes=127.0.0.1:{free_port()},127.0.0.1:{alive}", timeout=60)
    assert placed.returncode == 0, placed.stderr
    shown = on_cluster.run("status", placed.stdout.strip(), REDIS_URL=f"{down}&nodes=127.0.0.1:{alive}")
    assert shown.returncode == 0 and "PENDING" in shown.stdout.splitlines()[0], shown.stderr
    alone = on_cluster.run("status", "1", REDIS_URL=down, timeout=60)
    assert alone.returncode == 1 and "cannot reach Redis Cluster" in alone.stderr
    bad = on_cluster.run("status", "1", REDIS_URL=f"{down}&nodes=127.0.0.1", timeout=30)
    assert bad.returncode == 2 and "nodes= takes host:port,host:port" in bad.stderr

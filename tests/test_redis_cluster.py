"""The local Redis Cluster (choreo.measure.redis_cluster) and what redis-py's RedisCluster client
does on it: where keys go, what crosses slots, scripts and pipelines, a failover. These pin the
client's behaviour the bus will rely on when it runs on a cluster."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, RedisClusterException

from choreo.measure.redis_cluster import ClusterError, LocalCluster

INCR_BOTH = "return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])"


@pytest.fixture
def client(redis_cluster):
    c = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    c.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield c
    c.close()


def key_on(client: RedisCluster, port: int, prefix: str = "k") -> str:
    return next(k for k in (f"{prefix}{i}" for i in range(10_000)) if client.get_node_from_key(k).port == port)


def test_the_cluster_has_three_primaries_each_with_a_replica_of_its_own(redis_cluster):
    primaries, replicas = redis_cluster.primaries(), redis_cluster.replicas()
    assert len(primaries) == 3 and len(replicas) == 3
    followed = {int(redis_cluster.ask(port, "ROLE")[2]) for port in replicas}
    assert followed == set(primaries)
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.ports[0]}/0?cluster=true"


def test_keys_spread_over_all_three_primaries(redis_cluster, client):
    for i in range(60):
        client.set(f"order:{i}", i)
    # asked of each primary itself, not of the client's slot map
    sizes = {port: redis_cluster.ask(port, "DBSIZE") for port in redis_cluster.primaries()}
    assert all(size > 0 for size in sizes.values()), sizes
    assert sum(sizes.values()) == 60


def test_a_command_over_keys_in_two_slots_is_refused_with_crossslot(client):
    assert client.keyslot("a") != client.keyslot("b")
    # the client refuses before sending; sent to a node anyway, the server refuses with CROSSSLOT
    with pytest.raises(RedisClusterException, match="same key slot"):
        client.mset({"a": 1, "b": 2})
    with pytest.raises(ClusterCrossSlotError):
        client.execute_command("MSET", "a", 1, "b", 2, target_nodes=client.get_primaries()[0])
    assert client.get("a") is None


def test_keys_sharing_a_hash_tag_go_together_into_one_eval(client):
    assert client.keyslot("{p1}a") == client.keyslot("{p1}b")
    got = client.eval("redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); "
                      "return redis.call('GET', KEYS[2])", 2, "{p1}a", "{p1}b", "both")
    assert got == "both" and client.get("{p1}a") == "both"
    with pytest.raises(RedisClusterException, match="same key slot"):
        client.eval("return 1", 2, "{p1}a", "{p2}a")


def test_a_registered_script_runs_with_keys_in_one_slot_but_not_across(client):
    script = client.register_script(INCR_BOTH)
    assert script(keys=["{p1}x", "{p1}y"]) == 2
    assert script(keys=["{p2}x", "{p2}y"]) == 2     # another node: loaded there on NOSCRIPT
    with pytest.raises(RedisClusterException, match="same key slot"):
        script(keys=["x", "y"])


def test_a_pipeline_runs_xreadgroup_and_evalsha_as_a_raw_command(client):
    script = client.register_script(INCR_BOTH)
    script(keys=["{p1}x", "{p1}y"])                  # loaded on the node that holds {p1}
    client.xgroup_create("{p1}s", "g", id="0", mkstream=True)
    client.xadd("{p1}s", {"k": "v"})
    pipe = client.pipeline()
    # Before redis-py 8.2 the cluster pipeline blocked its evalsha() method (and Script with it),
    # which is why the bus pipelines scripts per node on plain clients; EVALSHA through
    # execute_command, and XREADGROUP as it is, run in either.
    pipe.execute_command("EVALSHA", script.sha, 2, "{p1}x", "{p1}y")
    pipe.xreadgroup("g", "c", {"{p1}s": ">"}, count=10)
    total, read = pipe.execute()
    assert total == 4
    assert read[0][0] == "{p1}s" and read[0][1][0][1] == {"k": "v"}


def test_a_transaction_pipeline_runs_evalsha_and_xreadgroup_in_one_slot(client):
    script = client.register_script(INCR_BOTH)
    script(keys=["{p1}x", "{p1}y"])
    client.xgroup_create("{p1}s", "g", id="0", mkstream=True)
    client.xadd("{p1}s", {"k": "v"})
    pipe = client.pipeline(transaction=True)
    pipe.execute_command("EVALSHA", script.sha, 2, "{p1}x", "{p1}y")
    pipe.xreadgroup("g", "c", {"{p1}s": ">"}, count=10)
    total, read = pipe.execute()
    assert total == 4 and read
    pipe = client.pipeline(transaction=True)
    pipe.set("{p1}q", 1)
    pipe.incr("{p2}q")
    with pytest.raises(RedisClusterException, match="same slot"):
        pipe.execute()


def test_after_a_primary_dies_its_replica_serves_its_slots_through_the_same_client(redis_cluster, client):
    victim = redis_cluster.primaries()[0]
    key = key_on(client, victim)
    script = client.register_script(INCR_BOTH)
    client.set(key, "before")
    killed = redis_cluster.kill_primary(victim)
    started = time.monotonic()
    promoted = redis_cluster.wait_failover(killed, timeout=20)
    assert promoted != killed and promoted in redis_cluster.primaries()
    assert killed not in redis_cluster.primaries() + redis_cluster.replicas()

    errors = write_until_it_works(client, key, "after", timeout=20)
    assert client.get(key) == "after"
    assert client.get_node_from_key(key).port == promoted
    # a script cache is not replicated: the promoted node loads it again on NOSCRIPT
    tag = "{" + key + "}"
    assert script(keys=[tag + "a", tag + "b"]) == 2
    print(f"failover {time.monotonic() - started:.1f} s; errors on the way: {errors}")

    redis_cluster.restart(killed)
    assert killed in redis_cluster.replicas()
    assert int(redis_cluster.ask(killed, "ROLE")[2]) == promoted
    assert len(redis_cluster.primaries()) == 3


def write_until_it_works(client: RedisCluster, key: str, value: str, timeout: float) -> list[str]:
    """The client's own retries (cluster_error_retry_attempts, 3) may run out while the cluster
    elects; what it raised meanwhile is returned."""
    errors, deadline = [], time.monotonic() + timeout
    while True:
        try:
            client.set(key, value)
            return errors
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError) as e:
            errors.append(type(e).__name__)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_missing_redis_cli_is_one_clear_line(monkeypatch):
    which, exists = shutil.which, os.path.exists
    monkeypatch.setattr("shutil.which", lambda name: None if name == "redis-cli" else which(name))
    monkeypatch.setattr("os.path.exists", lambda path: "redis-cli" not in str(path) and exists(path))
    cluster = LocalCluster()
    with pytest.raises(ClusterError) as raised:
        cluster.start()
    assert str(raised.value).startswith("redis-cli not found") and "\n" not in str(raised.value)
    assert cluster.procs == {}


def test_a_node_that_dies_during_start_is_named_in_one_line(monkeypatch):
    cluster = LocalCluster(start_timeout=3)
    real_create = LocalCluster._create

    def create_then_lose_a_node(self, cli):
        real_create(self, cli)
        self.procs[self.ports[-1]].kill()
        self.procs[self.ports[-1]].wait()

    monkeypatch.setattr(LocalCluster, "_create", create_then_lose_a_node)
    with pytest.raises(ClusterError) as raised:
        cluster.start()
    message = str(raised.value)
    assert f"127.0.0.1:{cluster.ports[-1]}" in message and "\n" not in message
    assert cluster.procs == {} and cluster.root is None

"""Operator views of a Redis Cluster, and the Procfile on one: the dashboard's nodes (render of a
known snapshot, then gather() against the real local cluster, before and after a primary fails
over), the exporter's node series, and `honcho start` with the real Procfile on the cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from redis.cluster import RedisCluster
from rich.console import Console

from choreo.bus import inspect, keys as bus_keys
from choreo.bus.connect import open_bus
from choreo.ops import dashboard, exporter
from choreo.ops.dashboard import NodeRow, Snapshot, heights, render
from choreo.workers import keys
from tests.conftest import BIN, ROOT
from tests.helpers import FIGURES, wait_for
# The cluster's fixtures: a flushed cluster client with the layout of eight partitions, and
# subprocesses on it with rq on the plain throwaway server.
from tests.test_cluster import (PARTITIONS, audit_clean, cluster, drained, layout,  # noqa: F401
                                on_cluster, statuses)

PROCFILE_PROCESSES = 6        # order, inventory, payment, shipping, timers, trimmer


def screen(s: Snapshot, width: int = 160) -> str:
    console = Console(record=True, width=width, height=sum(heights(s)), color_system=None)
    console.print(render(s))
    return console.export_text()


def nodes_panel(text: str) -> list[list[str]]:
    """The rows of the nodes panel, cells split on blanks."""
    panel = text.split("─ nodes ─", 1)[1].split("╰", 1)[0]
    return [line.strip("│ ").split() for line in panel.splitlines()[3:] if line.strip("│ ")]


# -- render (no Redis) -----------------------------------------------------------------------------

def test_render_shows_a_nodes_band_only_for_a_cluster():
    nodes = [NodeRow("10.0.0.1:7000", "primary", "-", "fail", 0, []),
             NodeRow("10.0.0.2:7001", "primary", "-", "connected", 5461, [3, 7]),
             NodeRow("10.0.0.3:7003", "replica", "10.0.0.2:7001", "connected", 0, [])]
    text = screen(Snapshot(url="redis://n1:7000/0?cluster=true", partitions=8, nodes=nodes))
    assert nodes_panel(text) == [["10.0.0.1:7000", "primary", "-", "fail", "0", "-"],
                                 ["10.0.0.2:7001", "primary", "-", "connected", "5461", "p3", "p7"],
                                 ["10.0.0.3:7003", "replica", "10.0.0.2:7001", "connected", "0", "-"]]
    plain = Snapshot(url="redis://localhost:6379/0")
    assert "─ nodes ─" not in screen(plain) and heights(plain)[3] == 0


def test_nodes_of_reads_roles_links_slots_and_leaves_migrating_slots_out():
    reply = {"127.0.0.1:7001": {"node_id": "b", "flags": "myself,master", "master_id": "-",
                                "connected": True, "slots": [["0", "5460"], ["6000"]]},
             "127.0.0.1:7000": {"node_id": "a", "flags": "master,fail", "master_id": "-",
                                "connected": False, "slots": []},
             "127.0.0.1:7003": {"node_id": "c", "flags": "slave,fail?", "master_id": "b",
                                "connected": True, "slots": []}}
    found = inspect.nodes_of(reply)
    assert [(n.address, n.role, n.primary_id, n.link, n.slots) for n in found] == [
        ("127.0.0.1:7000", "primary", "", "fail", 0),
        ("127.0.0.1:7001", "primary", "", "connected", 5462),
        ("127.0.0.1:7003", "replica", "b", "pfail", 0)]


# -- on the real cluster ---------------------------------------------------------------------------

def nodes_by_address(snap: Snapshot) -> dict[str, NodeRow]:
    return {n.address: n for n in snap.nodes}


def check_partitions_where_their_keys_land(snap: Snapshot, client) -> None:
    """Each partition on exactly one live primary: the one its streams' slot is on."""
    serving = {p: n.address for n in snap.nodes for p in n.partitions}
    assert sorted(serving) == list(range(PARTITIONS))
    assert sum(len(n.partitions) for n in snap.nodes) == PARTITIONS
    for p, address in serving.items():
        node = client.get_node_from_key(bus_keys.stream("OrderCreated", p))
        assert f"{node.host}:{node.port}" == address, p
        assert inspect.slot_of(bus_keys.stream("OrderCreated", p)) == client.keyslot(bus_keys.stream("OrderCreated", p))


def test_the_dashboard_shows_the_clusters_nodes_and_a_failover(redis_cluster, cluster):
    bus = open_bus(redis_cluster.url)
    try:
        snap = dashboard.gather(bus, redis_cluster.url)
        nodes = nodes_by_address(snap)
        assert len(nodes) == 6
        primaries = [n for n in nodes.values() if n.role == "primary"]
        replicas = [n for n in nodes.values() if n.role == "replica"]
        assert len(primaries) == 3 and len(replicas) == 3
        assert {n.link for n in nodes.values()} == {"connected"}
        assert sum(n.slots for n in primaries) == 16384 and all(n.slots == 0 for n in replicas)
        assert sorted(r.follows for r in replicas) == sorted(p.address for p in primaries)
        check_partitions_where_their_keys_land(snap, cluster)
        assert json.loads(snap.to_json())["nodes"][0].keys() == {"address", "role", "follows", "link",
                                                                  "slots", "partitions"}
        panel = nodes_panel(screen(snap))
        assert [row[0] for row in panel] == list(nodes)

        # Kill the primary that serves the most partitions: its replica takes them over.
        victim_row = max(primaries, key=lambda n: len(n.partitions))
        victim = int(victim_row.address.rsplit(":", 1)[1])
        redis_cluster.kill_primary(victim)
        try:
            promoted = redis_cluster.wait_failover(victim)
            # wait_failover: every surviving node sees it failed, so whichever answers says so.
            after = nodes_by_address(dashboard.gather(bus, redis_cluster.url))
            killed, took_over = after[victim_row.address], after[f"127.0.0.1:{promoted}"]
            assert killed.link == "fail" and killed.slots == 0 and killed.partitions == []
            assert took_over.role == "primary" and took_over.follows == "-"
            assert took_over.partitions == victim_row.partitions and took_over.slots == victim_row.slots
            # A new client: the fixture's still has the slot map from before the failover.
            with RedisCluster.from_url(redis_cluster.url.replace("/0?cluster=true", "")) as fresh:
                check_partitions_where_their_keys_land(dashboard.gather(bus, redis_cluster.url), fresh)
            families = {f.name: f for f in exporter.fleet_metrics(dashboard.gather(bus, redis_cluster.url))}
            up = {tuple(s.labels.values()): s.value for s in families["choreo_cluster_node_up"].samples}
            assert up[(victim_row.address, "primary")] == 0
            assert up[(f"127.0.0.1:{promoted}", "primary")] == 1
            assert sum(up.values()) == 5
        finally:
            redis_cluster.restart(victim)
        # Back as a replica of the node that took its slots over.
        back = nodes_by_address(dashboard.gather(bus, redis_cluster.url))[victim_row.address]
        assert back.role == "replica" and back.follows == f"127.0.0.1:{promoted}" and back.link == "connected"
    finally:
        bus.close()


def test_once_and_json_on_a_cluster_show_the_nodes(on_cluster, cluster):
    answer = on_cluster.run("dashboard", "--json", "--refresh", "0.1", timeout=60)
    assert answer.returncode == 0, answer.stderr
    snap = json.loads(answer.stdout)
    assert len(snap["nodes"]) == 6 and snap["partitions"] == PARTITIONS
    assert sorted(p for n in snap["nodes"] for p in n["partitions"]) == list(range(PARTITIONS))
    frame = on_cluster.run("dashboard", "--once", "--refresh", "0.1", timeout=60)
    assert frame.returncode == 0, frame.stderr
    assert "─ nodes ─" in frame.stdout and "─ partitions ─" in frame.stdout
    for n in snap["nodes"]:
        assert n["address"] in frame.stdout


def test_off_a_cluster_the_snapshot_has_no_nodes(real_bus, redis_url):
    snap = dashboard.gather(real_bus, redis_url)
    assert snap.nodes == [] and "─ nodes ─" not in screen(snap)
    assert not any(f.name.startswith("choreo_cluster") for f in exporter.fleet_metrics(snap))


# -- honcho on the cluster -------------------------------------------------------------------------

def test_honcho_runs_the_procfile_on_a_cluster_and_stops_cleanly(on_cluster, cluster, tmp_path):
    """`honcho start` from the project root, as docs/cluster.md says: the same Procfile, with
    REDIS_URL on the cluster, eight partitions and rq on a plain Redis. (.env only sets
    PYTHONUNBUFFERED=1, which honcho would put over ours: the same value.)"""
    log = open(tmp_path / "honcho.log", "w")
    honcho = subprocess.Popen([str(BIN / "honcho"), "start"], cwd=ROOT, env=on_cluster.env(),
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: cluster.exists(keys.stock(101)), timeout=30, what="inventory seeded its stock")
        placed = on_cluster.run("place-order", "--product", "101", "--quantity", "1")
        assert placed.returncode == 0, placed.stderr
        order_id = placed.stdout.strip()
        wait_for(lambda: statuses(cluster).get(order_id) == "COMPLETED", timeout=60,
                 what=f"order {order_id} completed")
        done = on_cluster.run("load", "--orders", "200", "--timeout", "120", timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        m = FIGURES.match(done.stdout.strip().splitlines()[-1])
        assert m and m.groups()[:2] == ("200", "200"), done.stdout
        wait_for(lambda: drained(cluster), timeout=60, what="every group drained")
        assert list(statuses(cluster).values()).count("COMPLETED") == 201
        print("\naudit:", audit_clean(on_cluster))
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        honcho.wait(20)
    output = open(tmp_path / "honcho.log").read()
    assert output.count("started (pid=") == PROCFILE_PROCESSES, output[-3000:]
    assert output.count("stopped (rc=0)") == PROCFILE_PROCESSES, output[-3000:]
    # and nothing of the process group outlives honcho
    try:
        os.killpg(honcho.pid, 0)
        survivors = True
    except ProcessLookupError:
        survivors = False
    assert not survivors

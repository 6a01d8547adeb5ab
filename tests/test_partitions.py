"""The operator tools with partitions (bus.layout, CHOREO_PARTITIONS=4) on a real redis-server:
the saga's keys land in their orders' partitions, and status, trace, audit, the dashboard, dlq,
trim and the ACL rules see every partition."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from choreo.bus import dead_letters, inspect, keys as bus_keys, layout
from choreo.bus.contract import Delivery
from choreo.bus.dead_letters import DeadLetter
from choreo.bus.envelope import Envelope
from choreo.cli import main
from choreo.measure.endings import EndingWatch
from choreo.ops import dashboard
from choreo.ops.audit import run_audit
from choreo.orders import OrderRequest, place_orders
from choreo.workers import SERVICES, keys
from tests.inprocess import drain, start_workers

PARTITIONS = 4
ORDERS = 32


@pytest.fixture
def four():
    """Every key of this test in four partitions; the layout before it is put back after."""
    previous = layout.use(layout.Layout(partitions=PARTITIONS))
    yield
    layout.use(previous)


def cli(capsys, *argv: str, url: str) -> tuple[int, str, str]:
    code = main([*argv, "--redis-url", url])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def saga(four, real_bus):
    """ORDERS orders run to their ends by the four services in-process; their ids."""
    workers = start_workers(real_bus)
    ids = [str(i) for i in range(1, ORDERS + 1)]
    # Every fourth order asks for more than a card allows: cancelled, with a refund.
    place_orders(real_bus, [OrderRequest(i, [{"product_id": 102 if int(i) % 4 == 0 else 101,
                                              "quantity": 101 if int(i) % 4 == 0 else 1}])
                            for i in ids])
    drain(workers)
    return ids


def test_an_orders_keys_carry_its_partitions_tag(saga, real_bus):
    c = real_bus.client
    lay = layout.current()
    assert len({lay.partition_of(i) for i in saga}) == PARTITIONS      # 32 ids reach all four
    for oid in saga:
        tag = f"{{p{lay.partition_of(oid)}}}:"
        assert keys.order(oid).split(":", 1)[1].startswith(tag) and c.exists(keys.order(oid))
        # The payment, filed once final (charged and shipped, or refunded): its bucket is tagged
        # too, in the same slot; a declined one keeps its key.
        pay = keys.payment(oid)
        where, field = (pay, None) if c.exists(pay) else bus_keys.filed(pay)
        assert where.split(":", 1)[1].startswith(tag) and c.exists(where), where
        assert field is None or c.hexists(where, field)
        assert bus_keys.trace(oid).split(":", 1)[1].startswith(tag)
        assert c.zscore(keys.of_order(keys.orders_index, oid), oid) is not None
        # Its events are listed in the services' records of it, in its partition too.
        first = inspect.trace_refs(real_bus, keys.order(oid))[0][0]
        assert first == f"events:{tag}OrderCreated"
    assert not c.exists("events:OrderCreated", "orders:index", "order:1")      # nothing untagged


def test_status_trace_and_strict_audit_see_every_partition(saga, real_bus, redis_url, capsys):
    for oid in ("1", "4"):          # one completes, one is cancelled and refunded
        code, out, _ = cli(capsys, "status", oid, url=redis_url)
        assert code == 0 and out.startswith(f"order {oid}: {'COMPLETED' if oid == '1' else 'CANCELLED'}")
        code, out, _ = cli(capsys, "trace", oid, url=redis_url)
        tag = f"{{p{layout.current().partition_of(oid)}}}"
        assert code == 0 and f"events:{tag}:OrderCreated" in out and "not yet handled" not in out
        assert "[handled]" in out or oid == "1"
    lines: list[str] = []
    assert run_audit(real_bus, SERVICES.values(), True, lines.append, lines.append) == 0, lines
    assert lines[-1].startswith(f"audit clean: {ORDERS} orders (CANCELLED=8 COMPLETED=24)")


def test_audit_sums_the_partitions_aggregates_and_names_a_misplaced_index_entry(saga, real_bus):
    c = real_bus.client
    wrong = next(p for p in range(PARTITIONS) if p != layout.current().partition_of("1"))
    c.zadd(keys.orders_index(wrong), {"1": 1})
    c.hincrby(keys.orders_by_status(wrong), "COMPLETED", 1)
    lines: list[str] = []
    assert run_audit(real_bus, SERVICES.values(), True, lines.append, lines.append) == 1
    assert f"VIOLATION order 1: in {keys.orders_index(wrong)} but it belongs in " \
           f"{keys.of_order(keys.orders_index, '1')}" in lines
    assert "VIOLATION orders:{p*}:by_status: COMPLETED=25 but 24 order hashes are COMPLETED" in lines


def test_the_dashboard_adds_up_partitions_and_shows_each(saga, real_bus, redis_url):
    snap = dashboard.gather(real_bus, redis_url)
    assert snap.partitions == PARTITIONS
    assert snap.orders.by_status == {"COMPLETED": 24, "CANCELLED": 8}
    assert snap.orders.sampled == 24                     # newest orders merged over the indexes
    created = [r for r in snap.streams if bus_keys.event_type_of(r.stream) == "OrderCreated"]
    assert len(created) == PARTITIONS and sum(r.length for r in created) == ORDERS
    console = Console(record=True, width=200)
    console.print(dashboard.render(snap), height=sum(dashboard.heights(snap)))
    screen = console.export_text()
    assert re.search(r"events:\{p\*\}:OrderCreated\s+32\b", screen)
    assert re.search(r"events:\{p\*\}:OrderCreated\s+inventory\s+\S+\s+0\s+0", screen)
    for p in range(PARTITIONS):
        # in-process workers keep no heartbeat: nobody counts as reading
        assert re.search(rf"\bp{p}\s+\d+\s+\S+\s+0\s+0\s+NO CONSUMERS", screen), screen
    assert "events:{p0}:OrderCreated" not in screen.split("recent events")[0].split("partitions")[0]


def dead_letter(client, oid: str) -> tuple[str, str]:
    """A valid OrderCreated for `oid` on its partition's stream, dead-lettered by inventory (as
    the runtime writes it, on the dlq stream of the same partition); (stream, dlq id)."""
    fields = Envelope.new("OrderCreated", oid, "order", {"lines": [{"product_id": 101, "quantity": 1}],
                                                        "total_cents": 1999}).fields()
    stream = bus_keys.stream_for("OrderCreated", oid)
    entry_id = client.xadd(stream, fields)
    letter = DeadLetter.of("inventory", Delivery(stream, entry_id, fields, deliveries=6),
                           "gave up", "2024-01-01T00:00:00.000Z")
    return stream, client.xadd(letter.publish_op(100).stream, letter.to_fields())


def test_dlq_lists_shows_replays_and_purges_every_partition(four, real_bus, redis_url, capsys):
    c = real_bus.client
    ids = ["a1", "b2", "c3", "d4", "e5", "f6"]
    assert len({layout.current().partition_of(i) for i in ids}) > 1
    made = {oid: dead_letter(c, oid) for oid in ids}
    assert dead_letters.count(real_bus, "inventory") == len(ids)

    code, out, _ = cli(capsys, "dlq", "list", "inventory", url=redis_url)
    assert code == 0 and f"dlq:{{p*}}:inventory: {len(ids)} dead letter(s)" in out
    for oid, (stream, dlq_id) in made.items():
        ref = f"inventory/p{bus_keys.partition_of(stream)}/{dlq_id}"
        assert f"{ref}  {stream} " in out
        assert cli(capsys, "dlq", "show", ref, url=redis_url)[0] == 0

    code, out, err = cli(capsys, "dlq", "replay", "inventory", "--all", url=redis_url)
    assert code == 0, err
    for oid, (stream, _) in made.items():
        assert re.search(rf"replayed inventory/p\d/\S+ to {re.escape(stream)} as ", out)
        assert c.xlen(stream) >= 2                       # put back on the stream it came from
    assert dead_letters.count(real_bus, "inventory") == 0

    for oid in ids[:3]:
        dead_letter(c, oid)
    code, out, _ = cli(capsys, "dlq", "purge", "inventory", "--yes", url=redis_url)
    assert code == 0 and "purged 3 dead letter(s) from dlq:{p*}:inventory" in out
    assert not any(c.exists(k) for k in bus_keys.all_dead_letters("inventory"))


def test_a_bare_id_held_by_two_partitions_is_refused_naming_both(four, real_bus, redis_url, capsys):
    c = real_bus.client
    first, second = bus_keys.all_dead_letters("payment")[:2]
    for key in (first, second):
        c.xadd(key, {"stream": key.replace("dlq:", "events:").replace("payment", "OrderCreated"),
                     "entry_id": "1-0", "group": "payment"}, id="5-0")
    code, _, err = cli(capsys, "dlq", "show", "payment/5-0", url=redis_url)
    assert code == 1 and "payment/p0/5-0, payment/p1/5-0" in err
    assert cli(capsys, "dlq", "show", "payment/p1/5-0", url=redis_url)[0] == 0


def test_trim_trims_every_partitions_streams(saga, real_bus, redis_url, capsys):
    c = real_bus.client
    code, out, _ = cli(capsys, "trim", url=redis_url)
    assert code == 0
    for stream in bus_keys.streams("OrderCreated"):
        assert re.search(rf"{re.escape(stream)}: trimmed [1-9]\d* entries", out), out
        assert c.xlen(stream) == 0
    # Only orders created longer ago than the retention (a day) are looked at.
    assert "orders:{p*}:index: pruned 0 expired orders" in out


def test_trim_prunes_each_partitions_index_into_its_own_counter(saga, real_bus, redis_url, capsys):
    c = real_bus.client
    for oid in saga:                # as if every order were long gone: created in 1970, expired
        c.zadd(keys.of_order(keys.orders_index, oid), {oid: 1}, xx=True)
        c.delete(keys.order(oid))
    assert main(["trim", "--redis-url", redis_url]) == 0
    assert f"orders:{{p*}}:index: pruned {ORDERS} expired orders" in capsys.readouterr().out
    counts = [int(c.get(keys.orders_expired(p)) or 0) for p in range(PARTITIONS)]
    assert sum(counts) == ORDERS and all(counts)
    assert not any(c.zcard(k) for k in keys.every(keys.orders_index))


def test_load_learns_endings_from_every_partitions_streams(four, real_bus):
    workers = start_workers(real_bus)
    ids = [f"w{i}" for i in range(12)]
    watch = EndingWatch.start(real_bus, ids)
    place_orders(real_bus, [OrderRequest(i, [{"product_id": 101, "quantity": 1}]) for i in ids])
    drain(workers)
    watch.read(real_bus, block_ms=50)
    assert watch.by_status() == {"COMPLETED": len(ids)}
    assert len({bus_keys.partition_of(s) for s in watch.cursors}) == PARTITIONS


def test_acl_rules_name_every_partition_with_one_pattern(four):
    from choreo.ops.acl import roles
    rules = {r.user: " ".join(g.rule() for g in r.grants) for r in roles(list(SERVICES.values()))}
    assert "~events:{p*}:OrderCreated" in rules["inventory"]
    assert "~dlq:{p*}:inventory" in rules["inventory"] and "~seen:{p*}:inventory" in rules["inventory"]
    assert "~heartbeat:{inventory}:*" in rules["inventory"] and "~trace:{p*}:*" in rules["order"]
    assert "~orders:{p*}:index" in rules["trimmer"] and "%R~order:{p*}:*" in rules["trimmer"]
    assert "{p0}" not in " ".join(rules.values())


def test_the_saga_runs_on_acl_users_rendered_for_four_partitions(tmp_path):
    """Every process a subprocess with CHOREO_PARTITIONS=4 on its own user, as test_acl's run
    with one partition: nobody is refused anything, and the operator verbs read every partition."""
    import subprocess
    from tests.conftest import BIN, ROOT, Processes
    from tests.helpers import wait_for
    from tests.redis_server import RedisServer
    from tests.test_acl import PASSWORDS, USERS
    env = {"PATH": str(BIN), "CHOREO_PARTITIONS": str(PARTITIONS),
           **{f"CHOREO_ACL_PASSWORD_{u.upper()}": p for u, p in PASSWORDS.items()}}
    rendered = subprocess.run([str(BIN / "choreo"), "acl", "render"], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=30)
    assert rendered.returncode == 0 and "~events:{p*}:OrderCreated" in rendered.stdout, rendered.stderr
    (tmp_path / "users.acl").write_text(rendered.stdout)
    server = RedisServer(tmp_path / "redis", extra=("--aclfile", str(tmp_path / "users.acl")),
                         auth=("admin", PASSWORDS["admin"])).start()
    procs = Processes(server.url_for("admin", PASSWORDS["admin"]), tmp_path)
    procs.base_env["CHOREO_PARTITIONS"] = str(PARTITIONS)
    for user in USERS:
        procs.base_env[f"REDIS_URL_{user.upper()}"] = server.url_for(user, PASSWORDS[user])
    procs.base_env.pop("REDIS_URL")
    try:
        admin = server.client()
        for name in SERVICES:
            procs.worker(name)
        procs.start("timers", name="timers")
        procs.start("trim", "--every", "0.5", name="trimmer")
        placed = [procs.run("place-order", "--product", "101", "--quantity", "1") for _ in range(8)]
        assert all(p.returncode == 0 for p in placed), [p.stderr for p in placed]
        previous = layout.use(layout.Layout(partitions=PARTITIONS))
        try:
            ids = [p.stdout.strip() for p in placed]
            assert len({layout.current().partition_of(i) for i in ids}) > 1
            wait_for(lambda: all(admin.hget(keys.order(i), "status") == "COMPLETED" for i in ids),
                     what="every order completed")
        finally:
            layout.use(previous)
        for verb in (("status", ids[0]), ("trace", ids[0]), ("dashboard", "--once", "--refresh", "0.1"),
                     ("dlq", "list")):
            answer = procs.run(*verb)
            assert answer.returncode == 0, (verb, answer.stderr)
        wait_for(lambda: procs.run("audit", "--strict").returncode == 0, timeout=20, what="audit clean")
        assert all(p.poll() is None for p in procs.procs), "a process died"
        denied = admin.execute_command("ACL", "LOG")
        assert not denied, [(d["username"], d["object"]) for d in denied]
        check = procs.run("acl", "check")
        assert check.returncode == 0 and " 0 mismatches" in check.stdout, check.stdout[-3000:]
    finally:
        procs.stop_all()
        server.stop()


def test_an_event_on_another_partitions_stream_is_dead_lettered_not_committed(four, real_bus):
    """Its commit would touch the order's partition while acking another's (on a cluster, two
    slots): refused before handling, with the stream it belongs on."""
    workers = start_workers(real_bus)
    home = layout.current().partition_of("1")
    away = (home + 1) % PARTITIONS
    e = Envelope.new("OrderCreated", "1", "order", {"lines": [{"product_id": 101, "quantity": 1}],
                                                     "total_cents": 1999})
    real_bus.client.xadd(bus_keys.stream("OrderCreated", away), e.fields())
    drain(workers)
    letters = dead_letters.read_all(real_bus, "inventory")
    assert [l.stream for l in letters] == [bus_keys.stream("OrderCreated", away)]
    assert f"belongs on {bus_keys.stream('OrderCreated', home)}" in letters[0].error
    assert not real_bus.client.exists(keys.reservation("1"))


def test_workers_split_over_the_partitions_finish_every_order(tmp_path, redis_url):
    """`choreo worker SERVICE --partitions 0-1` and `2-3`, two processes per service: together
    they serve all four partitions, each reads only its own (nothing of another partition ever
    appears in its log), and every order completes."""
    from tests.conftest import Processes
    from tests.helpers import wait_for
    procs = Processes(redis_url, tmp_path)
    procs.base_env["CHOREO_PARTITIONS"] = str(PARTITIONS)
    try:
        for name in SERVICES:
            procs.start("worker", name, "--partitions", "0-1", name=f"{name}.1", CHOREO_SLOT=1)
            procs.start("worker", name, "--partitions", "2,3", name=f"{name}.2", CHOREO_SLOT=2)
        load = procs.run("load", "--orders", "40", "--deadline", "60", "--timeout", "60", timeout=90)
        assert load.returncode == 0, load.stdout + load.stderr
        assert "orders=40 completed=40 " in load.stdout
    finally:
        procs.stop_all()
    for name in SERVICES:
        for slot, mine, shown in ((1, ("{p0}", "{p1}"), "0-1"), (2, ("{p2}", "{p3}"), "2-3")):
            log = next(tmp_path.glob(f"{name}.{slot}-*.log")).read_text()
            assert f"(partitions {shown} of 4)" in log
            seen = set(re.findall(r"stream=events:(\{p\d\})", log))
            assert seen and seen <= set(mine), (name, slot, seen)


def test_a_partition_beyond_the_count_is_one_line_and_exit_2(capsys, redis_url, monkeypatch):
    monkeypatch.setenv("CHOREO_PARTITIONS", "4")
    layout.use(None)
    try:
        code, out, err = cli(capsys, "worker", "order", "--partitions", "2-4", url=redis_url)
    finally:
        layout.use(None)
    assert code == 2
    assert "there is no partition 4: CHOREO_PARTITIONS=4 gives 0..3" in err


def test_every_writer_and_reader_agrees_on_the_partition_count(real_bus, redis_url, capsys):
    """A deployment of four partitions, and processes that forgot CHOREO_PARTITIONS: a command of
    the user's own (open_bus, then bus.commit) would publish on a stream no worker reads, and a
    reader would find none of the deployment's keys (an audit clean of nothing). Each refuses,
    naming both counts; nothing is written."""
    from choreo.bus.connect import open_bus
    from choreo.bus.contract import Commit
    from choreo.bus.ops import Publish
    c = real_bus.client
    c.set(bus_keys.PARTITIONS, str(PARTITIONS))
    says = f"laid out for CHOREO_PARTITIONS={PARTITIONS} ({bus_keys.PARTITIONS}), this process has 1"
    with pytest.raises(layout.LayoutError, match=re.escape(says)):
        open_bus(redis_url)                                 # a reader: asked when it opens
    writer = open_bus(redis_url, check=False)               # a writer that did not ask: its commit does
    with pytest.raises(layout.LayoutError, match=re.escape(says)):
        writer.commit("", [Commit(ops=[Publish(bus_keys.stream("OrderCreated"), {"f": "v"})])])
    writer.close()
    assert sorted(c.keys()) == [bus_keys.PARTITIONS]
    for verb in (["audit", "--strict"], ["health", "order"], ["dlq", "list"], ["status", "1"],
                 ["trace", "1"], ["dashboard", "--json", "--refresh", "0.1"]):
        code, out, err = cli(capsys, *verb, url=redis_url)
        assert (code, out) == (2, ""), verb
        assert err.strip().splitlines() == [f"choreo: this deployment's keys are {says}: every process "
                                            f"must agree (to change it, see docs/cluster.md, "
                                            f"\"Choosing P, and changing it\")"], verb
    # The exporter and the live dashboard open the bus unchecked (they wait out an outage):
    # they check when Redis answers at start, and at each read.
    from choreo.measure.redis_server import free_port
    from choreo.ops.exporter import FleetCollector
    import subprocess
    from tests.conftest import BIN
    exporter = subprocess.run([str(BIN / "choreo"), "exporter", "--port", str(free_port()),
                               "--redis-url", redis_url], capture_output=True, text=True, timeout=30)
    assert exporter.returncode == 2 and says in exporter.stderr
    errors = []
    with open_bus(redis_url, check=False) as unchecked:
        scraped = list(FleetCollector(unchecked, redis_url, on_error=errors.append).collect())
    assert [m.name for m in scraped] == ["choreo_redis_up"] and scraped[0].samples[0].value == 0
    assert says in errors[0]
    # The first writer of a new deployment records its count: later processes meet it.
    c.delete(bus_keys.PARTITIONS)
    first = open_bus(redis_url)
    first.commit("", [Commit(ops=[Publish(bus_keys.stream("OrderCreated"), {"f": "v"})])])
    assert c.get(bus_keys.PARTITIONS) == "1"
    first.close()


def test_replay_by_id_takes_the_name_dlq_list_prints_and_refuses_another_services(
        four, real_bus, redis_url, capsys):
    stream, dlq_id = dead_letter(real_bus.client, "a1")
    full = f"inventory/p{bus_keys.partition_of(stream)}/{dlq_id}"
    for ref in (f"payment/p{bus_keys.partition_of(stream)}/{dlq_id}",):
        code, _, err = cli(capsys, "dlq", "replay", "inventory", "--id", ref, "--dry-run", url=redis_url)
        assert code == 1 and "is a dead letter of payment, not inventory" in err
    for ref in (full, full.split("/", 1)[1], dlq_id):
        code, out, err = cli(capsys, "dlq", "replay", "inventory", "--id", ref, "--dry-run", url=redis_url)
        assert code == 0 and f"would replay {full} to {stream}" in out, (ref, err)


def test_a_process_whose_partition_count_disagrees_refuses_to_write(tmp_path, redis_url):
    """The first writer records CHOREO_PARTITIONS (choreo:partitions); a place-order, load,
    worker or timers process with another count is one line and exit 2, writing nothing."""
    from tests.conftest import Processes
    procs = Processes(redis_url, tmp_path)
    procs.base_env["CHOREO_PARTITIONS"] = "4"
    try:
        first = procs.run("place-order", "--product", "101", "--quantity", "1")
        assert first.returncode == 0, first.stderr
        for verb in (("place-order", "--product", "101", "--quantity", "1"),
                     ("load", "--orders", "1"), ("worker", "order"), ("timers",)):
            other = procs.run(*verb, CHOREO_PARTITIONS="2", timeout=30)
            assert other.returncode == 2, (verb, other.stdout, other.stderr)
            assert ("laid out for CHOREO_PARTITIONS=4 (choreo:partitions), this process has 2"
                    in other.stderr), (verb, other.stderr)
    finally:
        procs.stop_all()
    from redis import Redis
    r = Redis.from_url(redis_url, decode_responses=True)
    assert r.get("choreo:partitions") == "4" and r.get("orders:seq") == "1"


def test_one_server_reads_every_partition_in_one_xreadgroup_that_blocks(four, real_bus):
    """Idle workers with partitions on one server wait in Redis, as with one partition: a read
    of all four partitions' streams is one XREADGROUP that blocks (not one per partition, polled
    every few ms), and an entry published on any partition while it waits is returned."""
    import threading
    streams = [bus_keys.stream("OrderCreated", p) for p in range(PARTITIONS)]
    real_bus.ensure_groups("inventory", streams)

    def reads() -> int:
        return int(real_bus.client.info("commandstats").get("cmdstat_xreadgroup", {}).get("calls", 0))

    before = reads()
    assert real_bus.read_new("inventory", "c", streams, 10, 200) == []
    assert reads() - before == 1
    e = Envelope.new("OrderCreated", "7", "order", {"lines": [{"product_id": 101, "quantity": 1}],
                                                     "total_cents": 1999})
    home = bus_keys.stream_for("OrderCreated", "7")
    later = threading.Timer(0.3, lambda: real_bus.client.xadd(home, e.fields()))
    later.start()
    try:
        [got] = real_bus.read_new("inventory", "c", streams, 10, 30_000)
    finally:
        later.cancel()
    assert got.stream == home and got.fields["id"] == e.id
    assert reads() - before == 2


def test_one_server_watches_every_partition_in_one_xread_that_blocks(four, real_bus):
    """The loader's watch of the streams that end orders (bus.inspect.read_after), likewise."""
    import threading
    from choreo.bus import inspect
    streams = {bus_keys.stream("ShippingArranged", p): "0-0" for p in range(PARTITIONS)}

    def reads() -> int:
        return int(real_bus.client.info("commandstats").get("cmdstat_xread", {}).get("calls", 0))

    before = reads()
    e = Envelope.new("ShippingArranged", "7", "shipping", {"tracking_id": "T"})
    home = bus_keys.stream_for("ShippingArranged", "7")
    later = threading.Timer(0.3, lambda: real_bus.client.xadd(home, e.fields()))
    later.start()
    try:
        [got] = inspect.read_after(real_bus, streams, 10, block_ms=30_000)
    finally:
        later.cancel()
    assert got.stream == home and reads() - before == 1

"""Least privilege on a real redis-server loaded with `choreo acl render`'s rules: the saga runs
with every process on its own user, `choreo acl check` is clean, and each user is refused (NOPERM)
what it must not do — checked by really trying, not only by asking ACL DRYRUN."""

from __future__ import annotations

import os
import subprocess

import pytest
import redis

from choreo.bus import keys as bus_keys
from choreo.bus.envelope import Envelope
from choreo.bus.ops import DropFields, Publish, SetFields
from choreo.ops.acl import roles
from tests.conftest import BIN, ROOT, Processes
from tests.helpers import wait_for
from tests.redis_server import RedisServer
from choreo.workers import SERVICES, keys

USERS = [r.user for r in roles(list(SERVICES.values()))]
PASSWORDS = {u: f"pw-{u}-0123456789" for u in USERS}


def render(tmp_path) -> str:
    env = {f"CHOREO_ACL_PASSWORD_{u.upper()}": p for u, p in PASSWORDS.items()}
    # Nothing of this environment but PYTHONPATH (scripts/mutate.py puts its copy there).
    keep = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
    done = subprocess.run([str(BIN / "choreo"), "acl", "render"], capture_output=True, text=True,
                          env={"PATH": str(BIN), **keep, **env}, cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stderr
    assert not any(p in done.stdout for p in PASSWORDS.values())      # hashes only
    path = tmp_path / "users.acl"
    path.write_text(done.stdout)
    return str(path)


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("acl")
    server = RedisServer(workdir, extra=("--aclfile", render(workdir)),
                         auth=("admin", PASSWORDS["admin"])).start()
    yield server
    server.stop()


@pytest.fixture
def acl_procs(acl_server, tmp_path):
    acl_server.client().flushall()
    procs = Processes(acl_server.url_for("admin", PASSWORDS["admin"]), tmp_path)
    for user in USERS:
        procs.base_env[f"REDIS_URL_{user.upper()}"] = acl_server.url_for(user, PASSWORDS[user])
    procs.base_env.pop("REDIS_URL")        # no process may fall back to a shared URL
    yield procs
    procs.stop_all()


def as_user(server, user: str) -> redis.Redis:
    return redis.Redis(port=server.port, username=user, password=PASSWORDS[user], decode_responses=True)


def test_the_saga_runs_with_every_process_on_its_own_user(acl_server, acl_procs):
    admin = acl_server.client()
    # A retention of 1 s, so the trimmer really prunes orders:index under its own user.
    for name in SERVICES:
        acl_procs.worker(name, CHOREO_RETENTION_S=1)
    acl_procs.start("timers", name="timers")
    acl_procs.start("trim", "--every", "0.5", name="trimmer", CHOREO_RETENTION_S=1)
    # How many orders ended in each status (the records themselves go 1 s after their end: a
    # busy machine may take longer than that to look).
    def ended(*statuses: str) -> int:
        return sum(int(admin.hget(k, s) or 0) for k in keys.every(keys.orders_by_status) for s in statuses)
    done = acl_procs.run("place-order", "--product", "101", "--quantity", "1")
    assert done.returncode == 0, done.stderr
    order_id = done.stdout.strip()
    wait_for(lambda: ended("COMPLETED") == 1, what="completed")
    late = acl_procs.run("place-order", "--product", "101", "--quantity", "1", "--deadline", "0.5")
    assert late.returncode == 0, late.stderr
    wait_for(lambda: ended("COMPLETED", "CANCELLED") == 2, what="the order with a short deadline ends")
    for verb in (("status", order_id), ("trace", order_id)):       # expired or not: read, never refused
        answer = acl_procs.run(*verb)
        assert answer.returncode in (0, 1) and "permission" not in answer.stderr, (verb, answer.stderr)
    wait_for(lambda: admin.get("orders:expired") == "2", timeout=20, what="both pruned by the trimmer")
    for verb in (("dashboard", "--once", "--refresh", "0.1"), ("audit",), ("dlq", "list")):
        answer = acl_procs.run(*verb)
        assert answer.returncode == 0, (verb, answer.stderr)
    assert all(p.poll() is None for p in acl_procs.procs), "a process died"
    assert not any(admin.xlen(bus_keys.dead_letters(s)) for s in SERVICES)
    denied = admin.execute_command("ACL", "LOG")
    assert not denied, [(d["username"], d["object"]) for d in denied]  # nobody was refused anything
    check = acl_procs.run("acl", "check")
    assert check.returncode == 0, check.stdout[-3000:]
    assert " 0 mismatches" in check.stdout


def test_a_worker_missing_one_permission_refuses_to_start_naming_it(acl_server, acl_procs):
    admin = acl_server.client()
    admin.execute_command("ACL", "SETUSER", "inventory", "clearselectors")     # all its keys gone
    try:
        answer = acl_procs.run("worker", "inventory", timeout=30)
        assert answer.returncode == 1
        assert "lacks" in answer.stderr and "XADD events:InventoryChecked" in answer.stderr
        assert not admin.exists(bus_keys.stream("OrderCreated"))           # nothing half done
        check = acl_procs.run("acl", "check")
        assert check.returncode == 1 and "MISMATCH" in check.stdout
    finally:
        admin.execute_command("ACL", "LOAD")


def test_a_wrong_password_is_said_as_such_and_a_worker_with_it_stops(acl_server, acl_procs):
    """Not "cannot reach Redis … start one": the server is there and refuses the credentials,
    which no retry mends, so a worker stops in one line rather than wait as for an outage."""
    wrong = acl_server.url_for("payment", "not-its-password")
    for argv in (("status", "1"), ("dashboard", "--once", "--refresh", "0.1"), ("worker", "payment")):
        answer = acl_procs.run(*argv, "--redis-url", wrong, timeout=30)
        assert answer.returncode == 1, argv
        (line,) = [x for x in answer.stderr.splitlines() if x.startswith("choreo: ")]
        assert "refused the user name and password (invalid username-password pair" in line, argv
        assert "not-its-password" not in answer.stderr + answer.stdout and "Traceback" not in answer.stderr
        if argv[0] != "worker":
            assert answer.stderr.splitlines() == [line] and "payment:***@" in line and "REDIS_URL" in line


def test_processes_waiting_for_replicas_may_wait_on_their_own_users(acl_server, acl_procs):
    """CHOREO_WAIT_REPLICAS: every commit is followed by WAIT, which each user may run (a server
    without replicas: each WAIT times out, the commit stands). A worker whose user may not, and
    that waits, refuses to start naming it."""
    admin = acl_server.client()
    admin.execute_command("ACL", "LOG", "RESET")        # what earlier tests were refused
    waiting = {"CHOREO_WAIT_REPLICAS": 1, "CHOREO_WAIT_TIMEOUT_MS": 5}
    for name in SERVICES:
        acl_procs.worker(name, **waiting)
    done = acl_procs.run("place-order", "--product", "101", "--quantity", "1", **waiting)
    assert done.returncode == 0, done.stderr
    order_id = done.stdout.strip()
    wait_for(lambda: admin.hget(keys.order(order_id), "status") == "COMPLETED", what="completed")
    assert all(p.poll() is None for p in acl_procs.procs), "a process died"
    denied = admin.execute_command("ACL", "LOG")
    assert not denied, [(d["username"], d["object"]) for d in denied]
    assert int(admin.info("commandstats")["cmdstat_wait"]["calls"]) >= 5     # the order's commits
    admin.execute_command("ACL", "SETUSER", "payment", "-wait")
    admin.execute_command("ACL", "SETUSER", "order", "-wait")
    try:
        answer = acl_procs.run("worker", "payment", timeout=30, **waiting)
        assert answer.returncode == 1 and "lacks 1 permission" in answer.stderr
        assert "WAIT 0 0" in answer.stderr
        # place-order asks before it writes: no order placed, no id taken
        seq = admin.get(keys.ORDER_SEQ)
        refused = acl_procs.run("place-order", "--product", "101", "--quantity", "1", **waiting)
        assert refused.returncode == 1 and "the place-order role needs: WAIT 0 0" in refused.stderr, refused.stderr
        assert admin.get(keys.ORDER_SEQ) == seq
        check = acl_procs.run("acl", "check")
        assert check.returncode == 1 and "payment WAIT 0 0 should be allowed" in check.stdout
    finally:
        admin.execute_command("ACL", "LOAD")


def test_a_given_id_is_checked_against_earlier_records_on_the_order_users_permissions(acl_server, acl_procs):
    """place-order --order-id reads the other services' records of an earlier order with that id
    (a settled one in its bucket): the order user may read them, never write them."""
    admin = acl_server.client()
    admin.execute_command("ACL", "LOG", "RESET")
    for name in SERVICES:
        acl_procs.worker(name)
    assert acl_procs.run("place-order", "--product", "101", "--quantity", "1", "--order-id", "700").returncode == 0
    wait_for(lambda: admin.hget(keys.order("700"), "status") == "COMPLETED", what="completed")
    wait_for(lambda: admin.hget("shipment:settled:10", "700"), what="its shipment filed")
    admin.delete(keys.order("700"))
    again = acl_procs.run("place-order", "--product", "101", "--quantity", "1", "--order-id", "700")
    assert again.returncode == 1 and "still has reservation:700" in again.stderr, again.stderr
    assert not admin.execute_command("ACL", "LOG")
    assert _refused(as_user(acl_server, "order"), "HSET", "reservation:settled:10", "700", "x")


def _refused(client: redis.Redis, *command) -> bool:
    try:
        client.execute_command(*command)
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_each_service_is_refused_what_it_does_not_declare(acl_server):
    acl_server.client().flushall()
    forged = Envelope.new("InventoryRejected", "1", "mallory", {"reason": "forged"}).fields()
    for name, service in SERVICES.items():
        me = as_user(acl_server, name)
        others = [s for s in SERVICES.values() if s.name != name]
        if "InventoryRejected" not in service.emits:
            assert _refused(me, "XADD", bus_keys.stream("InventoryRejected"), "*",
                            *[x for kv in forged.items() for x in kv]), name
        unread = [t for s in others for t in s.emits if t not in service.consumes]
        if unread:
            assert _refused(me, "XREADGROUP", "GROUP", name, "c", "STREAMS", bus_keys.stream(unread[0]), ">")
        for other in others:
            assert _refused(me, "HSET", other.owns[0].replace("*", "1"), "status", "x"), (name, other.name)
            assert _refused(me, "XADD", bus_keys.dead_letters(other.name), "*", "f", "v")
        for command in (("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1"),
                        ("XGROUP", "DESTROY", service.streams[0], name), ("XTRIM", service.streams[0], "MAXLEN", "0")):
            assert _refused(me, *command), (name, command)


def test_the_dashboard_user_writes_nothing(acl_server):
    me = as_user(acl_server, "dashboard")
    assert me.xrange(bus_keys.stream("OrderCreated")) == []
    for command in (("XADD", bus_keys.stream("OrderCreated"), "*", "f", "v"), ("HSET", "order:1", "a", "b"),
                    ("DEL", "stock:101"), ("SET", "x", "1"), ("FLUSHALL",)):
        assert _refused(me, *command), command


def test_the_default_user_is_off(acl_server):
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_server.port).ping()


def test_a_commit_with_one_refused_write_is_refused_whole_not_half_applied(redis_server, redis_url):
    """The issue's row: a user that may write stock:* but only read events:* once got HSET
    applied and the XADD refused, with no ack. Now commit.lua asks Redis (acl_check_cmd) about
    every write before the first: nothing is applied, the entry stays pending, and the caller is
    told which permission is missing."""
    from choreo.bus.connect import open_bus
    from choreo.bus.contract import Commit, PermissionsMissing
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "halfway", "on", ">pw", "+@all", "-@dangerous",
                          "~stock:*", "~events:OrderCreated", "%R~events:*", "~seen:*")
    try:
        admin.xgroup_create("events:OrderCreated", "inventory", id="0", mkstream=True)
        entry_id = admin.xadd("events:OrderCreated", {"f": "v"})
        bus = open_bus(redis_url.replace("redis://", "redis://halfway:pw@"))
        (delivery,) = bus.read_new("inventory", "c", ["events:OrderCreated"], 10, 0)
        commit = Commit(ops=[SetFields("stock:101", {"available": "1"}),
                             Publish("events:InventoryChecked", {"f": "v"})],
                        ack=("events:OrderCreated", entry_id), seen="seen:inventory", seen_id="x",
                        seen_ttl_s=60)
        with pytest.raises(PermissionsMissing, match="XADD on events:InventoryChecked"):
            bus.commit("inventory", [commit])
        assert not admin.exists("stock:101") and not admin.exists("events:InventoryChecked")
        assert admin.xpending("events:OrderCreated", "inventory")["pending"] == 1
        assert not admin.exists("seen:inventory")
        bus.close()
        assert delivery.entry_id == entry_id
    finally:
        admin.execute_command("ACL", "DELUSER", "halfway")


def test_a_permission_on_the_empty_key_says_nothing_of_any_other(redis_server, redis_url):
    """An empty key pattern (`~`) allows the empty key and no other: a user allowed HSET there
    and on h, not on x, gets a commit writing h then x refused whole, never h written and the
    entry acknowledged (the script once took an answer for "" to stand for every key)."""
    from choreo.bus.connect import open_bus
    from choreo.bus.contract import Commit, PermissionsMissing
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "emptykey", "on", ">pw", "+@all", "-@dangerous", "-hset",
                          "~s", "~h", "~x", "(+hset ~ ~h)")
    try:
        admin.xgroup_create("s", "g", id="0", mkstream=True)
        entry_id = admin.xadd("s", {"f": "v"})
        bus = open_bus(redis_url.replace("redis://", "redis://emptykey:pw@"), check=False)
        bus.read_new("g", "c", ["s"], 10, 0)
        commit = Commit(ops=[SetFields("h", {"f": "v"}), SetFields("x", {"f": "v"})], ack=("s", entry_id))
        with pytest.raises(PermissionsMissing, match="HSET on x"):
            bus.commit("g", [commit])
        assert not admin.exists("h") and not admin.exists("x")
        assert admin.xpending("s", "g")["pending"] == 1
        bus.close()
    finally:
        admin.execute_command("ACL", "DELUSER", "emptykey")


def test_a_commands_permission_on_one_key_says_nothing_of_another_in_the_same_batch(redis_server, redis_url):
    """commit.lua asks the ACL about each command on each key: XADD allowed on one stream does
    not let a later commit of the batch XADD to a stream the user may only read."""
    from choreo.bus.connect import open_bus
    from choreo.bus.contract import Commit, Outcome, PermissionsMissing
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "onestream", "on", ">pw", "+@all", "-@dangerous",
                          "~events:OrderCreated", "%R~events:*")
    try:
        bus = open_bus(redis_url.replace("redis://", "redis://onestream:pw@"))
        allowed = Commit(ops=[Publish("events:OrderCreated", {"f": "v"})])
        refused = Commit(ops=[Publish("events:InventoryChecked", {"f": "v"})])
        assert bus.commit("", [allowed]) == [Outcome.APPLIED]
        with pytest.raises(PermissionsMissing, match="XADD on events:InventoryChecked") as raised:
            bus.commit("", [allowed, refused])
        assert admin.xlen("events:OrderCreated") == 2 and not admin.exists("events:InventoryChecked")
        assert raised.value.outcomes == [Outcome.APPLIED, None]      # what the worker settles
        bus.close()
    finally:
        admin.execute_command("ACL", "DELUSER", "onestream")


def test_a_commit_whose_version_bump_is_refused_applies_nothing(redis_server, redis_url):
    """Every HSET also bumps the hash's `_v` with HINCRBY: a hand-made user allowed the one but
    not the other is refused before the HSET, not after it."""
    from choreo.bus.connect import open_bus
    from choreo.bus.contract import Commit, PermissionsMissing
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "nobump", "on", ">pw", "+@all", "-@dangerous", "-hincrby", "~*")
    try:
        bus = open_bus(redis_url.replace("redis://", "redis://nobump:pw@"))
        with pytest.raises(PermissionsMissing, match="HINCRBY on stock:101"):
            bus.commit("", [Commit(ops=[SetFields("stock:101", {"available": "1"})])])
        with pytest.raises(PermissionsMissing, match="HINCRBY on stock:101"):
            bus.commit("", [Commit(ops=[DropFields("stock:101", ("available",))])])
        assert not admin.exists("stock:101")
        bus.close()
    finally:
        admin.execute_command("ACL", "DELUSER", "nobump")


@pytest.mark.parametrize("missing", ["hset"])
def test_a_trace_the_user_may_not_add_to_is_refused_before_the_event_is_added(redis_server, redis_url,
                                                                                missing):
    """A publish adds to its order's trace (HSET): a user who may not is refused before the XADD,
    not after it."""
    from choreo.bus.connect import open_bus
    from choreo.bus.contract import Commit, PermissionsMissing
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "notrace", "on", ">pw", "+@all", "-@dangerous", f"-{missing}", "~*")
    try:
        bus = open_bus(redis_url.replace("redis://", "redis://notrace:pw@"))
        with pytest.raises(PermissionsMissing, match=f"{missing.upper()} on trace:1"):
            bus.commit("", [Commit(ops=[Publish("events:OrderCreated", {"f": "v"}, trace="trace:1")])])
        assert not admin.exists("events:OrderCreated", "trace:1")
        bus.close()
    finally:
        admin.execute_command("ACL", "DELUSER", "notrace")


def test_a_batch_whose_evalsha_redis_refuses_commits_the_ones_before_the_refused_one(redis_server, redis_url):
    """With every key in KEYS, Redis refuses the whole EVALSHA when one key is out of the user's
    reach, naming no key. The bus then asks the script which command of which commit is refused
    (the names in ARGV, no KEYS, nothing touched): the commits before it are applied, as when the
    script refuses one itself, and the refusal names the permission."""
    from choreo.bus.connect import open_bus
    from choreo.bus.contract import Commit, PermissionsMissing
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "partly", "on", ">pw", "+@all", "-@dangerous",
                          "~stock:*", "%R~events:*")
    try:
        bus = open_bus(redis_url.replace("redis://", "redis://partly:pw@"))
        with pytest.raises(PermissionsMissing, match="XADD on events:InventoryChecked"):
            bus.commit("", [Commit(ops=[SetFields("stock:101", {"available": "1"})]),
                            Commit(ops=[SetFields("stock:102", {"available": "2"}),
                                        Publish("events:InventoryChecked", {"f": "v"})])])
        assert admin.hget("stock:101", "available") == "1"
        assert not admin.exists("stock:102") and not admin.exists("events:InventoryChecked")
        bus.close()
    finally:
        admin.execute_command("ACL", "DELUSER", "partly")


def test_a_command_the_script_finds_refused_at_a_later_commit_says_the_earlier_were_applied(
        redis_server, redis_url):
    """The user may run the script on every key of the batch, but not XADD: the script itself
    refuses the second commit (NOPERM, nothing of it written) after applying the first, and the
    error says which were applied, for the worker to settle (workers.committing.applied_before)."""
    from choreo.bus.connect import open_bus
    from choreo.bus.contract import Commit, Outcome, PermissionsMissing
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "noxadd", "on", ">pw", "+@all", "-@dangerous", "-xadd", "~*")
    try:
        bus = open_bus(redis_url.replace("redis://", "redis://noxadd:pw@"))
        allowed = Commit(ops=[SetFields("h", {"f": "v"})])
        refused = Commit(ops=[Publish("events:OrderCreated", {"f": "v"})])
        with pytest.raises(PermissionsMissing, match="XADD on events:OrderCreated") as raised:
            bus.commit("", [allowed, refused])
        assert admin.hget("h", "f") == "v" and not admin.exists("events:OrderCreated")
        assert raised.value.outcomes == [Outcome.APPLIED, None]
        bus.close()
    finally:
        admin.execute_command("ACL", "DELUSER", "noxadd")

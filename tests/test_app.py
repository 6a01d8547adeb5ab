"""Any choreography, not only the order saga: `--app module:attribute` (or CHOREO_APP) gives every
command its services and event types (workers.app)."""

from __future__ import annotations

import fakeredis
import pytest
from msgspec import Struct

from choreo.bus import keys as bus_keys
from choreo.bus.envelope import Envelope
from choreo.bus.redis_streams import RedisStreamsBus
from choreo.cli import main
from choreo.config.settings import Settings
from tests.apps.ping import app as PING
from tests.helpers import wait_for
from choreo.workers.app import App, AppError, load_app
from choreo.workers.runtime import Worker
from choreo.workers.service import On, Service, confirm

SPEC = "tests.apps.ping:app"


def test_load_app_finds_the_saga_by_default_and_a_users_module_by_name():
    from choreo.workers import APP
    assert load_app(None) is APP and load_app(SPEC) is PING
    for bad, why in (("nocolon", "not module:attribute"), ("no_such_module:app", "cannot import"),
                     ("tests.apps.ping:PINGER", "is a Service, not an App")):
        with pytest.raises(AppError, match=why):
            load_app(bad)


def test_an_app_naming_an_undeclared_event_type_is_refused_with_the_reason():
    lonely = Service("lonely", "Lonely", consumes={"Nope": On(confirm, "x")}, emits=())
    with pytest.raises(AppError, match="lonely names event type 'Nope', which the app does not declare"):
        App("bad", services=[lonely], events={})


def test_every_command_takes_the_app(capsys, monkeypatch):
    assert main(["topology", "--app", SPEC]) == 0
    out = capsys.readouterr().out
    assert "pinger" in out and "events:Ping" in out and "order" not in out
    monkeypatch.setenv("CHOREO_APP", SPEC)
    assert main(["schema"]) == 0
    assert set(__import__("json").loads(capsys.readouterr().out)["$defs"]) == {"Ping", "Pong"}


def test_a_bad_app_or_an_order_command_on_another_app_is_one_line_and_exit_2(capsys):
    assert main(["topology", "--app", "no_such_module:app"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["place-order", "--product", "101", "--quantity", "1", "--app", SPEC]) == 2
    assert "has no orders" in capsys.readouterr().err
    assert main(["worker", "inventory", "--app", SPEC]) == 2      # not one of its services
    assert "invalid choice" in capsys.readouterr().err


def test_a_users_service_handles_its_own_event_types_on_a_real_server(procs, real_bus):
    """The issue's report: a service consuming a new type `Ping` had every entry dead-lettered as
    an unknown type. With its app given, it handles them and publishes what it declares."""
    procs.start("worker", "ponger", "--app", SPEC, name="ponger")
    c = real_bus.client
    wait_for(lambda: c.exists(bus_keys.stream("Ping")), what="ponger's group")
    ping = Envelope.new("Ping", "7", "pinger", {"n": 3})
    c.xadd(bus_keys.stream("Ping"), ping.fields())
    wait_for(lambda: c.hget("pong:7", "n") == "3", what="the Pong written")
    [(_, pong)] = c.xrange(bus_keys.stream("Pong"))
    assert pong["type"] == "Pong" and pong["causation_id"] == ping.id and pong["data"] == '{"n":3}'
    bad = Envelope.new("Ping", "8", "pinger", {"n": "three"})
    c.xadd(bus_keys.stream("Ping"), bad.fields())
    wait_for(lambda: c.xlen(bus_keys.dead_letters("ponger")) == 1, what="the bad Ping dead-lettered")
    [(_, letter)] = c.xrange(bus_keys.dead_letters("ponger"))
    assert "Ping data: Expected `int`, got `str` - at `$.n`" in letter["error"]


def test_audit_runs_the_apps_own_checks_and_the_stream_checks_not_the_sagas(procs, real_bus, capsys):
    c = real_bus.client
    for service in ("ponger", "pinger"):
        procs.start("worker", service, "--app", SPEC, name=service)
    wait_for(lambda: c.exists(bus_keys.stream("Ping"), bus_keys.stream("Pong")) == 2, what="the groups")
    c.xadd(bus_keys.stream("Ping"), Envelope.new("Ping", "1", "pinger", {"n": 5}).fields())
    wait_for(lambda: c.hget("pong:1", "n") == "5", what="the Pong written")
    wait_for(lambda: main(["audit", "--strict", "--app", SPEC, "--redis-url", procs.url]) == 0,
             what="the pinger confirmed the Pong")
    capsys.readouterr()
    c.hset("order:9", "status", "nonsense")         # the saga's checks would call this a violation
    assert main(["audit", "--app", SPEC, "--redis-url", procs.url]) == 0
    out = capsys.readouterr().out
    assert "audit clean" in out and "orders" not in out and "stream groups" in out
    c.hset("pong:1", "n", "five")
    assert main(["audit", "--app", SPEC, "--redis-url", procs.url]) == 1
    assert "VIOLATION pong:1: n='five' is not a number" in capsys.readouterr().out
    # trace speaks of the app's instances, not of orders
    assert main(["trace", "1", "--app", SPEC, "--redis-url", procs.url]) == 0
    shown = capsys.readouterr().out
    assert "instance 1" in shown and "Pinger: Pong 1 back" in shown and "order" not in shown
    assert main(["trace", "99", "--app", SPEC, "--redis-url", procs.url]) == 1
    assert "instance 99: not found" in capsys.readouterr().out


def test_mistakes_in_an_app_are_refused_when_it_is_declared_or_run_not_later():
    from msgspec import Struct
    from choreo.bus.redis_streams import RedisStreamsBus  # noqa: F401  (the real one is not needed)
    from choreo.config.settings import Settings
    from choreo.workers.runtime import Worker
    from tests.apps.ping import PONGER, Ping, Pong

    class Seen(Struct):
        n: int
    odd = Service("odd", "Odd", consumes={"Seen": On(confirm, "Seen {invoice_id}")}, emits=())
    with pytest.raises(AppError, match=r"odd's line for Seen 'Seen \{invoice_id\}' can only use \{order_id\}"):
        App("odd", services=[odd], events={"Seen": Seen})
    with pytest.raises(AppError, match="timer_events without timer_jobs"):
        timed = Service("timed", "Timed", consumes={}, emits=(), creates={"Seen": "Seen {order_id}"})
        App("timed", services=[timed], events={"Seen": Seen}, timer_events=("Seen",))
    # The other way round: under ACLs its worker waited on refused arming, then dead-lettered.
    with pytest.raises(AppError, match="timer_jobs without timer_events: the timers would publish nothing"):
        App("timed", services=[timed], events={"Seen": Seen}, timer_jobs=("choreo.workers.timers.publish_due",))
    # A worker for another app's service, given without that app's event models: refused at once
    # (it would dead-letter every entry as an unknown type).
    with pytest.raises(TypeError, match="pass events=app.events"):
        Worker(PONGER, object(), Settings(), "ponger-1")
    Worker(PONGER, object(), Settings(), "ponger-1", events={"Ping": Ping, "Pong": Pong})


def test_an_event_every_consumer_would_dead_letter_is_refused_when_emitted():
    from choreo.workers.unit_of_work import BatchView, InvalidEvent, UnitOfWork
    from tests.apps.ping import PINGER, app as ping

    class NoBus:
        def read_hashes(self, keys_):
            return [{} for _ in keys_]
    uow = UnitOfWork(PINGER.name, PINGER.creates, BatchView(NoBus()), models=ping.events)
    with pytest.raises(InvalidEvent, match="instance id 'INV/2024:1' is not 1-64"):
        uow.emit("Ping", order_id="INV/2024:1", n=1)
    with pytest.raises(InvalidEvent, match=r"Ping data: Expected `int`, got `str` - at `\$.n`"):
        uow.emit("Ping", order_id="7", n="1")
    uow.emit("Ping", order_id="7", n=1)
    assert [e.order_id for e in uow.emitted] == ["7"]
    # Data nested deeper than every reader takes (bus.envelope.MAX_DEPTH): each would dead-letter it.
    from choreo.workers.unit_of_work import UnitOfWork as Plain
    loose = Plain(PINGER.name, PINGER.creates, BatchView(NoBus()))      # no models: data unchecked
    deep: list = []
    for _ in range(70):
        deep = [deep]
    with pytest.raises(InvalidEvent, match="nested deeper than 64 levels"):
        loose.emit("Ping", order_id="7", n=deep)
    loose.emit("Ping", order_id="7", n=[[[1]]])


def test_acl_users_of_another_app_get_nothing_of_the_sagas(tmp_path):
    from choreo.ops.acl import roles
    every = {r.user: r for r in roles(list(PING.services), PING.timer_events)}
    rules = repr(every["trimmer"]) + repr(every["timers"])
    assert "orders:index" not in rules and "order:*" not in rules
    assert all(g.keys for g in every["timers"].grants)      # no selector without keys


def test_the_dashboard_of_another_app_shows_its_streams_and_no_orders_panel(procs, real_bus, capsys):
    import json
    c = real_bus.client
    procs.start("worker", "ponger", "--app", SPEC, name="ponger")
    wait_for(lambda: c.exists(bus_keys.stream("Ping")), what="ponger's group")
    assert main(["dashboard", "--json", "--refresh", "0.1", "--app", SPEC, "--redis-url", procs.url]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["orders"] is None
    assert {s["stream"] for s in snap["streams"]} <= {"events:Ping", "events:Pong"}
    assert "events:Ping" in {g["stream"] for g in snap["groups"]}
    assert main(["dashboard", "--once", "--refresh", "0.1", "--app", SPEC, "--redis-url", procs.url]) == 0
    frame = capsys.readouterr().out
    assert "events:Ping" in frame and " orders " not in frame and "ponger" in frame


def test_the_exporter_of_an_app_without_orders_exports_no_order_series():
    from choreo.ops.exporter import fleet_metrics
    from choreo.ops.snapshot import OrdersView, Snapshot
    names = {m.name for m in fleet_metrics(Snapshot(url="redis://x", orders=None))}
    assert "choreo_orders" not in names and "choreo_dead_letters" in names
    assert "choreo_orders" in {m.name for m in fleet_metrics(Snapshot(url="redis://x", orders=OrdersView()))}


def test_trace_json_tells_the_story_in_the_apps_own_words(procs, real_bus, capsys):
    import json
    c = real_bus.client
    for service in ("ponger", "pinger"):
        procs.start("worker", service, "--app", SPEC, name=service)
    wait_for(lambda: c.exists(bus_keys.stream("Ping"), bus_keys.stream("Pong")) == 2, what="the groups")
    from choreo.bus.contract import Commit
    from choreo.bus.ops import Publish
    ping = Envelope.new("Ping", "3", "pinger", {"n": 1})
    real_bus.commit("", [Commit(ops=[Publish(bus_keys.stream("Ping"), ping.fields(),
                                             trace=bus_keys.trace("3"))])])   # as a command does
    wait_for(lambda: main(["audit", "--strict", "--app", SPEC, "--redis-url", procs.url]) == 0,
             what="the Pong confirmed")
    capsys.readouterr()
    assert main(["trace", "3", "--json", "--app", SPEC, "--redis-url", procs.url]) == 0
    assert json.loads(capsys.readouterr().out)["story"] == ["Pinger: Ping 3", "Ponger: Ping 3 answered"]


def test_an_app_is_refused_a_reserved_service_name_or_a_timer_event_that_needs_data():
    from msgspec import Struct

    class Reminder(Struct):
        attempt: int
    timers_named = Service("timers", "Timers", consumes={}, emits=())
    with pytest.raises(AppError, match="'timers' is taken by choreo's own process"):
        App("x", services=[timers_named], events={})
    armer = Service("armer", "Armer", consumes={}, emits=(), creates={"Reminder": "Reminder {order_id}"})
    with pytest.raises(AppError, match="timer event 'Reminder' is published with no data"):
        App("x", services=[armer], events={"Reminder": Reminder}, timer_events=("Reminder",),
            timer_jobs=("choreo.workers.timers.publish_due",))


def test_what_an_event_carries_every_consumer_can_read_back():
    from choreo.workers.unit_of_work import BatchView, InvalidEvent, UnitOfWork
    from tests.apps.ping import PINGER

    class NoBus:
        def read_hashes(self, keys_):
            return [{} for _ in keys_]
    uow = UnitOfWork(PINGER.name, PINGER.creates, BatchView(NoBus()))    # no models: still checked
    for bad in (float("nan"), float("inf"), "\ud800"):
        with pytest.raises(InvalidEvent, match="cannot be written as JSON every consumer reads"):
            uow.emit("Ping", order_id="1", n=bad)
    assert uow.ops == [] and uow.emitted == []


class Flip(Struct):
    arm: bool


class Tick(Struct):
    pass


def flip(event, uow) -> None:
    if event.data["arm"]:
        uow.publish_later("Tick", 2 ** 41)
    else:
        uow.disarm("Tick")


class KeptTimers:
    def __init__(self):
        self.armed: set[str] = set()

    def schedule(self, calls) -> None:
        self.armed |= {c.job_id for c in calls}

    def unschedule(self, job_ids) -> None:
        self.armed -= set(job_ids)


@pytest.mark.parametrize("arms, armed", [((False, True), True), ((True, False), False),
                                         ((True, False, True), True)])
def test_the_last_entry_of_a_batch_to_name_a_timer_decides_whether_it_stays_armed(arms, armed):
    """Timers are armed before the commit and disarmed after it: one disarmed and then armed
    again within a batch stays armed, and the other way round ends disarmed."""
    flipper = Service("flipper", "Flipper", consumes={"Flip": On(flip, "Flip {order_id}")},
                      emits=(), creates={"Flip": "Flip {order_id}", "Tick": "Tick {order_id}"})
    bus = RedisStreamsBus(fakeredis.FakeRedis(decode_responses=True))
    timers = KeptTimers()
    worker = Worker(flipper, bus, Settings(), "flipper-1", events={"Flip": Flip, "Tick": Tick},
                    timers=timers)
    worker.start()
    stream = bus_keys.stream("Flip")
    for arm in arms:
        bus.client.xadd(stream, Envelope.new("Flip", "1", "flipper", {"arm": arm}).fields())
    assert worker.poll(block_ms=0) == len(arms)             # one batch
    assert timers.armed == ({"Tick-1"} if armed else set())


def test_a_service_without_a_record_gives_its_trace_key_the_retention_on_its_own_user(tmp_path):
    """The ping app's services keep no record: every event is traced in trace:<id>, which nothing
    of theirs ever expired (a key per instance for ever). Each commit tracing there now keeps the
    key CHOREO_RETENTION_S from then, under the service's rendered ACL user."""
    from choreo.bus.connect import open_bus
    from tests.conftest import on_rendered_users
    with on_rendered_users(SPEC, PING, tmp_path, CHOREO_RETENTION_S="500") as (server, procs, passwords):
        for service in ("ponger", "pinger"):
            procs.start("worker", service, name=service)
        admin = server.client()
        wait_for(lambda: admin.exists(bus_keys.stream("Ping"), bus_keys.stream("Pong")) == 2,
                 what="the groups")
        with open_bus(server.url_for("pinger", passwords["pinger"])) as bus:
            bus.client.xadd(bus_keys.stream("Ping"), Envelope.new("Ping", "7", "pinger", {"n": 1}).fields())
        wait_for(lambda: admin.hget("pong:7", "n") == "1", what="the Pong written")
        wait_for(lambda: admin.hlen(bus_keys.trace("7")) == 1, what="the Pong traced")
        assert 0 < admin.ttl(bus_keys.trace("7")) <= 500
        assert not admin.xlen(bus_keys.dead_letters("ponger"))


def test_a_trace_key_is_expired_after_its_last_publish_in_the_commit():
    """An EXPIRE of a key that does not exist yet does nothing: a commit that expires the trace
    key (as the saga's order service does when an order ends) and then publishes, creating it,
    still needs one after; one already after the last publish is enough."""
    from choreo.bus.ops import Expire, Publish, SetFields
    from choreo.workers.unit_of_work import BatchView, UnitOfWork
    from tests.apps.ping import PINGER

    class NoBus:
        def read_hashes(self, keys_):
            return [{} for _ in keys_]
    trace = bus_keys.trace("7")
    before = UnitOfWork(PINGER.name, PINGER.creates, BatchView(NoBus()), retention_s=300)
    before.expire(trace)
    before.emit("Ping", order_id="7", n=1)
    ops = before.commit_ops()
    assert [type(op) for op in ops] == [Expire, Publish, Expire] and ops[-1] == Expire(trace, 300)
    after = UnitOfWork(PINGER.name, PINGER.creates, BatchView(NoBus()), retention_s=300)
    after.emit("Ping", order_id="7", n=1)
    after.emit("Ping", order_id="7", n=2)
    after.expire(trace, after_s=60)
    assert [type(op) for op in after.commit_ops()] == [Publish, Publish, Expire]
    between = UnitOfWork(PINGER.name, PINGER.creates, BatchView(NoBus()), retention_s=300)
    between.emit("Ping", order_id="7", n=1)
    between.expire(trace)
    between.emit("Ping", order_id="7", n=2)
    assert [type(op) for op in between.commit_ops()] == [Publish, Expire, Publish, Expire]
    # A service with a record: a publish whose commit writes it is traced there, no expiry; one
    # whose commit does not is traced in the trace key, which then gets one.
    kept = UnitOfWork(PINGER.name, PINGER.creates, BatchView(NoBus()), retention_s=300,
                      record=lambda i: f"pinger:{i}")
    kept.set("pinger:7", n="1")
    kept.emit("Ping", order_id="7", n=1)
    assert [type(op) for op in kept.commit_ops()] == [SetFields, Publish]
    assert kept.commit_ops()[1].trace == "pinger:7"
    unwritten = UnitOfWork(PINGER.name, PINGER.creates, BatchView(NoBus()), retention_s=300,
                           record=lambda i: f"pinger:{i}")
    unwritten.emit("Ping", order_id="7", n=1)
    assert unwritten.commit_ops()[-1] == Expire(trace, 300)

"""The dashboard's two halves: render() of known snapshots (pure, through Console(record=True)),
and gather() against a real redis-server put in known states, checked figure by figure."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from rich.console import Console

from choreo.bus import inspect, keys as bus_keys
from choreo.bus.envelope import Envelope
from choreo.ops import dashboard, snapshot
from choreo.ops.dashboard import (ConsumerRow, DeadLetterRow, EventRow, GroupRow, OrdersView, Snapshot,
                              StreamRow, gather, group_state, groups_table, heights, render)
from choreo.measure.load import percentile
from choreo.orders import OrderRequest, place_orders
from choreo.cli import main
from choreo.workers import SERVICES, keys
from tests.helpers import wait_for
from tests.inprocess import drain, start_workers

NOW_MS = 1_700_000_000_000


def busy() -> Snapshot:
    return Snapshot(
        url="redis://:***@cache:6379/0", server_version="7.0.15", ping_ms=0.42,
        server_time_ms=NOW_MS, taken_at=NOW_MS / 1000,
        streams=[StreamRow("events:OrderCreated", 1200, 1500, 250.0, 0.3, f"{NOW_MS - 300}-0"),
                 StreamRow("events:PaymentFailed", 0, 0, 0.0, None, "0-0")],
        groups=[GroupRow("events:OrderCreated", "inventory", 2, 2, 7, None, 3.5, 2, 1.0, "LAGGING"),
                GroupRow("events:OrderCreated", "order", 1, 1, 3, 0, 95.0, 4, 45.0, "STUCK"),
                GroupRow("events:PaymentFailed", "inventory", 1, 0, 0, 0, None, 0, 0.0, "NO CONSUMERS"),
                GroupRow("events:InventoryChecked", "payment", 1, 1, 0, 12, None, 0, 0.0, "OK")],
        consumers=[ConsumerRow("inventory", "inventory-web1-1", "web1", "4242", "reading", 5, 0.2, False),
                   ConsumerRow("inventory", "inventory-web1-2", "web1", "4243", "handling", 2, 75.0, True),
                   ConsumerRow("inventory", "inventory-web2-1", "-", "-", "gone", 1, None, True)],
        orders=OrdersView({"CANCELLED": 5, "COMPLETED": 1180, "PENDING": 15}, 240.5, 112.0, 480.0, 500),
        dead_letters=[DeadLetterRow("order", "dlq:order", 0, "", None),
                      DeadLetterRow("inventory", "dlq:inventory", 2,
                                    "malformed: unknown schema version '9'", 125.0)],
        events=[EventRow("22:13:20.100", "events:OrderCreated", "OrderCreated", "1200", "1-0"),
                EventRow("22:13:19.900", "events:ShippingArranged", "ShippingArranged", "1187", "1-0")])


def screen(s: Snapshot, width: int = 160) -> str:
    console = Console(record=True, width=width, height=sum(heights(s)), color_system=None)
    console.print(render(s))
    return console.export_text()


def row(text: str, *prefix: str) -> list[str]:
    """The cells of the first table row (in any panel) that starts with `prefix`."""
    for line in text.splitlines():
        for segment in line.split("│"):
            cells = segment.split()
            if cells[:len(prefix)] == list(prefix):
                return cells
    raise AssertionError(f"no row starting {prefix} in:\n{text}")


# -- render ----------------------------------------------------------------------------------------

def test_render_header_streams_orders_and_dead_letters():
    text = screen(busy())
    assert "redis://:***@cache:6379/0  Redis 7.0.15  ping 0.42 ms" in text
    assert row(text, "events:OrderCreated", "1200") == ["events:OrderCreated", "1200", "250.0", "0.3s"]
    assert row(text, "events:PaymentFailed", "0") == ["events:PaymentFailed", "0", "0.0", "-"]
    assert row(text, "COMPLETED") == ["COMPLETED", "1180"]
    assert row(text, "PENDING") == ["PENDING", "15"]
    assert row(text, "completed/s") == ["completed/s", "240.5"]
    assert row(text, "p50", "ms") == ["p50", "ms", "(500", "recent)", "112"]
    assert row(text, "p99", "ms") == ["p99", "ms", "480"]
    assert row(text, "order", "0") == ["order", "0", "-", "-"]
    assert row(text, "inventory", "2")[:3] == ["inventory", "2", "malformed:"]
    assert row(text, "inventory", "2")[-1] == "2m05s"


def test_render_groups_with_unknown_lag_stuck_and_no_consumers():
    text = screen(busy())
    assert row(text, "events:OrderCreated", "inventory") == \
        ["events:OrderCreated", "inventory", "2/2", "7", "?", "3.5s", "2", "LAGGING"]
    assert row(text, "events:OrderCreated", "order") == \
        ["events:OrderCreated", "order", "1/1", "3", "0", "1m35s", "4", "STUCK"]
    assert row(text, "events:PaymentFailed", "inventory") == \
        ["events:PaymentFailed", "inventory", "0/1", "0", "0", "-", "-", "NO", "CONSUMERS"]
    assert row(text, "events:InventoryChecked", "payment")[4] == "12"


def test_render_consumers_and_recent_events():
    text = screen(busy())
    assert row(text, "inventory", "inventory-web1-1") == \
        ["inventory", "inventory-web1-1", "5", "0.2s", "reading", "web1:4242"]
    assert row(text, "inventory", "inventory-web1-2") == \
        ["inventory", "inventory-web1-2", "2", "1m15s", "STALE", "web1:4243"]
    assert row(text, "inventory", "inventory-web2-1") == ["inventory", "inventory-web2-1", "1", "-", "GONE", "-:-"]
    assert row(text, "22:13:20.100") == ["22:13:20.100", "events:OrderCreated", "OrderCreated", "1200"]
    assert row(text, "22:13:19.900")[-1] == "1187"


def test_render_state_words_in_colour():
    console = Console(width=160, color_system="standard", force_terminal=True)
    segments = list(console.render(groups_table(busy()), console.options))
    style = {seg.text.strip(): seg.style for seg in segments
             if seg.text.strip() in ("OK", "LAGGING", "STUCK", "NO CONSUMERS")}
    assert style["STUCK"].color.name == "red" and style["STUCK"].bold
    assert style["LAGGING"].color.name == "yellow"
    assert style["OK"].color.name == "green"
    assert style["NO CONSUMERS"].color.name == "magenta"


def test_render_every_row_fits_at_a_narrower_width():
    s = busy()
    s = dataclasses.replace(s, events=[EventRow(f"22:13:{i:02d}.000", "events:OrderCreated",
                                                "OrderCreated", str(i), "1-0") for i in range(10)])
    text = screen(s, width=120)
    for i in range(10):
        assert row(text, f"22:13:{i:02d}.000")[-1] == str(i)
    assert "NO CONSUMERS" in text and "STALE" in text


def test_render_empty_redis():
    text = screen(Snapshot(url="redis://localhost:6379/0", server_version="7.0.15", ping_ms=0.1,
                           server_time_ms=NOW_MS, taken_at=NOW_MS / 1000))
    for message in ("no streams yet", "no consumer groups yet", "no consumers yet", "no events yet",
                    "none yet"):
        assert message in text
    assert row(text, "completed/s") == ["completed/s", "-"]
    assert row(text, "p99", "ms") == ["p99", "ms", "-"]


def test_render_disconnected_keeps_last_figures():
    s = dataclasses.replace(busy(), connected=False, error="Error 111 connecting: Connection refused")
    text = screen(s)
    assert "DISCONNECTED Error 111 connecting: Connection refused; retrying" in text
    assert row(text, "COMPLETED") == ["COMPLETED", "1180"]


def test_snapshot_json_keeps_unknown_lag_as_null():
    data = json.loads(busy().to_json())
    assert data["groups"][0]["lag"] is None
    assert data["groups"][1]["lag"] == 0
    assert data["groups"][1]["state"] == "STUCK"
    assert data["orders"]["by_status"]["COMPLETED"] == 1180


@pytest.mark.parametrize("live, pending, idle, behind, state", [
    (0, 0, 0.0, False, "NO CONSUMERS"),
    (0, 3, 99.0, True, "NO CONSUMERS"),
    (1, 3, dashboard.STUCK_AFTER_S, False, "STUCK"),
    (1, 3, dashboard.STUCK_AFTER_S - 1, True, "LAGGING"),
    (1, 0, 0.0, True, "LAGGING"),
    (2, 5, 1.0, False, "OK"),
])
def test_group_state(live, pending, idle, behind, state):
    assert group_state(live, pending, idle, behind) == state


# -- gather against a real redis-server -------------------------------------------------------------

def _add(client, stream: str, n: int, order_id: str = "1") -> list[str]:
    event_type = bus_keys.event_type_of(stream)
    return [client.xadd(stream, Envelope.new(event_type, order_id, "order").fields()) for _ in range(n)]


def test_gather_empty_redis(real_bus, redis_url):
    s = gather(real_bus, redis_url)
    assert s.connected and s.server_version.startswith("7.")
    assert s.streams == [] and s.groups == [] and s.consumers == [] and s.events == []
    assert s.orders == OrdersView()
    assert [(d.service, d.count) for d in s.dead_letters] == [(n, 0) for n in SERVICES]
    assert "no streams yet" in screen(s)


def test_gather_after_real_orders(real_bus, redis_url):
    workers = start_workers(real_bus)
    place_orders(real_bus, [OrderRequest(str(i), [{"product_id": 101, "quantity": 1}]) for i in (1, 2, 3)])
    # 101 Gadgets cost 5,048.99: over the card limit, so PaymentFailed cancels the order.
    place_orders(real_bus, [OrderRequest("4", [{"product_id": 102, "quantity": 101}])])
    drain(workers)
    for w in workers:
        w.heartbeat.beat()          # what Worker.run's heartbeat thread does; drain() only polls
    s = gather(real_bus, redis_url)
    assert s.orders.by_status == {"COMPLETED": 3, "CANCELLED": 1}
    orders = real_bus.read_hashes([keys.order(i) for i in ("1", "2", "3")])
    latencies = sorted(int(o["ended_at_ms"]) - int(o["created_at_ms"]) for o in orders)
    assert (s.orders.p50_ms, s.orders.p99_ms, s.orders.sampled) == \
        (percentile(latencies, 50), percentile(latencies, 99), 3)
    lengths = {r.stream: r.length for r in s.streams}
    assert lengths[bus_keys.stream("OrderCreated")] == 4
    assert lengths[bus_keys.stream("PaymentFailed")] == 1
    assert lengths[bus_keys.stream("ShippingArranged")] == 3
    declared = {(bus_keys.stream(t), n) for n, svc in SERVICES.items() for t in svc.consumes}
    assert {(g.stream, g.group) for g in s.groups} == declared
    assert all((g.pending, g.lag, g.state, g.live_consumers) == (0, 0, "OK", 1) for g in s.groups)
    assert [(c.group, c.name, c.pending, c.stale, c.state) for c in s.consumers] == \
        sorted((n, f"{n}-test-1", 0, False, "reading") for n in SERVICES)
    every = sorted((tuple(map(int, entry_id.split("-"))), stream) for stream in lengths
                   for entry_id, _ in real_bus.client.xrange(stream))
    assert [(tuple(map(int, e.entry_id.split("-"))), e.stream) for e in s.events] == \
        sorted(every, key=lambda x: x[0], reverse=True)[:10]
    assert all(e.type == bus_keys.event_type_of(e.stream) and e.order_id in "1234" for e in s.events)


def test_hand_written_values_that_are_no_counts_are_left_out_not_a_crash(real_bus, redis_url, capsys):
    """redis-cli can write anything: a view shows what it can read (choreo audit names the rest),
    in the dashboard's every form and so the exporter's (the same gathering)."""
    workers = start_workers(real_bus)
    place_orders(real_bus, [OrderRequest(str(i), [{"product_id": 101, "quantity": 1}]) for i in (1, 2, 3)])
    drain(workers)
    c = real_bus.client
    c.hset(keys.orders_by_status(0), "SHIPPED?", "abc")
    c.hset(keys.order("1"), "created_at_ms", "nan")
    c.hset(keys.order("2"), "ended_at_ms", "")
    s = gather(real_bus, redis_url)
    assert s.orders.by_status == {"COMPLETED": 3} and s.orders.sampled == 1
    for form in ("--json", "--once"):
        assert main(["dashboard", form, "--redis-url", redis_url]) == 0, form
        assert "COMPLETED" in capsys.readouterr().out


def test_gather_pending_dead_consumer_stuck_and_lag(real_bus, redis_url):
    from choreo.bus.heartbeat import Heartbeat
    c = real_bus.client
    created = bus_keys.stream("OrderCreated")
    real_bus.ensure_groups("inventory", [created])
    real_bus.ensure_groups("order", [created])
    ids = _add(c, created, 5)
    # A consumer that read three entries and died: its pending entries have waited 60 s and been
    # delivered four times (XCLAIM sets both, as a long outage would). It has no heartbeat.
    c.xreadgroup("inventory", "inventory-dead-1", {created: ">"}, count=3)
    c.xclaim(created, "inventory", "inventory-dead-1", 0, ids[:3], idle=60_000, retrycount=4)
    c.xreadgroup("order", "order-live-1", {created: ">"})
    c.xack(created, "order", *ids)
    _add(c, created, 2)                                      # the order group falls 2 behind
    c.xreadgroup("inventory", "inventory-live-2", {created: ">"}, count=1)
    for group, name in (("inventory", "inventory-live-2"), ("order", "order-live-1")):
        beat = Heartbeat(real_bus, group, name, every_s=5)      # as their heartbeat threads would
        beat.read_done()
        beat.beat()
    s = gather(real_bus, redis_url)
    groups = {g.group: g for g in s.groups}
    inv, order = groups["inventory"], groups["order"]
    assert (inv.consumers, inv.live_consumers, inv.pending, inv.lag) == (2, 1, 4, 3)
    assert inv.max_deliveries == 4 and inv.max_idle_s >= 60
    assert inv.oldest_pending_age_s == (s.server_time_ms - inspect.entry_ms(ids[0])) / 1000
    assert inv.state == "STUCK"
    assert (order.pending, order.lag, order.live_consumers, order.state) == (0, 2, 1, "LAGGING")
    consumers = {c.name: c for c in s.consumers}
    assert (consumers["inventory-dead-1"].pending, consumers["inventory-dead-1"].stale,
            consumers["inventory-dead-1"].state) == (3, True, "gone")
    assert (consumers["inventory-live-2"].pending, consumers["inventory-live-2"].stale) == (1, False)


def test_a_quiet_live_consumer_is_live_and_a_dead_one_with_history_is_not(real_bus, redis_url):
    """The old bug: XINFO idle counts from the last delivery, so a worker with nothing to read
    looked dead, and one killed just after a delivery looked alive. Heartbeats say which is which."""
    from choreo.bus.heartbeat import Heartbeat
    c = real_bus.client
    created = bus_keys.stream("OrderCreated")
    real_bus.ensure_groups("inventory", [created])
    ids = _add(c, created, 1)
    c.xreadgroup("inventory", "inventory-killed-1", {created: ">"})    # just delivered: idle 0
    c.xack(created, "inventory", *ids)
    quiet = Heartbeat(real_bus, "inventory", "inventory-quiet-1", every_s=5)
    quiet.read_done()       # an empty XREADGROUP: Redis does not even create the consumer
    quiet.beat()
    s = gather(real_bus, redis_url)
    (g,) = s.groups
    assert (g.consumers, g.live_consumers, g.state) == (1, 1, "OK")
    consumers = {c.name: c for c in s.consumers}
    assert consumers["inventory-quiet-1"].stale is False
    assert (consumers["inventory-killed-1"].stale, consumers["inventory-killed-1"].state) == (True, "gone")
    quiet.end()
    assert gather(real_bus, redis_url).groups[0].state == "NO CONSUMERS"
    # Alive but wedged: its heartbeat thread renews, its loop last read a minute ago.
    wedged = Heartbeat(real_bus, "inventory", "inventory-wedged-1", every_s=5)
    wedged.last_read = time.time() - 60
    wedged.beat()
    s = gather(real_bus, redis_url)
    assert (s.groups[0].live_consumers, s.groups[0].state) == (0, "NO CONSUMERS")
    (row_,) = [c for c in s.consumers if c.name == "inventory-wedged-1"]
    assert row_.stale and row_.read_age_s >= 60


def test_gather_unknown_lag_and_no_consumers(real_bus, redis_url):
    checked = bus_keys.stream("InventoryChecked")
    ids = _add(real_bus.client, checked, 3)
    # A group created at an id in the middle of a stream: Redis 7.0 cannot count what it has read.
    real_bus.client.xgroup_create(checked, "payment", id=ids[1])
    s = gather(real_bus, redis_url)
    (g,) = s.groups
    assert (g.group, g.consumers, g.lag, g.state) == ("payment", 0, None, "NO CONSUMERS")
    assert json.loads(s.to_json())["groups"][0]["lag"] is None
    assert row(screen(s), checked, "payment")[4] == "?"


def test_gather_dead_letters(real_bus, redis_url):
    (inventory,) = start_workers(real_bus, names=("inventory",))
    bad = {**Envelope.new("OrderCreated", "9", "order").fields(), "v": "9"}
    real_bus.client.xadd(bus_keys.stream("OrderCreated"), bad)
    drain([inventory])
    s = gather(real_bus, redis_url)
    letters = {d.service: d for d in s.dead_letters}
    assert letters["inventory"].count == 1
    assert letters["inventory"].newest_error.startswith("malformed: unknown schema version '9'")
    assert 0 <= letters["inventory"].newest_age_s < 5
    assert all(letters[n].count == 0 for n in SERVICES if n != "inventory")
    assert row(screen(s), "inventory", "1")[2] == "malformed:"


def test_gather_rates_over_the_interval(real_bus, redis_url):
    created = bus_keys.stream("OrderCreated")
    _add(real_bus.client, created, 5)
    first = gather(real_bus, redis_url)
    assert first.streams[0].per_s is None and first.orders.completed_per_s is None
    time.sleep(0.05)
    _add(real_bus.client, created, 4)
    real_bus.client.hincrby(keys.orders_by_status(), "COMPLETED", 6)
    second = gather(real_bus, redis_url, first)
    interval_s = (second.server_time_ms - first.server_time_ms) / 1000
    assert second.streams[0].per_s == pytest.approx(4 / interval_s)
    assert second.orders.completed_per_s == pytest.approx(6 / interval_s)
    assert second.streams[0].length == 9


def test_gather_or_keep_marks_disconnected(own_redis):
    from choreo.bus.connect import open_bus
    bus = open_bus(own_redis.url)
    try:
        first = dashboard.gather_or_keep(bus, own_redis.url, None)
        own_redis.kill()
        down = dashboard.gather_or_keep(bus, own_redis.url, first)
        assert first.connected and not down.connected and down.error
        assert down.server_version == first.server_version        # the last figures stay
    finally:
        bus.close()


def consumer_idle_ms(client, stream: str, group: str, name: str) -> int:
    return next(c["idle"] for c in client.xinfo_consumers(stream, group) if c["name"] == name)

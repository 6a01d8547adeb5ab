"""`choreo load` learning outcomes from the events that end an order (choreo.measure.endings), with no
server: an embedded Redis, a stand-in for the workers, and a fake clock where time matters."""

from __future__ import annotations

import time

import fakeredis
import pytest

from choreo.bus import keys as bus_keys
from choreo.bus.redis_streams import RedisStreamsBus
from choreo.measure.endings import EndingWatch
from choreo.measure.load import SETTLE_S, LoadPlan, run_load
from choreo.measure.outages import RideThrough
from tests.test_load_outages import FakeTime, arranged
from choreo.workers import keys
from choreo.workers.order import ending_events

SHIPPED = bus_keys.stream("ShippingArranged")


def fake_bus() -> RedisStreamsBus:
    return RedisStreamsBus(fakeredis.FakeRedis(decode_responses=True))


def test_the_events_that_end_an_order_are_read_from_the_order_services_declaration():
    assert ending_events() == {"InventoryRejected": "REJECTED", "PaymentFailed": "CANCELLED",
                               "ShippingFailed": "CANCELLED", "ShippingArranged": "COMPLETED"}


def test_the_watch_keeps_the_first_ending_of_its_own_orders_published_after_it_started():
    bus = fake_bus()
    arranged(bus.client, "1", 10.0)                 # before the watch: another run's, not ours
    watch = EndingWatch.start(bus, ["1", "2"])
    arranged(bus.client, "3", 11.0)                 # not watched
    bus.client.xadd(bus_keys.stream("PaymentFailed"), {"order_id": "2", "at": "not a time"})
    arranged(bus.client, "2", 12.0)                 # a second ending of order 2 counts once
    watch.read(bus)
    assert watch.waiting == 1 and list(watch.endings) == ["2"]
    assert watch.endings["2"].status == "CANCELLED"
    assert watch.by_status() == {"CANCELLED": 1}


def test_after_an_outage_a_stream_that_came_back_with_lower_ids_is_read_from_the_start():
    bus = fake_bus()
    bus.client.xadd(SHIPPED, {"order_id": "0"}, id="5000-0")
    watch = EndingWatch.start(bus, ["1"])
    bus.client.flushall()                           # a Redis that restarted empty...
    bus.client.xadd(SHIPPED, {"order_id": "1"}, id="100-0")      # ...on a clock gone back
    watch.read(bus, outages=0)
    assert watch.waiting == 1                       # no outage seen: the cursor stays
    watch.read(bus, outages=1)
    assert watch.waiting == 0 and watch.cursors[SHIPPED] == "100-0"


class PublishesEndings(RedisStreamsBus):
    """Stands in for the workers: ShippingArranged for each order 5 ms after its creation, but
    the order service commits COMPLETED only when the test says (`commit_all`)."""

    shipped: set[str]

    def __init__(self, client):
        super().__init__(client)
        self.shipped = set()

    def commit(self, group, commits):
        outcomes = super().commit(group, commits)
        for key in self.client.scan_iter("order:*"):
            if self.client.type(key) == "hash" and key not in self.shipped:
                self.shipped.add(key)
                created = int(self.client.hget(key, "created_at_ms"))
                arranged(self.client, self.client.hget(key, "id"), (created + 5) / 1000)
        return outcomes

    def commit_all(self) -> None:
        for key in self.client.scan_iter("order:*"):
            if self.client.type(key) == "hash":
                created = int(self.client.hget(key, "created_at_ms"))
                self.client.hset(key, mapping={"status": "COMPLETED", "ended_at_ms": created + 50})


def test_completed_counts_the_records_waiting_briefly_for_the_order_service_to_commit():
    bus = PublishesEndings(fakeredis.FakeRedis(decode_responses=True))
    t = FakeTime(on_sleep=lambda s: bus.commit_all() if len(t.slept) == 3 else None)
    result = run_load(bus, LoadPlan(5, timeout_s=60, product=101, quantity=1),
                      ride=t.ride(deadline_in=60))
    assert (result.completed, result.finished, result.gave_up) == (5, 5, "")
    assert t.slept == [0.05] * 3                    # read again until the commit was there
    assert result.elapsed_s == 0                    # done when the last ending was published...
    assert result.latencies_ms == [5] * 5           # ...so latency runs to the event, not the commit


def test_an_ending_the_order_service_never_commits_is_not_counted_after_the_settle_wait():
    bus = PublishesEndings(fakeredis.FakeRedis(decode_responses=True))
    t = FakeTime()
    result = run_load(bus, LoadPlan(3, timeout_s=60, product=101, quantity=1),
                      ride=t.ride(deadline_in=60))
    assert (result.completed, result.finished) == (0, 0)
    assert sum(t.slept) == pytest.approx(SETTLE_S)
    assert result.figures().startswith("orders=3 completed=0 ")


def test_an_order_whose_record_expired_after_it_ended_counts_by_its_ending():
    bus = PublishesEndings(fakeredis.FakeRedis(decode_responses=True))

    def expire_all(_seconds):
        bus.commit_all()
        bus.client.delete(*bus.client.scan_iter("order:*"))     # a retention shorter than the run
    t = FakeTime(on_sleep=expire_all)
    result = run_load(bus, LoadPlan(4, timeout_s=60, product=101, quantity=1),
                      ride=t.ride(deadline_in=60))
    assert (result.completed, result.finished) == (4, 4)
    assert t.slept == [0.05]                        # pending once, then gone: not waited for
    assert result.latencies_ms == []                # when it was created went with it


def test_orders_that_never_end_stop_the_load_at_its_timeout():
    bus = fake_bus()                                # no workers: nothing ever ends
    began = time.monotonic()
    result = run_load(bus, LoadPlan(3, timeout_s=1.5, product=101, quantity=1),
                      ride=RideThrough(time.monotonic() + 1.5, 5.0, lambda line: None))
    assert 1.5 <= time.monotonic() - began < 2.5    # reads block at most a second each
    assert (result.placed, result.finished, result.gave_up) == (3, 0, "")
    assert bus.client.hget(keys.orders_by_status(), "PENDING") == "3"

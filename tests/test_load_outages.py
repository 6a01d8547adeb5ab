"""`choreo load` riding through Redis outages, with no server: a fake clock for the backoff, and
an embedded Redis that goes down (fakeredis's `connected`) or loses a reply for the placing."""

from __future__ import annotations

import fakeredis
import pytest

from choreo.bus import keys as bus_keys
from choreo.bus.contract import BusUnavailable
from choreo.bus.envelope import Envelope
from choreo.bus.redis_streams import RedisStreamsBus
from choreo.measure.load import LoadPlan, place_once, run_load
from choreo.orders import OrderRequest
from choreo.measure.outages import GaveUp, RideThrough
from choreo.workers import keys
from choreo.workers.order import OrderRejected


class FakeTime:
    """A clock that moves only when slept on; on_sleep(seconds) lets a test act during the wait."""

    def __init__(self, on_sleep=lambda s: None):
        self.now, self.slept, self.on_sleep = 1000.0, [], on_sleep

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        self.on_sleep(seconds)

    def ride(self, deadline_in: float, cap: float = 5.0, said: list | None = None) -> RideThrough:
        said = [] if said is None else said
        return RideThrough(self.now + deadline_in, cap, said.append, clock=lambda: self.now,
                           wall=lambda: self.now, sleep=self.sleep)


def failing(times: int, retried: list[bool]):
    """An attempt that is unreachable `times` times, then answers "ok"."""
    def attempt(retrying: bool) -> str:
        retried.append(retrying)
        if len(retried) <= times:
            raise BusUnavailable("Connection refused (test)")
        return "ok"
    return attempt


def test_backoff_doubles_from_half_a_second_to_the_cap_and_says_the_outage_once():
    t, said, retried = FakeTime(), [], []
    ride = t.ride(deadline_in=60, cap=2.0, said=said)
    assert ride.call(failing(5, retried)) == "ok"
    assert t.slept == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert retried == [False, True, True, True, True, True]     # later tries know a reply may be lost
    assert len(said) == 1 and "Redis unavailable (Connection refused (test))" in said[0]
    assert (ride.count, ride.total_s) == (1, 7.5)


def test_each_outage_is_counted_and_said_once_and_a_call_that_answers_ends_it():
    t, said = FakeTime(), []
    ride = t.ride(deadline_in=60, said=said)
    ride.call(failing(2, []))
    assert ride.call(lambda retrying: "fine") == "fine"
    ride.call(failing(1, []))
    assert (ride.count, ride.total_s, len(said)) == (2, 2.0, 2)


def test_gives_up_only_when_the_deadline_has_passed_without_sleeping_past_it():
    t = FakeTime()
    ride = t.ride(deadline_in=2.0, cap=5.0)
    with pytest.raises(GaveUp, match=r"gave up: Redis unreachable for 2.0 s when the --timeout ran out"):
        ride.call(failing(100, []))
    assert t.slept == [0.5, 1.0, 0.5]                 # the last wait ends at the deadline
    assert ride.total_s == 2.0


def test_overlap_with_outages_is_what_latency_leaves_out():
    t = FakeTime()
    ride = t.ride(deadline_in=60)
    ride.call(failing(2, []))                 # down from 1000.0 s to 1001.5 s (wall, in ms below)
    assert ride.overlap_ms(999_000, 1_003_000) == 1500
    assert ride.overlap_ms(1_001_000, 1_003_000) == 500
    assert ride.overlap_ms(1_002_000, 1_003_000) == 0


class LosesReplies(RedisStreamsBus):
    """Applies a commit, then loses its reply `lose` times, as a server killed before answering."""

    def __init__(self, client, lose: int = 0):
        super().__init__(client)
        self.lose = lose

    def commit(self, group, commits):
        outcomes = super().commit(group, commits)
        if self.lose:
            self.lose -= 1
            raise BusUnavailable("Connection reset by peer (test)")
        return outcomes


def requests(*ids: str) -> list[OrderRequest]:
    return [OrderRequest(i, [{"product_id": 101, "quantity": 1}]) for i in ids]


def test_a_retry_counts_orders_the_lost_reply_placed_and_places_each_once():
    bus = LosesReplies(fakeredis.FakeRedis(decode_responses=True), lose=1)
    ride = FakeTime().ride(deadline_in=60)
    found = ride.call(lambda retrying: place_once(bus, requests("1", "2", "3"), 0, retrying))
    assert found == 3
    assert bus.client.xlen(bus_keys.stream("OrderCreated")) == 3
    assert bus.client.hget(keys.orders_by_status(), "PENDING") == "3"


def test_a_retry_places_what_is_missing_and_a_first_try_still_refuses_a_taken_id():
    bus = RedisStreamsBus(fakeredis.FakeRedis(decode_responses=True))
    place_once(bus, requests("1"), 0, retrying=False)
    with pytest.raises(OrderRejected, match="already exists"):
        place_once(bus, requests("1", "2"), 0, retrying=False)     # not ours to count as placed
    assert place_once(bus, requests("1", "2"), 0, retrying=True) == 1
    assert bus.client.xlen(bus_keys.stream("OrderCreated")) == 2


class CompletesOrders(RedisStreamsBus):
    """Stands in for the workers: every order it places is COMPLETED 5 ms after creation, its
    ShippingArranged published then."""

    def commit(self, group, commits):
        outcomes = super().commit(group, commits)
        for key in self.client.scan_iter("order:*"):
            if self.client.type(key) == "hash" and self.client.hget(key, "status") == "PENDING":
                created = int(self.client.hget(key, "created_at_ms"))
                self.client.hset(key, mapping={"status": "COMPLETED", "ended_at_ms": created + 5})
                arranged(self.client, self.client.hget(key, "id"), (created + 5) / 1000)
        return outcomes


def arranged(client, order_id: str, at_s: float) -> None:
    event = Envelope.new("ShippingArranged", order_id, "shipping", clock=lambda: at_s)
    client.xadd(bus_keys.stream("ShippingArranged"), event.fields())


def test_load_goes_on_after_an_outage_keeping_its_ids_and_finishes_every_order():
    server = fakeredis.FakeServer()
    bus = CompletesOrders(fakeredis.FakeRedis(server=server, decode_responses=True))
    down_at = []

    def progress(placed, completed, failed):
        if placed == 20 and not down_at:
            server.connected = False          # down after the second chunk of ten, for 1.2 s
            down_at.append(t.now)

    def on_sleep(seconds):
        if down_at and t.now - down_at[0] >= 1.2:
            server.connected = True
    t = FakeTime(on_sleep)
    result = run_load(bus, LoadPlan(50, timeout_s=60, product=101, quantity=1, rate=200),
                      progress=progress, ride=t.ride(deadline_in=60))
    assert (result.placed, result.completed, result.outages, result.found_placed) == (50, 50, 1, 0)
    # The next placing finds it down after a pacing wait; backs off 0.5 s, then 1 s: back.
    assert t.slept[2:5] == [pytest.approx(0.05), 0.5, 1.0]
    assert result.outage_s == pytest.approx(1.5)
    assert bus.client.get(keys.ORDER_SEQ) == "50"         # one allocation, kept through the outage
    assert bus.client.xlen(bus_keys.stream("OrderCreated")) == 50
    # Paced at 200/s, 50 orders take 0.2 s; the outage adds its 1.5 s, with no burst after it.
    assert result.elapsed_s == pytest.approx(1.7)
    assert result.latencies_ms == [5] * 50
    assert result.figures().endswith(" outages=1 outage_s=1.500")

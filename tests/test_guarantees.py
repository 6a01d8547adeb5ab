"""The worker runtime's promises, each held by a test that fails when it alone breaks: in-process
workers against a real redis-server, whose pending lists, delivery counts and claims are the point.
scripts/mutations.toml names, for each deliberate bug, the tests here that must catch it."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading

import pytest
import redis

from choreo.bus import keys as bus_keys
from choreo.bus.contract import Commit
from choreo.bus.envelope import Envelope
from choreo.bus.ops import Publish
from choreo.orders import OrderRequest, place_orders
from choreo.config.settings import Settings
from tests.helpers import log_lines, pending_count, wait_for
from choreo.workers.logs import EVENTS
from tests.inprocess import drain
from choreo.workers import SERVICES, keys
from choreo.workers.runtime import Worker
from choreo.workers.service import On, Service, confirm

CREATED = bus_keys.stream("OrderCreated")
CONSUMER = "inventory-test-1"


def out_of_reach(**kw) -> Settings:
    """Retries and claims a minute away: whatever a worker handles now, it found by another road."""
    return Settings(**{"retry_base_ms": 60_000, "retry_max_ms": 60_000, "claim_idle_ms": 60_000,
                       "block_ms": 50, **kw})


def place(bus, *order_ids: str) -> None:
    place_orders(bus, [OrderRequest(o, [{"product_id": 101, "quantity": 1}]) for o in order_ids])


def reserved(bus, *order_ids: str) -> list[bool]:
    return [bus.client.exists(keys.reservation(o)) == 1 for o in order_ids]


class WorkerKilled(BaseException):
    """The process dying mid-handling: not an Exception, so nothing in the runtime catches it."""


def killer_of(service: Service, event_type: str) -> Service:
    """`service` with a handler for event_type that kills its worker every time."""
    def die(event, uow):
        raise WorkerKilled(event.id)
    return dataclasses.replace(service, consumes={**service.consumes,
                                                  event_type: On(die, service.consumes[event_type].says)})


def test_an_entry_that_kills_its_worker_every_time_is_given_up_after_3_x_max_deliveries(real_bus):
    service = killer_of(SERVICES["inventory"], "OrderCreated")
    settings = out_of_reach(max_deliveries=2)              # the crash guard: 6 deliveries
    place(real_bus, "1")
    dlq = bus_keys.dead_letters("inventory")
    lives = 0
    while not real_bus.client.exists(dlq):
        assert lives < 10, "still handing the entry to a worker it kills"
        # The same process slot restarted: its own pending entry is the first thing it reads.
        worker = Worker(service, real_bus, settings, CONSUMER)
        worker.start()
        with contextlib.suppress(WorkerKilled):
            worker.poll(block_ms=5)
        lives += 1
    assert lives == 7                                       # six died; the seventh gave up on it
    (_, dead), = real_bus.client.xrange(dlq)
    assert dead["deliveries"] == "7"
    assert dead["error"].startswith("gave up after 6 deliveries: the worker handling it died")
    assert pending_count(real_bus.client, CREATED, "inventory") == 0      # acked with its letter
    assert reserved(real_bus, "1") == [False]


def test_a_restarted_consumer_handles_its_own_pending_entries_before_anything_new(real_bus, caplog):
    caplog.set_level(logging.INFO)
    place(real_bus, "1", "2")
    real_bus.ensure_groups("inventory", [CREATED])
    # A previous life of this consumer read them and died before committing.
    assert len(real_bus.read_new("inventory", CONSUMER, [CREATED], 10, 10)) == 2
    place(real_bus, "3", "4")
    worker = Worker(SERVICES["inventory"], real_bus, out_of_reach(), CONSUMER)
    worker.start()
    assert [worker.poll(block_ms=5) for _ in range(2)] == [1, 1]      # one at a time (the crash guard)
    assert reserved(real_bus, "1", "2", "3", "4") == [True, True, False, False]
    assert sum("deliveries=2" in line for line in log_lines(caplog)) == 2              # re-read, not re-claimed
    drain([worker])
    assert reserved(real_bus, "3", "4") == [True, True]


def tally(event, uow) -> None:
    """Counts every handling: no tolerance of duplicates at all, so only the commit's guard (the
    dedup marker) stands between a redelivered event and a second effect."""
    uow.add("tally", "handled", 1)


TALLY = Service("tally", "TallyService", {"OrderCreated": On(tally, "Counting order {order_id}")},
                emits=())


def test_an_event_published_twice_is_applied_once_by_the_commits_own_guard(real_bus, caplog):
    """A producer whose publish is not a guarded commit (no ack, no dedup id, no version it
    moves), retrying after a lost reply: the same event twice as two entries, without `once`.
    The consumer's seen set is what stands between them."""
    caplog.set_level(logging.INFO)
    worker = Worker(TALLY, real_bus, out_of_reach(), "tally-test-1")
    worker.start()
    event = Envelope.new("OrderCreated", "1", "order", {"lines": [{"product_id": 101, "quantity": 1}],
                                                        "total_cents": 1999})
    retry = Commit(ops=[Publish(CREATED, event.fields(), trace=bus_keys.trace("1"))])
    real_bus.commit("", [retry])
    worker.poll(block_ms=5)
    real_bus.commit("", [retry])                # the same publish again: a second entry
    worker.poll(block_ms=5)
    assert [f.get("once") for _, f in real_bus.client.xrange(CREATED)] == [None, None]
    assert real_bus.client.hget("tally", "handled") == "1"
    assert pending_count(real_bus.client, CREATED, "tally") == 0          # both acked
    assert [("duplicate=ignored" in line) for line in log_lines(caplog, logger=EVENTS)] == [False, True]
    assert real_bus.client.zscore(bus_keys.seen("tally"), event.id) is not None


def test_a_confirmation_published_twice_is_acknowledged_twice_and_reported_once(real_bus, caplog):
    """A confirm handler changes nothing, so its commit is only the ack (no unit of work): it
    still keeps the event's id, and the second entry of the same event reads as a duplicate."""
    caplog.set_level(logging.INFO)
    confirming = Service("confirming", "ConfirmingService",
                         {"OrderCreated": On(confirm, "Confirmed order {order_id}")}, emits=())
    worker = Worker(confirming, real_bus, out_of_reach(), "confirming-test-1")
    worker.start()
    event = Envelope.new("OrderCreated", "1", "order", {"lines": [{"product_id": 101, "quantity": 1}],
                                                        "total_cents": 1999})
    retry = Commit(ops=[Publish(CREATED, event.fields(), trace=bus_keys.trace("1"))])
    for _ in range(2):                          # the same publish twice: two entries
        real_bus.commit("", [retry])
        worker.poll(block_ms=5)
    assert pending_count(real_bus.client, CREATED, "confirming") == 0     # both acked
    assert [("duplicate=ignored" in line) for line in log_lines(caplog, logger=EVENTS)] == [False, True]
    assert real_bus.client.zscore(bus_keys.seen("confirming"), event.id) is not None


def test_a_replay_for_another_group_is_acknowledged_however_often_it_was_delivered(real_bus):
    """A copy addressed to another group (`for`) is never this group's to handle nor to
    dead-letter, not even past the crash guard: a dead letter here could be replayed to this
    group, which had the original."""
    worker = Worker(TALLY, real_bus, out_of_reach(max_deliveries=1), "tally-test-1")   # guard: 3
    worker.start()
    copy = {**Envelope.new("OrderCreated", "1", "order", {"lines": [{"product_id": 101, "quantity": 1}],
                                                          "total_cents": 1999}).fields(), "for": "inventory"}
    entry_id = real_bus.client.xadd(CREATED, copy)
    real_bus.client.xreadgroup("tally", "tally-test-1", {CREATED: ">"})
    for _ in range(3):                      # three lives of this consumer that died holding it
        real_bus.client.xclaim(CREATED, "tally", "tally-test-1", 0, [entry_id])
    drain([worker])
    assert not real_bus.client.exists(bus_keys.dead_letters("tally"))
    assert pending_count(real_bus.client, CREATED, "tally") == 0
    assert real_bus.client.hget("tally", "handled") is None


def test_an_event_a_guarded_commit_published_costs_its_consumers_no_dedup_id(real_bus):
    """place-order's commit creates the order's hash, so it cannot apply twice: its OrderCreated
    says `once`, and the consumer relies on its ack alone, keeping no id (memory per order)."""
    worker = Worker(TALLY, real_bus, out_of_reach(), "tally-test-1")
    worker.start()
    place(real_bus, "1", "2")
    drain([worker])
    assert [f["once"] for _, f in real_bus.client.xrange(CREATED)] == ["1", "1"]
    assert real_bus.client.hget("tally", "handled") == "2"
    assert not real_bus.client.exists(bus_keys.seen("tally"))


def test_a_slow_handlers_entries_are_not_taken_over_while_it_works(real_bus, caplog):
    caplog.set_level(logging.INFO)
    """The lease thread renews entries in hand every claim_idle_ms / 3, so another consumer's
    XAUTOCLAIM never finds them idle; without it they would be idle 0.7 s half-way through."""
    worker = Worker(TALLY, real_bus, out_of_reach(claim_idle_ms=150, commit_delay_ms=1500),
                    "tally-slow-1")
    place(real_bus, "1")
    stop = threading.Event()
    running = threading.Thread(target=worker.run, args=(stop,))
    running.start()
    taken = []
    try:
        wait_for(lambda: pending_count(real_bus.client, CREATED, "tally") == 1, timeout=10,
                 what="the entry in hand")
        while pending_count(real_bus.client, CREATED, "tally"):           # until it is committed
            taken += real_bus.claim_stale("tally", "tally-other-1", [CREATED], min_idle_ms=700,
                                          count=10)
            stop.wait(0.05)
    finally:
        stop.set()
        running.join(5)
    assert taken == []
    (handled,) = log_lines(caplog, logger=EVENTS)
    assert "Counting order 1" in handled and "deliveries=1 " in handled
    assert real_bus.client.hget("tally", "handled") == "1"


def test_pending_count_reads_0_only_where_there_is_no_group_yet(real_bus):
    """The tests' own helper: a read that fails for any other reason must not pass for "drained"."""
    c = real_bus.client
    assert pending_count(c, CREATED, "inventory") == 0                    # no stream, no group
    place(real_bus, "1")
    real_bus.ensure_groups("inventory", [CREATED])
    real_bus.read_new("inventory", CONSUMER, [CREATED], 10, 10)
    assert pending_count(c, CREATED, "inventory") == 1
    c.set("not-a-stream", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        pending_count(c, "not-a-stream", "inventory")
    with pytest.raises(redis.ConnectionError):
        pending_count(Unreachable(), CREATED, "inventory")


class Unreachable:
    def xpending(self, stream, group):
        raise redis.ConnectionError("Connection refused (test)")


@pytest.mark.parametrize("partitions", [1, 2])
def test_two_lines_of_one_product_take_their_sum_from_its_stock_never_more_than_there_is(real_bus, partitions):
    """No overselling: an order listing product 103 (5 in stock) twice, 3 + 3, each line alone
    fitting, is rejected and moves no stock; 2 + 2 is reserved and sold as 4. The untagged layout
    checked each line against the same available count (5 ≥ 3 twice: sold 6, available -1)."""
    from choreo.bus import layout
    from tests.inprocess import start_workers
    previous = layout.use(layout.Layout(partitions=partitions))
    try:
        workers = start_workers(real_bus)
        place_orders(real_bus, [OrderRequest("1", [{"product_id": 103, "quantity": 3}] * 2),
                                OrderRequest("2", [{"product_id": 103, "quantity": 2}] * 2)])
        drain(workers)
        c = real_bus.client
        assert c.hget(keys.order("1"), "status") == "REJECTED"
        assert c.hget(keys.order("1"), "reason") == "not enough stock for product 103"
        assert c.hget(keys.order("2"), "status") == "COMPLETED"
        stock = c.hgetall(keys.stock(103))
        assert (stock["available"], stock.get("reserved", "0"), stock["sold"]) == ("1", "0", "4")
    finally:
        layout.use(previous)


def test_a_dead_letter_whose_entry_was_acknowledged_meanwhile_is_not_reported_written(real_bus, caplog):
    """Its commit comes back DUPLICATE (another consumer finished the entry between the read and
    the commit): no letter is written, and the log must not say one was."""
    caplog.set_level(logging.INFO)
    c = real_bus.client
    worker = Worker(SERVICES["order"], real_bus, out_of_reach(), "order-test-1")
    worker.start()
    stream = bus_keys.stream("InventoryRejected")
    entry_id = c.xadd(stream, {"garbage": "1"})
    commit = real_bus.commit

    def raced(group, commits):
        c.xack(stream, "order", entry_id)          # another consumer of the group finished it
        return commit(group, commits)
    real_bus.commit = raced
    worker.poll(block_ms=5)
    assert not c.exists(bus_keys.dead_letters("order"))
    said = [line for line in log_lines(caplog) if entry_id in line]
    assert said and all("did not dead-letter" in line and "acknowledged meanwhile" in line
                        for line in said), said

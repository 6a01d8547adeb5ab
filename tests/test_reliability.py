"""Nothing lost, nothing doubled: retries, dead letters, duplicates, arbitrary input — the worker
runtime in-process against a real redis-server."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from choreo.bus import keys as bus_keys
from choreo.bus.envelope import Envelope, FIELDS
from choreo.config.settings import Settings
from choreo.workers import SERVICES, keys
from tests.helpers import log_lines
from choreo.workers.runtime import Worker
from choreo.workers.service import On
from choreo.orders import OrderRequest, place_orders

CHECKED = bus_keys.stream("InventoryChecked")


def checked_event(order_id="1", total=3998):
    return Envelope.new("InventoryChecked", order_id, "inventory",
                        {"lines": [{"product_id": 101, "quantity": 2}], "total_cents": total})


def xadd(bus, event):
    bus.client.xadd(bus_keys.stream(event.type), event.fields())


def flaky_payment(failures: int):
    """The payment service with a charge handler that raises `failures` times first."""
    calls = {"n": 0}
    real = SERVICES["payment"].consumes["InventoryChecked"]

    def charge(event, uow):
        calls["n"] += 1
        if calls["n"] <= failures:
            raise ConnectionError(f"card gateway timeout #{calls['n']}")
        real.handle(event, uow)
    consumes = {**SERVICES["payment"].consumes, "InventoryChecked": On(charge, real.says)}
    return dataclasses.replace(SERVICES["payment"], consumes=consumes), calls


def run_until(workers, done, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            w.poll(block_ms=5)
        if done():
            return
    raise AssertionError("timed out")


def fast(**kw) -> Settings:
    return Settings(**{"retry_base_ms": 20, "retry_max_ms": 200, "claim_idle_ms": 60_000, **kw})


def test_handler_failing_twice_then_succeeding_is_applied_once_on_delivery_3(real_bus, caplog):
    caplog.set_level(logging.INFO)
    service, calls = flaky_payment(failures=2)
    worker = Worker(service, real_bus, fast(), "payment-test-1")
    worker.start()
    xadd(real_bus, checked_event())
    run_until([worker], lambda: real_bus.client.exists(keys.payment("1")))
    assert calls["n"] == 3
    assert real_bus.client.hget(keys.payment_totals(), "charged_cents") == "3998"
    assert real_bus.client.xpending(CHECKED, "payment")["pending"] == 0
    log = log_lines(caplog)
    assert any("Processing payment for order 1" in l and "deliveries=3" in l for l in log)
    assert sum("handler failed" in l for l in log_lines(caplog, logging.WARNING)) == 2
    assert real_bus.client.xlen(bus_keys.dead_letters("payment")) == 0


def test_handler_always_failing_is_dead_lettered_after_max_deliveries_and_nothing_else_changes(real_bus):
    service, calls = flaky_payment(failures=10**6)
    worker = Worker(service, real_bus, fast(max_deliveries=3), "payment-test-1")
    worker.start()
    xadd(real_bus, checked_event())
    dlq = bus_keys.dead_letters("payment")
    run_until([worker], lambda: real_bus.client.exists(dlq))
    assert calls["n"] == 3
    (entry_id, dead), = real_bus.client.xrange(dlq)
    assert dead["deliveries"] == "3" and "card gateway timeout #3" in dead["error"]
    assert dead["stream"] == CHECKED and json.loads(dead["entry"])["type"] == "InventoryChecked"
    assert real_bus.client.xpending(CHECKED, "payment")["pending"] == 0     # acked with it
    assert not real_bus.client.exists(keys.payment("1"), keys.payment_totals())
    assert real_bus.client.xlen(bus_keys.stream("PaymentProcessed")) == 0


def test_a_dead_letter_line_names_its_event_when_the_entry_parsed_and_not_otherwise(real_bus, caplog):
    from choreo.logs import JsonFormatter
    caplog.set_level(logging.INFO)
    service, _ = flaky_payment(failures=10**6)
    worker = Worker(service, real_bus, fast(max_deliveries=2), "payment-test-1")
    worker.start()
    event = checked_event("7")
    xadd(real_bus, event)
    real_bus.client.xadd(CHECKED, {**checked_event("8").fields(), "v": "9"})    # never parses
    run_until([worker], lambda: real_bus.client.xlen(bus_keys.dead_letters("payment")) == 2)
    dead = [r for r in caplog.records if r.levelno == logging.ERROR and "dead-lettered" in r.getMessage()]
    assert len(dead) == 2
    failed, malformed = sorted(dead, key=lambda r: "unknown schema version" in r.getMessage())
    as_json = json.loads(JsonFormatter().format(failed))
    assert (as_json["event_id"], as_json["order_id"]) == (event.id, "7")
    plain = log_lines(caplog, logging.ERROR)
    assert any(f"event_id={event.id} order_id=7 stream=" in l and "failed 2 times" in l for l in plain), plain
    assert (malformed.context["event_id"], malformed.context["order_id"]) == ("", "")


def test_an_event_delivered_twice_has_no_second_effect(real_bus):
    workers = [Worker(s, real_bus, fast(), f"{s.name}-test-1")
               for s in SERVICES.values()]
    for w in workers:
        w.start()
    place_orders(real_bus, [OrderRequest("1", [{"product_id": 101, "quantity": 2}])])
    run_until(workers, lambda: real_bus.client.hget(keys.order("1"), "status") == "COMPLETED")
    before = {k: real_bus.client.hgetall(k) for k in (keys.stock(101), keys.payment_totals())}
    # The same envelopes again, as a producer retrying after a lost reply would publish them.
    for stream in [bus_keys.stream(t) for t in ("OrderCreated", "InventoryChecked", "PaymentProcessed")]:
        for _, fields in real_bus.client.xrange(stream):
            real_bus.client.xadd(stream, fields)
    run_until(workers, lambda: all(g["lag"] == 0 and g["pending"] == 0
                                   for s in (bus_keys.stream("OrderCreated"), CHECKED)
                                   for g in real_bus.client.xinfo_groups(s)))
    after = {k: real_bus.client.hgetall(k) for k in before}
    assert after == before
    assert real_bus.client.xlen(bus_keys.stream("ShippingArranged")) == 1


valid = Envelope.new("OrderCreated", "9", "order",
                     {"lines": [{"product_id": 101, "quantity": 1}], "total_cents": 1999}).fields()
values = st.one_of(st.text(max_size=40), st.binary(max_size=12))
field_maps = st.one_of(
    st.dictionaries(st.text(min_size=1, max_size=12), values, max_size=8),
    st.fixed_dictionaries({k: st.one_of(st.just(v), values) for k, v in valid.items()}),
    st.builds(lambda drop, data: {**{k: v for k, v in valid.items() if k not in drop}, "data": data},
              st.sets(st.sampled_from(FIELDS), max_size=2),
              st.one_of(st.just(valid["data"]), st.text(max_size=50),
                        st.dictionaries(st.sampled_from(["lines", "total_cents", "deadline_at_ms", "x"]),
                                        st.integers() | st.text(max_size=8)
                                        | st.just([{"product_id": 101, "quantity": 10 ** 20}])).map(json.dumps))),
)
# Every stream each service reads: an entry written there is handled or dead-lettered, whatever it is.
CONSUMED = [(name, event_type) for name, s in SERVICES.items() for event_type in s.consumes]


@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=field_maps, where=st.sampled_from(CONSUMED))
def test_any_field_map_ends_handled_or_dead_lettered_with_a_reason(real_bus, fields, where):
    real_bus.client.flushall()
    service, event_type = where
    worker = Worker(SERVICES[service], real_bus, fast(max_deliveries=2), f"{service}-prop-1")
    worker.start()
    stream = bus_keys.stream(event_type)
    entry_id = real_bus.raw.xadd(stream, fields or {"empty": ""}).decode()
    group = lambda: next(g for g in real_bus.client.xinfo_groups(stream) if g["name"] == service)
    run_until([worker], lambda: group()["pending"] == 0 and group()["lag"] == 0)
    dead = real_bus.client.xrange(bus_keys.dead_letters(service))
    for _, d in dead:
        assert d["entry_id"] == entry_id and d["error"]
    if not dead:        # handled: the same envelope is a well-formed event of this type
        assert Envelope.parse({k: v for k, v in fields.items()}).type == event_type


def test_an_entry_redis_refuses_is_dead_lettered_alone_and_the_rest_go_on(real_bus):
    worker = Worker(SERVICES["inventory"], real_bus, fast(), "inventory-test-1")
    worker.start()
    real_bus.client.delete(keys.stock(102))
    real_bus.client.set(keys.stock(102), "not a hash")         # someone broke one product's key
    place_orders(real_bus, [OrderRequest("1", [{"product_id": 101, "quantity": 1}]),
                            OrderRequest("2", [{"product_id": 102, "quantity": 1}]),
                            OrderRequest("3", [{"product_id": 101, "quantity": 1}])])
    created = bus_keys.stream("OrderCreated")
    group = lambda: next(g for g in real_bus.client.xinfo_groups(created) if g["name"] == "inventory")
    run_until([worker], lambda: group()["pending"] == 0 and group()["lag"] == 0)
    (_, dead), = real_bus.client.xrange(bus_keys.dead_letters("inventory"))
    assert json.loads(dead["entry"])["order_id"] == "2" and "WRONGTYPE" in dead["error"]
    assert real_bus.client.hget(keys.reservation("1"), "status") == "RESERVED"
    assert real_bus.client.hget(keys.reservation("3"), "status") == "RESERVED"


def test_lost_commit_replies_do_not_use_up_the_delivery_budget(real_bus, monkeypatch):
    from choreo.bus.contract import BusUnavailable
    worker = Worker(SERVICES["inventory"], real_bus, fast(), "inventory-test-1")
    worker.start()
    place_orders(real_bus, [OrderRequest(str(i), [{"product_id": 101, "quantity": 1}]) for i in (1, 2, 3)])
    real_commit, failures = real_bus.commit, {"left": 6}

    def flaky_commit(group, commits):
        if group == "inventory" and failures["left"]:
            failures["left"] -= 1
            raise BusUnavailable("connection reset (test)")
        return real_commit(group, commits)
    monkeypatch.setattr(real_bus, "commit", flaky_commit)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(
            real_bus.client.exists(keys.reservation(str(i))) for i in (1, 2, 3)):
        try:
            worker.poll(block_ms=5)
        except BusUnavailable:
            worker.start()                  # what run() does after its backoff
    assert failures["left"] == 0
    assert all(real_bus.client.hget(keys.reservation(str(i)), "status") == "RESERVED" for i in (1, 2, 3))
    assert real_bus.client.xlen(bus_keys.dead_letters("inventory")) == 0


def test_the_lease_thread_outlives_redis_errors(caplog):
    import threading
    from choreo.bus.contract import Delivery, GroupMissing

    class LeaseBus:
        calls = 0

        def renew(self, group, consumer, deliveries):
            LeaseBus.calls += 1
            raise GroupMissing("NOGROUP (test)") if LeaseBus.calls == 1 else RuntimeError("odd (test)")
    worker = Worker(SERVICES["order"], LeaseBus(), fast(claim_idle_ms=30), "order-test-1")
    worker._in_hand = (time.monotonic() - 1, [Delivery("s", "1-0", {})])
    stop = threading.Event()
    thread = threading.Thread(target=worker.keep_lease, args=(stop,))
    thread.start()
    time.sleep(0.2)
    stop.set()
    thread.join(1)
    assert LeaseBus.calls >= 3 and any("lease renewal failed" in l for l in log_lines(caplog, logging.ERROR))


def test_a_broken_dead_letter_stream_is_reported_not_looped_on(real_bus):
    import signal
    from choreo.bus.contract import BusError
    worker = Worker(SERVICES["inventory"], real_bus, fast(), "inventory-test-1")
    worker.start()
    real_bus.client.set(bus_keys.dead_letters("inventory"), "not a stream")
    real_bus.client.xadd(bus_keys.stream("OrderCreated"), {"not": "an event"})
    def looping(*_):
        raise AssertionError("still looping on the dead letter after 10 s")
    previous = signal.signal(signal.SIGALRM, looping)
    signal.alarm(10)                        # a loop here would hang the suite; fail it instead
    try:
        with pytest.raises(BusError, match="dlq:inventory holds a string"):
            worker.poll(block_ms=5)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert real_bus.client.xpending(bus_keys.stream("OrderCreated"), "inventory")["pending"] == 1

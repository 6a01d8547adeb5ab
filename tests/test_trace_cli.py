"""`choreo trace ORDER_ID`: the order's flow as a tree in causal order, in the tutorial's wording,
with compensations, retries and dead letters marked; --json for machines."""

from __future__ import annotations

import json
import time

from choreo.bus import keys as bus_keys
from choreo.bus.contract import Commit
from choreo.bus.envelope import Envelope
from choreo.bus.ops import Publish
from choreo.cli import main
from choreo.orders import OrderRequest, place_orders
from choreo.config.settings import Settings
from tests.helpers import EIGHT, record
from tests.inprocess import drain, start_workers
from choreo.workers import keys



def tree_lines(output: str) -> list[str]:
    """Each node's text without the tree guides in front of it."""
    return [line.split("── ", 1)[-1] for line in output.splitlines()[1:]]


def trace(capsys, url: str, order_id: str, *flags: str) -> str:
    assert main(["trace", order_id, "--redis-url", url, *flags]) == 0
    return capsys.readouterr().out


def test_demo_then_trace_tells_the_tutorials_story(procs, redis_url):
    demo = procs.run("demo", "--redis-url", redis_url)
    assert demo.returncode == 0 and demo.stdout.splitlines()[:8] == EIGHT

    shown = procs.run("trace", "1")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "order 1  COMPLETED"
    lines = tree_lines(shown.stdout)
    assert [line for line in lines if line in EIGHT] == EIGHT           # in the tutorial's order
    assert [line.split()[0] for line in lines if not line.startswith(tuple(s.split(":")[0] for s in EIGHT))] \
        == ["OrderCreated", "InventoryChecked", "PaymentProcessed", "ShippingArranged"]
    assert "OrderService: Order 1 completed  [handled]" in lines
    assert "InventoryService: Stock sold for order 1  [handled]" in lines
    assert "compensation" not in shown.stdout and "DEAD LETTER" not in shown.stdout

    data = json.loads(procs.run("trace", "1", "--json").stdout)
    assert data["story"] == EIGHT and data["status"] == "COMPLETED"
    assert [(e["depth"], e["type"]) for e in data["events"]] == [
        (0, "OrderCreated"), (1, "InventoryChecked"), (2, "PaymentProcessed"), (3, "ShippingArranged")]
    assert [line for e in data["events"] for line in e["lines"]] == EIGHT
    assert {(r["service"], r["status"]) for r in data["events"][3]["reactions"]} == \
        {("order", "handled"), ("inventory", "handled"), ("payment", "handled")}


def test_trace_marks_compensations(real_bus, redis_url, capsys):
    workers = start_workers(real_bus)
    # 101 Gadgets are over the card limit (PaymentFailed); 51 Widgets are too many for one
    # parcel (ShippingFailed: the payment is refunded and the stock released).
    place_orders(real_bus, [OrderRequest("7", [{"product_id": 102, "quantity": 101}]),
                            OrderRequest("8", [{"product_id": 101, "quantity": 51}])])
    drain(workers)

    lines = tree_lines(trace(capsys, redis_url, "7"))
    failed = next(line for line in lines if line.startswith("PaymentFailed"))
    assert failed.endswith("  compensation")
    assert "InventoryService: Releasing stock for order 7  [handled]" in lines
    assert "OrderService: Order 7 cancelled: payment failed  [handled]" in lines

    data = json.loads(trace(capsys, redis_url, "8", "--json"))
    assert data["status"] == "CANCELLED"
    shipping_failed = data["events"][-1]
    assert (shipping_failed["type"], shipping_failed["compensation"]) == ("ShippingFailed", True)
    assert {(r["service"], r["line"], r["status"]) for r in shipping_failed["reactions"]} == {
        ("payment", "PaymentService: Refunding payment for order 8", "handled"),
        ("inventory", "InventoryService: Releasing stock for order 8", "handled"),
        ("order", "OrderService: Order 8 cancelled: shipping failed", "handled")}
    assert not any(e["compensation"] for e in data["events"][:-1])


def _publish(bus, event: Envelope) -> None:
    """Publish as a service does: XADD plus the order's trace list, in one commit."""
    bus.commit("", [Commit(ops=[Publish(bus_keys.stream(event.type), event.fields(),
                                        trace=bus_keys.trace(event.order_id))])])


def test_trace_marks_retries_and_dead_letters(real_bus, redis_url, capsys):
    settings = Settings(max_deliveries=2, retry_base_ms=10)
    (inventory,) = start_workers(real_bus, settings, names=("inventory",))
    # Corrupt stock makes reserving it raise (a bug, not a business outcome), so it is retried.
    real_bus.client.hset(keys.stock(101), "available", "lots")
    _publish(real_bus, Envelope.new("OrderCreated", "9", "order",
                                    {"lines": [{"product_id": 101, "quantity": 1}], "total_cents": 1999}))
    inventory.poll(block_ms=0)
    lines = tree_lines(trace(capsys, redis_url, "9"))
    assert "InventoryService: Checking inventory for order 9  [pending (delivery 1 on inventory-test-1)]" in lines

    deadline = time.monotonic() + 10            # the retry (delivery 2) fails too: dead-lettered
    while not real_bus.client.exists(bus_keys.dead_letters("inventory")):
        assert time.monotonic() < deadline, "never dead-lettered"
        inventory.poll(block_ms=0)
        time.sleep(0.01)
    bad = {**Envelope.new("OrderCreated", "9", "order").fields(), "v": "9"}
    real_bus.client.xadd(bus_keys.stream("OrderCreated"), bad)    # malformed: never in the trace
    drain([inventory])
    output = trace(capsys, redis_url, "9")
    lines = tree_lines(output)
    assert "InventoryService: Checking inventory for order 9  [dead-lettered]" in lines
    letters = [line for line in output.splitlines() if "DEAD LETTER" in line]
    assert len(letters) == 2
    assert letters[0].startswith("│   └── DEAD LETTER") and "ValueError: invalid literal for int()" in letters[0]
    assert letters[1].startswith("└── DEAD LETTER") and "malformed: unknown schema version '9'" in letters[1]

    data = json.loads(trace(capsys, redis_url, "9", "--json"))
    assert [d["service"] for d in data["dead_letters"]] == ["inventory", "inventory"]
    assert data["events"][0]["dead_letters"][0]["deliveries"] == 2


def test_trace_of_an_unknown_order(real_bus, redis_url, capsys):
    assert main(["trace", "404", "--redis-url", redis_url]) == 1
    assert capsys.readouterr().out == "order 404: not found — orders are kept CHOREO_RETENTION_S (86400 s) after they end; this one may have expired\n"


def test_trace_of_an_order_whose_entries_were_trimmed_lists_what_its_refs_still_tell(real_bus, redis_url,
                                                                                      capsys):
    workers = start_workers(real_bus)
    place_orders(real_bus, [OrderRequest("5", [{"product_id": 101, "quantity": 1}])])
    drain(workers)
    # Each service listed the event it published in its own record of the order: no trace key.
    assert not real_bus.client.exists(bus_keys.trace("5"))
    assert [f for f in record(real_bus.client, keys.reservation("5")) if " " in f] == \
        [f"{bus_keys.stream('InventoryChecked')} {json.loads(trace(capsys, redis_url, '5', '--json'))['events'][1]['entry_id']}"]
    real_bus.client.hset(keys.order("5"), "amount x", "")          # no event: not listed
    assert main(["trim", "--redis-url", redis_url]) == 0
    capsys.readouterr()
    assert real_bus.client.xlen(bus_keys.stream("OrderCreated")) == 0

    output = trace(capsys, redis_url, "5")      # found, not "may have expired"
    assert output.splitlines()[0] == "order 5  COMPLETED"
    assert [(line.split()[0], line.endswith("trimmed from its stream")) for line in tree_lines(output)] == [
        ("OrderCreated", True), ("InventoryChecked", True), ("PaymentProcessed", True),
        ("ShippingArranged", True)]
    data = json.loads(trace(capsys, redis_url, "5", "--json"))
    assert data["events"] == [] and [t["type"] for t in data["trimmed"]] == [
        "OrderCreated", "InventoryChecked", "PaymentProcessed", "ShippingArranged"]
    assert all(t["at"].startswith("20") and t["at"].endswith("Z") for t in data["trimmed"])


def test_trace_reads_the_traces_earlier_versions_wrote_as_lists_and_as_strings(real_bus, redis_url, capsys):
    """Versions before hash traces wrote `trace:<id>` as a list, and a few (0f2f71c to 4e9eb86) as
    a string of lines: `choreo trace` of an order they traced failed with WRONGTYPE."""
    stream = bus_keys.stream("OrderCreated")
    for order_id, write in (("7", lambda key, refs: real_bus.client.rpush(key, *refs)),
                            ("8", lambda key, refs: real_bus.client.set(key, "\n".join(refs)))):
        real_bus.client.hset(keys.order(order_id), mapping={"id": order_id, "status": "PENDING"})
        first = real_bus.client.xadd(stream, Envelope.new("OrderCreated", order_id, "order").fields())
        then = real_bus.client.xadd(stream, Envelope.new("DeadlinePassed", order_id, "order").fields())
        write(bus_keys.trace(order_id), [f"{stream} {first}", f"{stream} {then}"])
        data = json.loads(trace(capsys, redis_url, order_id, "--json"))
        assert [(e["type"], e["entry_id"]) for e in data["events"]] == [("OrderCreated", first),
                                                                         ("DeadlinePassed", then)]


def test_trace_of_an_expired_order_is_not_found_and_odd_record_fields_are_no_events(real_bus, redis_url,
                                                                                    capsys):
    workers = start_workers(real_bus)
    place_orders(real_bus, [OrderRequest("6", [{"product_id": 101, "quantity": 1}])])
    drain(workers)
    c = real_bus.client
    # Fields with a space that name no stream entry (a record anyone with its service's rights
    # may write) are not events: the trace shows the order's four and does not fail on them.
    c.hset(keys.order("6"), mapping={"amount x": "", "events:PaymentProcessed 1_0-0": "",
                                      f"{keys.order('6')} 1-0": ""})
    assert [line.split()[0] for line in tree_lines(trace(capsys, redis_url, "6"))
            if line.split()[0].endswith(("Created", "Checked", "Processed", "Arranged"))] == [
        "OrderCreated", "InventoryChecked", "PaymentProcessed", "ShippingArranged"]
    assert main(["status", "6", "--redis-url", redis_url]) == 0      # a record's own fields only
    shown = capsys.readouterr().out
    assert "payment: status=CHARGED" in shown and "events:" not in shown and "amount x" not in shown
    # The order's record expired (a CHARGED payment and a BOOKED shipment outlive it, to the
    # deadline's retention): what they list is not shown as the order.
    c.delete(keys.order("6"), keys.reservation("6"))
    assert main(["trim", "--redis-url", redis_url]) == 0
    capsys.readouterr()
    assert main(["trace", "6", "--redis-url", redis_url]) == 1
    assert "order 6: not found" in capsys.readouterr().out

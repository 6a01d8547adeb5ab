"""Trace context: one order's events form one OpenTelemetry trace across the services (the
in-process saga, spans caught by the SDK's in-memory exporter); without tracing nothing changes
on the wire; a malformed traceparent is ignored, never dead-lettered."""

from __future__ import annotations

import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from choreo.bus import inspect, keys as bus_keys
from choreo.bus.envelope import FIELDS, Envelope
from choreo.orders import OrderRequest, place_orders
from choreo.config.settings import Settings
from tests.helpers import record, wait_for
from tests.inprocess import drain
from choreo.workers import SERVICES, keys
from choreo.workers.runtime import Worker
from choreo.workers.service import trace_keys
from choreo.workers.tracing import Tracing

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def in_memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def run_saga(bus, provider=None, order_id="1") -> list[Worker]:
    workers = [Worker(s, bus, Settings(), f"{n}-test-1",
                      **({"observer": Tracing(n, provider)} if provider else {}))
               for n, s in SERVICES.items()]
    for w in workers:
        w.start()
    place_orders(bus, [OrderRequest(order_id, [{"product_id": 101, "quantity": 2}])],
                 tracing=Tracing("order", provider) if provider else None)
    drain(workers)
    assert bus.client.hget(keys.order(order_id), "status") == "COMPLETED"
    return workers


def order_entries(bus, order_id="1") -> list[tuple[str, str, dict]]:
    """(stream, entry id, fields) of every event of the order, from its trace (the services'
    records of it, and trace:<id>)."""
    refs = inspect.trace_refs(bus, *trace_keys(order_id, SERVICES.values()))
    return [(s, i, bus.client.xrange(s, i, i)[0][1]) for s, i in refs]


def test_one_order_is_one_trace_with_a_span_per_handling_and_commit(fake_bus):
    provider, exporter = in_memory()
    run_saga(fake_bus, provider)
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1            # one trace, all services
    by_id = {s.context.span_id: s for s in spans}
    (root,) = [s for s in spans if s.parent is None]
    assert root.name == "order place OrderCreated" and root.attributes["choreo.order_id"] == "1"

    entries = order_entries(fake_bus)
    handles = [s for s in spans if " handle " in s.name]
    # A handling span for every (event, service that consumes it), as the declarations say.
    assert sorted(s.name for s in handles) == sorted(
        f"{name} handle {f['type']}" for _, _, f in entries
        for name, service in SERVICES.items() if f["type"] in service.consumes)
    producer_of = {f["id"]: f["traceparent"] for _, _, f in entries}
    events = {f["id"]: f for _, _, f in entries}
    for span in handles:
        a = span.attributes
        event = events[a["choreo.event_id"]]
        assert (a["choreo.order_id"], a["choreo.deliveries"]) == ("1", 1)
        assert a["choreo.stream"] == bus_keys.stream(event["type"])
        assert a["choreo.outcome"] == "applied"
        # Its parent is the span that published the event it handled: the event's traceparent.
        parent = by_id[span.parent.span_id]
        assert producer_of[event["id"]].split("-")[2] == f"{parent.context.span_id:016x}"
        if event["causation_id"]:
            assert parent.attributes["choreo.event_id"] == event["causation_id"]
            assert parent.name.endswith(" handle " + events[event["causation_id"]]["type"])
        else:
            assert parent is root
        # ... and the commit is its child, inside it.
        (commit,) = [s for s in spans if s.name.endswith(" commit")
                     and s.parent.span_id == span.context.span_id]
        assert commit.name == span.name.split(" ")[0] + " commit"
        assert span.start_time <= commit.start_time <= commit.end_time <= span.end_time
    assert len(spans) == 1 + 2 * len(handles)


def test_without_tracing_events_carry_no_traceparent_field(fake_bus):
    run_saga(fake_bus)
    entries = order_entries(fake_bus)
    assert entries and all(sorted(f) == sorted((*FIELDS, "once")) for _, _, f in entries)


def test_a_malformed_traceparent_is_ignored_not_dead_lettered(fake_bus):
    base = Envelope.new("OrderCreated", "1", "order", {}).fields()
    for bad in ("", "garbage", GOOD.upper(), "ff" + GOOD[2:], GOOD.replace("4bf92f35", "00000000")[:3]
                + "0" * 32 + GOOD[35:], GOOD + "-extra", GOOD[:-1]):
        assert Envelope.parse({**base, "traceparent": bad}).traceparent == ""
    assert Envelope.parse({**base, "traceparent": GOOD}).traceparent == GOOD
    # A worker given such an event handles it, starting a new trace for it.
    provider, exporter = in_memory()
    worker = Worker(SERVICES["inventory"], fake_bus, Settings(), "inventory-test-1",
                    observer=Tracing("inventory", provider))
    worker.start()
    event = Envelope.new("OrderCreated", "7", "order",
                         {"lines": [{"product_id": 101, "quantity": 1}], "total_cents": 1999,
                          "deadline_ms": 0})
    fake_bus.client.xadd(bus_keys.stream("OrderCreated"), {**event.fields(), "traceparent": "00-zz"})
    drain([worker])
    assert fake_bus.client.xlen(bus_keys.dead_letters("inventory")) == 0
    spans = exporter.get_finished_spans()
    (span,) = [s for s in spans if s.name == "inventory handle OrderCreated"]
    assert span.parent is None and span.attributes["choreo.outcome"] == "applied"
    (confirm,) = [s for s in spans if s.name == "inventory handle InventoryChecked"]
    assert confirm.parent.span_id == span.context.span_id      # the new trace goes on from it


def test_without_opentelemetry_installed_workers_run_and_events_carry_no_traceparent(procs, redis_server, tmp_path):
    # OpenTelemetry that cannot be imported, as on an install without choreo[tracing] (redis-py
    # itself tries to import it, and copes).
    (tmp_path / "opentelemetry").mkdir()
    (tmp_path / "opentelemetry" / "__init__.py").write_text("raise ImportError('not installed')\n")
    for name in SERVICES:
        procs.worker(name, PYTHONPATH=tmp_path)
    done = procs.run("place-order", "--product", "101", "--quantity", "1", PYTHONPATH=tmp_path)
    assert done.returncode == 0, done.stderr
    r = redis_server.client()
    wait_for(lambda: r.hget(keys.order(done.stdout.strip()), "status") == "COMPLETED", timeout=30,
             what="the order completed")
    for stream in r.scan_iter(match="events:*"):
        assert all(sorted(f) == sorted((*FIELDS, "once")) for _, f in r.xrange(stream)), stream


def test_tracing_without_opentelemetry_says_how_to_install_it(procs, tmp_path):
    (tmp_path / "opentelemetry").mkdir()
    (tmp_path / "opentelemetry" / "__init__.py").write_text("raise ImportError('not installed')\n")
    done = procs.run("worker", "inventory", timeout=20, PYTHONPATH=tmp_path, CHOREO_TRACING=1)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "choreo: tracing needs OpenTelemetry: pip install 'choreo[tracing]'"]


def test_console_spans_go_to_stderr_and_place_order_prints_only_the_order_id(procs, redis_server):
    done = procs.run("place-order", "--product", "101", "--quantity", "1", "--order-id", "o-77",
                     timeout=30, CHOREO_TRACING=1, OTEL_TRACES_EXPORTER="console")
    assert done.returncode == 0 and done.stdout == "o-77\n", done
    assert '"name": "order place OrderCreated"' in done.stderr


def test_across_processes_each_event_carries_the_trace_of_the_order(procs, redis_server):
    on = {"CHOREO_TRACING": 1, "OTEL_TRACES_EXPORTER": "none"}
    for name in SERVICES:
        procs.worker(name, **on)
    done = procs.run("place-order", "--product", "101", "--quantity", "1", **on)
    assert done.returncode == 0, done.stderr
    r = redis_server.client()
    order_id = done.stdout.strip()
    wait_for(lambda: r.hget(keys.order(order_id), "status") == "COMPLETED", timeout=30,
             what="the order completed")
    refs = [ref.split(" ") for key in trace_keys(order_id, SERVICES.values())
            for ref in record(r, key) if " " in ref]
    fields = [r.xrange(s, i, i)[0][1] for s, i in refs]
    parents = [f["traceparent"].split("-") for f in fields]
    assert len(fields) >= 4 and len({p[1] for p in parents}) == 1      # one trace id
    assert len({p[2] for p in parents}) == len(parents)                 # each from its own span

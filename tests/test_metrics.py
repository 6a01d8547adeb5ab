"""Prometheus metrics: the workers' own counters, scraped over HTTP from real worker processes,
the runtime's hooks in-process, and `choreo exporter`'s fleet view against a real redis-server."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from choreo.bus import keys as bus_keys
from choreo.bus.contract import BusUnavailable, Commit, Delivery
from choreo.bus.dead_letters import DeadLetter
from choreo.bus.envelope import iso_ms
from choreo.ops.metrics import PrometheusObserver, new_registry
from choreo.orders import OrderRequest, place_orders
from choreo.measure.redis_server import free_port
from tests.helpers import wait_for
from tests.saga_run import place_mix, settle
from tests.test_reliability import checked_event, fast, flaky_payment, run_until, xadd
from choreo.workers import SERVICES
from choreo.workers.observer import OUTCOMES
from choreo.workers.runtime import Worker

ORDER_CREATED = bus_keys.stream("OrderCreated")


def scrape(port: int) -> dict[tuple, float]:
    """Every sample of http://127.0.0.1:port/metrics, keyed by (name, sorted label pairs)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def entries(samples: dict, service: str, stream: str, outcome: str) -> float | None:
    return sample(samples, "choreo_entries_total", service=service, stream=stream, outcome=outcome)


# -- a worker's /metrics, from real processes ------------------------------------------------------

def test_worker_counters_scraped_over_http_match_what_each_service_handled(procs, redis_server):
    r = redis_server.client()
    ports = {name: free_port() for name in SERVICES}
    for name, port in ports.items():
        procs.worker(name, CHOREO_METRICS_PORT=port)
    before = wait_for(lambda: _try_scrape(ports["inventory"]), what="inventory's /metrics")
    assert all(entries(before, "inventory", s, o) == 0 for s in SERVICES["inventory"].streams
               for o in OUTCOMES)                     # every series there from the start, at 0
    expected = place_mix(procs)
    settle(r)
    # Every entry of every stream a service reads was applied once by it: nothing doubled, no
    # outcome miscounted (MIX has orders ending each way, so most streams carry entries).
    for name, service in SERVICES.items():
        want = {s: r.xlen(s) if r.exists(s) else 0 for s in service.streams}
        wait_for(lambda: all(entries(scrape(ports[name]), name, s, "applied") == n
                             for s, n in want.items()), timeout=10, what=f"{name}'s applied counts")
        got = scrape(ports[name])
        assert all(entries(got, name, s, o) == 0 for s in service.streams
                   for o in ("duplicate", "refused", "dead_lettered")), name
        finished = sum(want.values())
        assert sample(got, "choreo_handler_seconds_count", service=name) >= finished > 0
        assert sample(got, "choreo_batch_entries_sum", service=name) == finished
        assert 1 <= sample(got, "choreo_commit_seconds_count", service=name) <= finished
        assert sample(got, "choreo_commit_seconds_sum", service=name) > 0
        assert sample(got, "choreo_worker_info", service=name, consumer=f"{name}-{socket.gethostname()}-1") == 1
    assert entries(scrape(ports["inventory"]), "inventory", ORDER_CREATED, "applied") == len(expected)

    # A malformed entry: dead-lettered once by each group reading the stream, and counted so.
    r.xadd(ORDER_CREATED, {"junk": "1"})
    for name in ("order", "inventory"):
        wait_for(lambda: entries(scrape(ports[name]), name, ORDER_CREATED, "dead_lettered") == 1,
                 timeout=10, what=f"{name} counting its dead letter")
        assert entries(scrape(ports[name]), name, ORDER_CREATED, "applied") == len(expected)
    assert r.xlen(bus_keys.dead_letters("inventory")) == 1


def _try_scrape(port: int):
    try:
        return scrape(port)
    except OSError:
        return None


def test_a_taken_metrics_port_is_one_line_and_exit_1(procs):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = procs.run("worker", "inventory", "--metrics-port", str(port), timeout=20)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"choreo: cannot serve metrics on 0.0.0.0:{port}: Address already in use"]


@pytest.mark.parametrize("addr", ["a..b", "a" * 70])
def test_a_metrics_address_no_resolver_takes_is_one_line_and_exit_2(addr, procs):
    port = str(free_port())
    for argv, env in ((("exporter", "--addr", addr, "--port", port), {}),
                      (("worker", "inventory", "--metrics-port", port), {"CHOREO_METRICS_ADDR": addr})):
        done = procs.run(*argv, timeout=20, **env)
        assert done.returncode == 2, argv
        (line,) = done.stderr.strip().splitlines()        # the resolver's words vary by Python
        assert line.startswith(f"choreo: cannot serve metrics on {addr!r}: not a host name or address ("), argv


def test_metrics_without_the_extra_say_how_to_install_it(procs, tmp_path):
    # A prometheus_client that cannot be imported, as on an install without choreo[metrics].
    (tmp_path / "prometheus_client.py").write_text("raise ImportError('not installed')\n")
    done = procs.run("worker", "inventory", timeout=20, PYTHONPATH=tmp_path,
                     CHOREO_METRICS_PORT=free_port())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "choreo: metrics need prometheus-client: pip install 'choreo[metrics]'"]


def test_a_worker_without_metrics_never_imports_prometheus_client(procs, tmp_path):
    (tmp_path / "prometheus_client.py").write_text("raise SystemExit('imported prometheus_client')\n")
    worker = procs.start("worker", "order", PYTHONPATH=tmp_path)
    wait_for(lambda: "consuming" in open(worker.log_path).read(), timeout=20, what="worker started")
    time.sleep(0.3)
    assert worker.poll() is None, open(worker.log_path).read()


# -- the runtime's hooks, in-process ---------------------------------------------------------------

def observed(service, bus, settings, consumer):
    registry = new_registry(with_process=False)
    observer = PrometheusObserver(service.name, consumer, service.streams, registry)
    worker = Worker(service, bus, settings, consumer, observer=observer)
    worker.start()
    return worker, lambda name, **labels: registry.get_sample_value(
        name, {"service": service.name, **labels})


def test_retries_are_counted_per_handler_failure_and_the_entry_once_applied(real_bus):
    service, calls = flaky_payment(failures=2)
    worker, value = observed(service, real_bus, fast(), "payment-test-1")
    xadd(real_bus, checked_event())
    run_until([worker], lambda: real_bus.client.xpending(bus_keys.stream("InventoryChecked"),
                                                         "payment")["pending"] == 0)
    checked = bus_keys.stream("InventoryChecked")
    assert value("choreo_retries_total") == 2
    assert value("choreo_entries_total", stream=checked, outcome="applied") == 1
    assert value("choreo_entries_total", stream=checked, outcome="dead_lettered") == 0


def test_entries_claimed_from_a_dead_consumer_are_counted(real_bus):
    real_bus.ensure_groups("inventory", [ORDER_CREATED])
    place_orders(real_bus, [OrderRequest(str(i), [{"product_id": 101, "quantity": 1}]) for i in (1, 2, 3)])
    assert len(real_bus.read_new("inventory", "inventory-dead-1", [ORDER_CREATED], 10, 10)) == 3
    worker, value = observed(SERVICES["inventory"], real_bus,
                             fast(claim_idle_ms=100, claim_every_s=0.05), "inventory-test-1")
    time.sleep(0.15)
    run_until([worker], lambda: real_bus.client.xpending(ORDER_CREATED, "inventory")["pending"] == 0)
    assert value("choreo_claimed_entries_total") == 3
    assert value("choreo_entries_total", stream=ORDER_CREATED, outcome="applied") == 3


def test_duplicates_are_counted_as_duplicate_not_applied(real_bus):
    worker, value = observed(SERVICES["payment"], real_bus, fast(), "payment-test-1")
    event = checked_event()
    xadd(real_bus, event)
    xadd(real_bus, event)           # the same event id again: a producer's retry
    checked = bus_keys.stream("InventoryChecked")
    run_until([worker], lambda: value("choreo_entries_total", stream=checked, outcome="duplicate") == 1)
    assert value("choreo_entries_total", stream=checked, outcome="applied") == 1


class Unreachable:
    """A bus whose server is gone: every call is BusUnavailable; stops the worker after `times`."""

    def __init__(self, stop: threading.Event, times: int):
        self.stop, self.left = stop, times

    def __getattr__(self, name):
        def call(*args, **kwargs):
            if name == "ensure_groups":     # the run loop's; the heartbeat thread calls others
                self.left -= 1
                if self.left <= 0:
                    self.stop.set()
            raise BusUnavailable("connection refused")
        return call


def test_reconnects_are_counted_per_backoff_of_the_run_loop():
    stop = threading.Event()
    registry = new_registry(with_process=False)
    service = SERVICES["order"]
    observer = PrometheusObserver(service.name, "order-test-1", service.streams, registry)
    worker = Worker(service, Unreachable(stop, 3), fast(reconnect_max_s=0.1), "order-test-1",
                    observer=observer)
    assert worker.run(stop) == 0
    assert registry.get_sample_value("choreo_reconnects_total", {"service": "order"}) == 3


# -- choreo exporter ---------------------------------------------------------------------------------

def test_exporter_serves_lag_pending_and_dead_letters_as_redis_holds_them(procs, real_bus):
    c = real_bus.client
    real_bus.ensure_groups("inventory", [ORDER_CREATED])
    place_orders(real_bus, [OrderRequest(str(i), [{"product_id": 101, "quantity": 1}])
                            for i in range(1, 6)])
    taken = real_bus.read_new("inventory", "inventory-slow-1", [ORDER_CREATED], 2, 10)
    assert len(taken) == 2                      # 2 pending, 3 never delivered
    # A group whose lag Redis cannot tell: an undelivered entry was deleted (XINFO lag is nil).
    failed = bus_keys.stream("PaymentFailed")
    real_bus.ensure_groups("inventory", [failed])
    ids = [c.xadd(failed, {"x": str(i)}) for i in range(3)]
    c.xdel(failed, ids[1])
    assert next(g for g in c.xinfo_groups(failed) if g["name"] == "inventory")["lag"] is None
    # Two dead letters of payment's, written as a worker writes them.
    for entry_id in ("1-1", "1-2"):
        letter = DeadLetter.of("payment", Delivery(bus_keys.stream("InventoryChecked"), entry_id,
                                                   {"junk": "1"}), "malformed: test", iso_ms(time.time()))
        real_bus.commit("payment", [Commit(ops=[letter.publish_op(100)])])

    before = sorted(c.keys())
    port = free_port()
    exporter = procs.start("exporter", "--port", str(port), name="exporter")
    got = wait_for(lambda: _try_scrape(port), timeout=20, what="the exporter's /metrics")
    group = {"stream": ORDER_CREATED, "group": "inventory"}
    assert sample(got, "choreo_redis_up") == 1
    assert sample(got, "choreo_group_lag", **group) == 3
    assert sample(got, "choreo_group_pending", **group) == 2
    assert sample(got, "choreo_group_consumers", **group) == 1
    assert sample(got, "choreo_consumer_pending", group="inventory", consumer="inventory-slow-1") == 2
    oldest = sample(got, "choreo_group_oldest_pending_age_seconds", **group)
    assert oldest is not None and oldest >= 0
    assert sample(got, "choreo_stream_length", stream=ORDER_CREATED) == 5
    assert sample(got, "choreo_stream_entries_added_total", stream=ORDER_CREATED) == 5
    # Nil lag is left out, never exported as 0; its pending count is still there.
    assert sample(got, "choreo_group_lag", stream=failed, group="inventory") is None
    assert sample(got, "choreo_group_pending", stream=failed, group="inventory") == 0
    assert sample(got, "choreo_dead_letters", service="payment") == 2
    assert sample(got, "choreo_dead_letters", service="inventory") == 0
    assert sample(got, "choreo_orders", status="PENDING") == 5
    # Gathered at scrape time: acknowledging one entry shows at the next scrape.
    c.xack(ORDER_CREATED, "inventory", taken[0].entry_id)
    assert sample(scrape(port), "choreo_group_pending", **group) == 1
    assert exporter.poll() is None
    assert sorted(c.keys()) == before           # read-only: no key appeared or vanished


def test_exporter_says_redis_is_down_without_stale_figures(procs):
    port = free_port()
    procs.start("exporter", "--port", str(port), "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                name="exporter")
    got = wait_for(lambda: _try_scrape(port), timeout=20, what="the exporter's /metrics")
    assert sample(got, "choreo_redis_up") == 0
    assert not [k for k in got if k[0].startswith(("choreo_group", "choreo_stream", "choreo_orders"))]


# -- what docs/operations.md tells an operator to configure ----------------------------------------

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def _fenced_after(text: str, marker: str) -> str:
    """The first fenced block after `marker` in the page."""
    return text.split(marker, 1)[1].split("```", 2)[1].split("\n", 1)[1]


def test_the_documented_alert_rules_name_series_choreo_serves(real_bus, redis_url):
    from prometheus_client import generate_latest
    from choreo.ops.exporter import FleetCollector
    rules = _fenced_after(OPERATIONS.read_text(), "and alert rules:")
    worker, fleet = new_registry(with_process=False), new_registry(with_process=False)
    PrometheusObserver("payment", "payment-1", SERVICES["payment"].streams, worker)
    fleet.register(FleetCollector(real_bus, redis_url))
    served = generate_latest(worker).decode() + generate_latest(fleet).decode()
    names = set(re.findall(r"^# TYPE (\w+)", served, re.M)) | set(re.findall(r"^(\w+)[{ ]", served, re.M))
    named = set(re.findall(r"\b(choreo_\w+)", rules))
    assert named and named - names == set()
    # The dead-letter alert counts what the workers moved, not the capped, replayable dlq length.
    assert 'increase(choreo_entries_total{outcome="dead_lettered"}[10m]) > 0' in rules
    assert "delta(choreo_dead_letters" not in rules
    assert 'outcome="dead_lettered"' in served


def test_the_documented_procfile_edit_gives_the_scraped_ports():
    from honcho.environ import expand_processes, parse_procfile
    text = OPERATIONS.read_text()
    edited = parse_procfile(_fenced_after(text, "give the four worker lines honcho's `$PORT`")).processes
    shipped = parse_procfile((OPERATIONS.parent.parent / "Procfile").read_text()).processes
    for name, command in edited.items():
        assert command == f"{shipped[name]} --metrics-port $PORT"
    ports = {p.name: p.env["PORT"] for p in expand_processes(shipped, concurrency={"inventory": 3}, port=5000)}
    assert {n: ports[n] for n in ("order.1", "inventory.1", "inventory.3", "payment.1", "shipping.1")} == \
        {"order.1": "5000", "inventory.1": "5100", "inventory.3": "5102", "payment.1": "5200", "shipping.1": "5300"}
    targets = re.findall(r"worker-host:(\d+)", _fenced_after(text, "A Prometheus scrape config for that:"))
    assert targets == ["5000", "5100", "5200", "5300"]

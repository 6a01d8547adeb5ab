"""The whole system as a user runs it: `honcho start` on the real Procfile, then `choreo load`."""

from __future__ import annotations

import os
import signal
import subprocess

import redis

from choreo.bus import keys as bus_keys
from tests.conftest import BIN, ROOT
from tests.helpers import FIGURES, wait_for
from choreo.workers import keys



def inventory_consumers(r) -> int:
    """Consumers appear on their first read; until the group exists there are none."""
    try:
        return len(r.xinfo_consumers(bus_keys.stream("OrderCreated"), "inventory"))
    except redis.ResponseError:
        return 0


def test_honcho_procfile_runs_500_orders_to_completion_and_stops_cleanly(procs, redis_server, tmp_path):
    r = redis_server.client()
    log = open(tmp_path / "honcho.log", "w")
    honcho = subprocess.Popen([str(BIN / "honcho"), "start", "-c", "inventory=3"], cwd=ROOT,
                              env=procs.env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_for(lambda: inventory_consumers(r) == 3, timeout=30, what="three inventory consumers")
        done = procs.run("load", "--orders", "500", "--timeout", "120")
        assert done.returncode == 0, done.stderr
        last = done.stdout.strip().splitlines()[-1]
        m = FIGURES.match(last)
        assert m and m.groups()[:3] == ("500", "500", "0"), last
        wait_for(lambda: r.hget(keys.stock(101), "sold") == "500", what="all sales recorded")
        stock = {k: int(v) for k, v in r.hgetall(keys.stock(101)).items()}
        assert stock["start"] == stock["available"] + stock["reserved"] + stock["sold"]
        assert stock["reserved"] == 0
        assert int(r.hget(keys.payment_totals(), "charged_cents")) == 500 * 1999
        for group in r.xinfo_groups(bus_keys.stream("OrderCreated")):
            assert group["pending"] == 0 and group["lag"] == 0
        names = {c["name"].rsplit("-", 1)[1] for c in r.xinfo_consumers(bus_keys.stream("OrderCreated"), "inventory")}
        assert names == {"1", "2", "3"}           # stable names from HONCHO_PROCESS_NAME
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        honcho.wait(15)
    output = open(tmp_path / "honcho.log").read()
    # every Procfile process (4 services, 2 more inventory, the timers, the trimmer) exits 0 on SIGTERM
    assert output.count("started (pid=") == 8, output[-2000:]
    assert output.count("stopped (rc=0)") == 8, output[-2000:]


def test_a_worker_says_what_it_did_not_its_usual_line_when_it_changed_nothing_or_refused(real_bus, caplog):
    """Each handled entry's line is the service's words for what it did: a forged ShippingFailed
    for an order that completed was logged "Order 1 cancelled: shipping failed", and shipping
    refusing an order past its deadline "Arranging shipping". State was right; the lines were
    not. A handler that changes nothing, or refuses, now says so."""
    import logging
    from choreo.bus import keys as bus_keys
    from choreo.bus.envelope import Envelope
    from choreo.orders import OrderRequest, place_orders
    from tests.helpers import log_lines
    from tests.inprocess import drain, start_workers
    caplog.set_level(logging.INFO)
    workers = start_workers(real_bus)
    place_orders(real_bus, [OrderRequest("1", [{"product_id": 101, "quantity": 1}])])
    drain(workers)
    forged = Envelope.new("ShippingFailed", "1", "shipping", {"reason": "forged"})
    real_bus.client.xadd(bus_keys.stream_for("ShippingFailed", "1"), forged.fields())
    place_orders(real_bus, [OrderRequest("2", [{"product_id": 101, "quantity": 1}])], deadline_s=0.2)
    drain([w for w in workers if w.service.name != "shipping"])
    import time
    time.sleep(0.3)                                             # order 2's deadline passes
    drain(workers)
    lines = [line.split("  ")[0] for line in log_lines(caplog, logging.INFO, "choreo.events")]
    assert "OrderService: Order 1 is COMPLETED: ShippingFailed changes nothing" in lines
    assert "OrderService: Order 1 cancelled: shipping failed" not in lines
    assert "ShippingService: Not shipping order 2: its deadline passed" in lines
    assert real_bus.client.hget("order:1", "status") == "COMPLETED"
    assert real_bus.client.hget("order:2", "status") == "CANCELLED"

"""Issue 7, part 5: the saga over TLS. A redis-server that speaks only TLS (--port 0), requires a
client certificate and a password; certificates made here with the openssl CLI. Every process
gets the one URL, rediss://…?ssl_ca_certs=…&ssl_certfile=…&ssl_keyfile=…&password=…, through
REDIS_URL, and nothing it prints shows the password."""

from __future__ import annotations

import pytest

from choreo.bus import keys as bus_keys
from tests.conftest import Processes
from tests.helpers import wait_for
from tests.redis_server import Certificates, RedisServer
from choreo.workers import SERVICES, keys

PASSWORD = "tls-s3cret"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    certificates = Certificates.make(tmp_path_factory.mktemp("certs"))
    server = RedisServer(tmp_path_factory.mktemp("tls-redis"), tls=certificates,
                         password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def tls_procs(tls_server, tmp_path):
    tls_server.client().flushall()
    p = Processes(tls_server.url, tmp_path)
    yield p
    p.stop_all()


def test_saga_completes_over_tls_with_client_certificate(tls_server, tls_procs):
    workers = [tls_procs.worker(name) for name in SERVICES]
    timers = tls_procs.start("timers")
    placed = tls_procs.run("place-order", "--product", "101", "--quantity", "1")
    assert placed.returncode == 0, placed.stderr
    order_id = placed.stdout.strip()
    r = tls_server.client()
    wait_for(lambda: r.hget(keys.order(order_id), "status") == "COMPLETED", timeout=30,
             what="the order to complete over TLS")

    status = tls_procs.run("status", order_id)
    assert status.returncode == 0 and status.stdout.startswith(f"order {order_id}: COMPLETED\n")
    for argv in (("trace", order_id), ("dashboard", "--once", "--refresh", "0.05"), ("dlq", "list"),
                 ("audit",), ("trim", "--dry-run")):
        done = tls_procs.run(*argv)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        assert PASSWORD not in done.stdout + done.stderr
    assert "ShippingService: Shipping arranged for order" in tls_procs.run("trace", order_id).stdout

    assert all(p.poll() is None for p in (*workers, timers))
    tls_procs.stop_all()
    logs = [open(p.log_path).read() for p in (*workers, timers)]
    assert all("rediss://127.0.0.1" in log and "password=***" in log for log in logs)
    assert not any(PASSWORD in log for log in logs)
    assert [p.returncode for p in (*workers, timers)] == [0] * 5
    assert r.xlen(bus_keys.dead_letters("order")) == 0


def test_an_unverifiable_server_is_refused_in_one_line(tls_server, tls_procs):
    without_ca = tls_server.url.replace(f"ssl_ca_certs={tls_server.tls.ca}&", "")
    done = tls_procs.run("status", "1", REDIS_URL=without_ca)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "certificate verify failed" in done.stderr
    assert "password=***" in done.stderr and PASSWORD not in done.stderr


def test_ssl_cert_reqs_none_connects_with_a_warning(tls_server, tls_procs):
    unverified = tls_server.url.replace(f"ssl_ca_certs={tls_server.tls.ca}", "ssl_cert_reqs=none")
    done = tls_procs.run("status", "404", REDIS_URL=unverified)
    assert done.returncode == 1 and done.stdout.startswith("order 404: not found — ")    # it got an answer
    assert done.stderr.startswith("choreo: warning: the server's TLS certificate is not verified")
    assert done.stderr.count("\n") == 1

"""Issue 7, part 5: a Redis URL's secrets never reach a screen or a log, a URL redis-py cannot use
is one line and exit 2, and a URL that turns TLS verification off says so. No server needed."""

from __future__ import annotations

import pytest

from choreo.bus.connect import EMBEDDED, UnusableUrl, client_for, redact, tls_warning
from choreo.cli import main


@pytest.mark.parametrize("url, shown", [
    ("redis://user:s3cret@cache:6379/0", "redis://user:***@cache:6379/0"),
    ("redis://:s3cret@cache/0", "redis://:***@cache/0"),
    ("redis://u:p@ss@w0rd@cache/0", "redis://u:***@cache/0"),          # '@' in the password
    ("redis://:s3cret@[::1]:6379/0", "redis://:***@[::1]:6379/0"),     # IPv6 keeps its brackets
    ("redis://cache/0?password=s3cret", "redis://cache/0?password=***"),
    ("redis://cache/0?db=1&PASSWORD=s3cret&socket_timeout=2",
     "redis://cache/0?db=1&PASSWORD=***&socket_timeout=2"),
    ("redis://cache/0?pass%77ord=s3cret", "redis://cache/0?pass%77ord=***"),    # redis-py decodes it
    ("rediss://u:a@cache/0?ssl_keyfile=k.pem&ssl_password=s3cret",
     "rediss://u:***@cache/0?ssl_keyfile=k.pem&ssl_password=***"),
    ("unix:///run/redis.sock?password=s3cret&db=2", "unix:///run/redis.sock?password=***&db=2"),
    ("redis://user@cache:6379/0?db=1", "redis://user@cache:6379/0?db=1"),      # nothing secret
    ("redis://[::1", "(unparsable URL)"),
    (None, EMBEDDED),
])
def test_redact_hides_every_password(url, shown):
    assert redact(url) == shown


def test_unusable_url_is_one_line_exit_2_and_redacted(capsys):
    assert main(["status", "1", "--redis-url", "redis://:s3cret@127.0.0.1:1/0?ssl_ca_certs=ca.pem"]) == 2
    err = capsys.readouterr().err
    assert err == ("choreo: cannot use Redis URL redis://:***@127.0.0.1:1/0?ssl_ca_certs=ca.pem: "
                   "ssl_* parameters need a rediss:// URL\n")


@pytest.mark.parametrize("url, why", [
    ("http://cache/0", "Redis URL must specify one of the following schemes"),
    ("redis://cache/0?db=one", "Invalid value for 'db'"),
    ("rediss://cache/0?ssl_cert_reqs=sometimes", "Invalid SSL Certificate Requirements Flag"),
    ("redis://cache/0?colour=blue", "unknown parameter"),
])
def test_client_for_refuses_at_once_what_redis_py_would_refuse_at_first_use(url, why):
    with pytest.raises(UnusableUrl, match=why):
        client_for(url)


def test_client_for_takes_rediss_with_ca_client_certificate_and_key():
    kwargs = client_for("rediss://cache:6380/0?ssl_ca_certs=/ca.crt&ssl_certfile=/c.crt"
                        "&ssl_keyfile=/c.key").connection_pool.connection_kwargs
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == \
        ("/ca.crt", "/c.crt", "/c.key")


@pytest.mark.parametrize("url, warns", [
    ("rediss://cache/0?ssl_cert_reqs=none", True),
    ("rediss://cache/0?ssl_ca_certs=ca.crt&ssl_cert_reqs=none", True),
    ("rediss://cache/0?ssl_cert_reqs=none&ssl_cert_reqs=required", True),     # redis-py takes the first
    ("rediss://cache/0?ssl_cert_reqs=required&ssl_cert_reqs=none", False),
    ("rediss://cache/0?ssl_cert_reqs=required", False),
    ("rediss://cache/0", False),
    ("redis://cache/0", False),
    (None, False),
])
def test_tls_warning_when_the_certificate_is_not_verified(url, warns):
    warning = tls_warning(client_for(url))
    assert (warning is not None) == warns
    if warns:
        assert "not verified" in warning and "\n" not in warning


def test_cluster_false_is_a_plain_client_and_true_a_cluster_one_only_with_database_0():
    import redis as redis_py
    from choreo.bus.connect import UnusableUrl, client_for
    plain = client_for("redis://127.0.0.1:1/0?cluster=false")
    assert isinstance(plain, redis_py.Redis) and not isinstance(plain, redis_py.RedisCluster)
    with pytest.raises(UnusableUrl, match="a cluster has only database 0"):
        client_for("redis://127.0.0.1:1/2?cluster=true")


@pytest.mark.parametrize("error", ["ClusterDownError", "TryAgainError", "ReadOnlyError", "MasterDownError"])
def test_a_cluster_failing_over_is_unavailable_not_a_refusal(error):
    """A BusError would dead-letter the entry in hand; a failover is only a reason to wait."""
    import redis as redis_py
    from choreo.bus.contract import BusUnavailable
    from choreo.bus.redis_streams import translated_errors
    with pytest.raises(BusUnavailable, match="failing over"):
        with translated_errors():
            raise getattr(redis_py.exceptions, error)("CLUSTERDOWN or so")


@pytest.mark.parametrize("nodes", ["127.0.0.1", "127.0.0.1:x", "127.0.0.1:\u0666\u0666\u0665\u0662",
                                   "127.0.0.1:6_652", "127.0.0.1:%206652", "127.0.0.1:+6651",
                                   "127.0.0.1:0", "127.0.0.1:65536", ":7000", "[]:7000"])
def test_a_cluster_urls_nodes_are_host_and_ascii_port_or_refused(nodes):
    """`&nodes=` names more nodes to start from; int() took a port written in other scripts'
    digits, with '_' or a space: each is refused in one line, the name read as cluster_url reads
    it (`%6Eodes` is `nodes`)."""
    from choreo.bus.connect import UnusableUrl, open_bus
    for name in ("nodes", "%6Eodes"):
        with pytest.raises(UnusableUrl, match="nodes= takes host:port,host:port"):
            open_bus(f"redis://127.0.0.1:1/0?cluster=true&{name}={nodes}")

"""Opening a connection: a real server from a URL, or the embedded in-memory one for the demo."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bus.contract import BusUnavailable
from bus.redis_streams import RedisStreamsBus, translated_errors

EMBEDDED = "embedded (in-memory fakeredis)"


def redact(url: str | None) -> str:
    """The URL with any password replaced by ***, safe to print and log."""
    if not url:
        return EMBEDDED
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def how_to_start(url: str) -> str:
    port = urlsplit(url).port or 6379
    return f"start one with: redis-server --port {port} --save '' --daemonize yes (or set REDIS_URL)"


# Anyone who can write a stream can write bytes that are not UTF-8. Readers that decode (trim,
# inspect, the dashboard, dlq, trace, audit) get them as visible \xNN escapes instead of a
# UnicodeDecodeError; the consumer reads entries as bytes and dead-letters such an entry.
DECODE_ERRORS = "backslashreplace"


def client_for(url: str | None) -> redis.Redis:
    if url is None:
        import fakeredis  # only the embedded default needs it
        return fakeredis.FakeRedis(decode_responses=True, encoding_errors=DECODE_ERRORS)
    # No client-side retries: the worker loop owns reconnecting, and a silently retried
    # commit must never be mistaken for a fresh one.
    return redis.Redis.from_url(url, decode_responses=True, encoding_errors=DECODE_ERRORS,
                                socket_connect_timeout=3,
                                socket_timeout=10, retry=Retry(NoBackoff(), 0),
                                health_check_interval=30)


def open_bus(url: str | None, check: bool = True) -> RedisStreamsBus:
    """A bus on `url` (None: embedded). With check, a PING proves the server answers now."""
    client = client_for(url)
    if check:
        try:
            with translated_errors():
                client.ping()
        except BusUnavailable as exc:
            client.close()
            raise BusUnavailable(f"cannot reach Redis at {redact(url)} ({exc}); {how_to_start(url)}") from None
    return RedisStreamsBus(client)

"""Opening a connection: a real server from a URL, or the embedded in-memory one for the demo.

A URL is redis:// or rediss:// (TLS) with redis-py's query parameters, e.g.
rediss://host:6380/0?ssl_ca_certs=ca.crt&ssl_certfile=client.crt&ssl_keyfile=client.key.
It may carry secrets; redact() is the only form of it ever printed or logged.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import ssl
from urllib.parse import unquote, unquote_plus, urlsplit

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.connection import HiredisRespSerializer
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from choreo.bus.contract import BusUnavailable, CredentialsRefused
from choreo.bus import layout
from choreo.bus.layout import cluster_url
from choreo.bus.redis_streams import NamingClient, RedisStreamsBus, same_server, translated_errors

EMBEDDED = "embedded (in-memory fakeredis)"
# Query parameters redis-py reads as secrets: the AUTH password and the client key's passphrase.
SECRET_PARAMETERS = ("password", "ssl_password")


class LeanPacker:
    """How commands are packed for the server (redis-py's `command_packer`): hiredis's packing
    without redis-py's pass over every argument looking for a bytearray or memoryview, which the
    bus never sends, while a batch's commit carries thousands of ARGV words; and a long command of
    ASCII text only (a commit's EVALSHA) joined as one string (joined_words). Whatever hiredis
    refuses (those types, or a command name of two words) is packed the usual way."""

    LONG = 32           # words from which joining beats hiredis

    def __init__(self):
        self._usual = HiredisRespSerializer()

    def pack(self, *args) -> list[bytes]:
        name = args[0]
        if (" " if isinstance(name, str) else b" ") not in name:
            if len(args) >= self.LONG:
                joined = joined_words(args)
                if joined is not None:
                    return [joined]
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return self._usual.pack(*args)


class _Heads(dict):
    """A word's length -> its RESP bulk header ("$12"), made once per length."""

    def __missing__(self, length: int) -> str:
        head = self[length] = f"${length}"
        return head


_HEADS = _Heads()


def joined_words(words: tuple) -> bytes | None:
    """The RESP of a command whose words are all ASCII str, made by one join, or None for any
    other word (then hiredis packs it). hiredis formats each word's header with sprintf: for a
    commit's thousands of words, 13% of a worker's instructions."""
    flat = [""] * (2 * len(words))
    try:
        flat[0::2] = map(_HEADS.__getitem__, map(len, words))
        flat[1::2] = words
        text = f"*{len(words)}\r\n" + "\r\n".join(flat) + "\r\n"
        data = text.encode()
    except (TypeError, UnicodeEncodeError):     # a word not a str; a lone surrogate
        return None
    return data if len(data) == len(text) else None     # not ASCII: lengths are of characters


class UnusableUrl(ValueError):
    """A Redis URL redis-py cannot use (scheme, parameter or value); the message says which."""


def redact(url: str | None) -> str:
    """The URL with every password replaced by ***, safe to print and log: the userinfo's and any
    secret query parameter's. A URL that does not even parse is not shown at all."""
    if not url:
        return EMBEDDED
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    userinfo, _, host = parts.netloc.rpartition("@")        # a password may itself hold '@'
    user, colon, _ = userinfo.partition(":")
    # Edited in place, not re-joined, so the URL reads as typed (unix:///x keeps its slashes).
    if colon:       # a scheme holds neither ':' nor '@': the first match is the netloc
        url = url.replace(parts.netloc, f"{user}:***@{host}", 1)
    if parts.query:
        url = url.replace("?" + parts.query,
                          "?" + "&".join(_redacted_parameter(p) for p in parts.query.split("&")), 1)
    return url


def _redacted_parameter(pair: str) -> str:
    name, equals, _ = pair.partition("=")
    # redis-py decodes names as parse_qs does, so `pass%77ord=` is a password too.
    return f"{name}=***" if equals and unquote_plus(name).lower() in SECRET_PARAMETERS else pair


def tls_warning(client: redis.Redis) -> str | None:
    """One line when the client's URL turns off what makes TLS worth having, else None. Read from
    the options redis-py parsed, so a repeated parameter counts as redis-py counts it."""
    options = (client.nodes_manager.connection_kwargs if isinstance(client, redis.RedisCluster)
               else client.connection_pool.connection_kwargs)
    if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        return ("choreo: warning: the server's TLS certificate is not verified (ssl_cert_reqs=none): "
                "anyone on the path can pose as Redis and read every event and password")
    return None


def how_to_start(url: str, variable: str = "REDIS_URL") -> str:
    parts = urlsplit(url)
    port = parts.port or 6379
    if parts.scheme == "rediss":
        return (f"check that redis-server listens for TLS there (--tls-port {port}) and that "
                f"ssl_ca_certs names the CA that signed its certificate (or set {variable})")
    return f"start one with: redis-server --port {port} --save '' --daemonize yes (or set {variable})"


# Anyone who can write a stream can write bytes that are not UTF-8. Readers that decode (trim,
# inspect, the dashboard, dlq, trace, audit) get them as visible \xNN escapes instead of a
# UnicodeDecodeError; the consumer reads entries as bytes and dead-letters such an entry.
DECODE_ERRORS = "backslashreplace"


def client_for(url: str | None) -> redis.Redis:
    """A client for `url`; UnusableUrl at once if redis-py could not use it, not at first use."""
    if url is None:
        import fakeredis  # only the embedded default needs it
        return fakeredis.FakeRedis(decode_responses=True, encoding_errors=DECODE_ERRORS)
    if cluster_url(url):
        return _cluster_client(url)
    url = _without_cluster(url)         # ?cluster=false: a plain client; redis-py knows no such parameter
    try:
        # No client-side retries: the worker loop owns reconnecting, and a silently retried
        # commit must never be mistaken for a fresh one.
        client = NamingClient.from_url(url, decode_responses=True, encoding_errors=DECODE_ERRORS,
                                      socket_connect_timeout=3, socket_timeout=10,
                                      retry=Retry(NoBackoff(), 0), health_check_interval=30,
                                      command_packer=LeanPacker())
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)     # checks parameters; opens no socket
    except (ValueError, TypeError, redis.RedisError) as exc:
        raise UnusableUrl(f"cannot use Redis URL {redact(url)}: {_why_unusable(url, exc)}") from None
    return client


def _without_cluster(url: str) -> str:
    parts = urlsplit(url)
    if "cluster" not in parts.query:
        return url
    query = "&".join(p for p in parts.query.split("&") if p.partition("=")[0] != "cluster")
    return parts._replace(query=query).geturl()


# What a server says, in the words the cluster client passes on, when it refuses the credentials.
REFUSED_CREDENTIALS = ("invalid username-password pair", "WRONGPASS", "NOAUTH", "HELLO must be called",
                       "Authentication required")


def _credentials_refused(said: str) -> bool:
    return any(words in said for words in REFUSED_CREDENTIALS)


def _cluster_client(url: str) -> redis.RedisCluster:
    """Redis Cluster's client (`?cluster=true`): it learns the slot map from the node named, or
    from the first of `&nodes=host:port,...` that answers when that one does not (a process
    started while the URL's node is down), and follows MOVED and failovers; keys are laid out
    in one slot per partition (bus.layout)."""
    parts = urlsplit(url)
    words = [p for p in parts.query.split("&") if p]
    named = [unquote_plus(p.partition("=")[0]) for p in words]     # as cluster_url reads them
    query = "&".join(p for p, name in zip(words, named) if name not in ("cluster", "nodes"))
    if parts.path.strip("/") not in ("", "0"):
        raise UnusableUrl(f"cannot use Redis URL {redact(url)}: a cluster has only database 0")
    plain = parts._replace(path="", query=query).geturl()
    try:
        also = [node for p, name in zip(words, named) if name == "nodes"
                for node in unquote(p.partition("=")[2]).split(",") if node]
        pairs = [n.rpartition(":") for n in also]
        if any(not host.removeprefix("[").removesuffix("]") or not re.fullmatch(r"[0-9]{1,5}", port)
               for host, _, port in pairs):
            raise ValueError("bad node")            # (int() takes ' 7', '7_000' and other scripts' digits)
        startup = [ClusterNode(host.removeprefix("[").removesuffix("]"), int(port))  # [::1]:7000 too
                   for host, _, port in pairs]
        if any(not 0 < n.port < 65536 for n in startup):
            raise ValueError("bad port")
    except ValueError:
        raise UnusableUrl(f"cannot use Redis URL {redact(url)}: nodes= takes host:port,host:port") from None
    try:
        return redis.RedisCluster.from_url(plain, decode_responses=True, encoding_errors=DECODE_ERRORS,
                                           socket_connect_timeout=3, socket_timeout=10,
                                           startup_nodes=startup)
    except (redis.ConnectionError, redis.TimeoutError, OSError, RedisClusterException) as exc:
        if isinstance(exc, redis.exceptions.AuthenticationError) or _credentials_refused(str(exc)):
            # (an AuthenticationError is a ConnectionError to redis-py: no outage to wait for)
            raise CredentialsRefused(f"Redis Cluster at {redact(url)} refused the user name and "
                                     f"password ({exc}): check them in REDIS_URL") from None
        if "not enabled" in str(exc):
            raise UnusableUrl(f"cannot use Redis URL {redact(url)}: that server is not a cluster "
                              f"node (drop ?cluster=true)") from None
        if isinstance(exc, RedisClusterException) and "connect" not in str(exc).lower():
            raise UnusableUrl(f"cannot use Redis URL {redact(url)}: {exc}") from None
        raise BusUnavailable(f"cannot reach Redis Cluster at {redact(url)} ({exc}); start its nodes "
                             f"(docs/cluster.md, \"Running it\") or set REDIS_URL") from None
    except (ValueError, TypeError, redis.RedisError) as exc:
        raise UnusableUrl(f"cannot use Redis URL {redact(url)}: {_why_unusable(url, exc)}") from None


def _why_unusable(url: str, exc: Exception) -> str:
    if isinstance(exc, TypeError):      # redis-py names the keyword a plain connection refuses
        if urlsplit(url).scheme != "rediss" and "ssl_" in str(exc):
            return "ssl_* parameters need a rediss:// URL"
        return f"unknown parameter ({exc})"
    return str(exc)


def open_bus(url: str | None, check: bool = True, wait_replicas: int = 0,
             wait_timeout_ms: int = 1000) -> RedisStreamsBus:
    """A bus on `url` (None: embedded). With check, a PING proves the server answers now.
    A URL that leaves TLS unverified is logged as a warning, once per bus opened."""
    client = client_for(url)
    if cluster_url(url) and not layout.current().cluster:
        # Whatever else set it up, keys on a cluster carry their slot's tag (bus.layout).
        layout.use(dataclasses.replace(layout.current(), cluster=True))
    warning = tls_warning(client)
    if warning:
        logging.getLogger("choreo.cli").warning(warning)
    if check:
        _reach(client, url)
    bus = RedisStreamsBus(client)
    bus.wait_replicas, bus.wait_timeout_ms = wait_replicas, wait_timeout_ms     # CHOREO_WAIT_REPLICAS
    if check:
        try:
            bus.check_layout()          # a reader under another CHOREO_PARTITIONS would miss every key
        except BaseException:
            bus.close()
            raise
    return bus


def open_raw(url: str, variable: str = "REDIS_URL") -> redis.Redis:
    """A client on `url` that returns bytes, as rq reads them (CHOREO_TIMERS_URL: rq's own
    server), once a PING proved the server answers and that it is no cluster node; the same
    one-line BusUnavailable as open_bus, naming `variable`, when it does not answer."""
    client = timers_client(url, variable)
    warning = tls_warning(client)
    if warning:
        logging.getLogger("choreo.cli").warning(warning)
    _reach(client, url, variable)
    try:
        with translated_errors():
            on_cluster = str(client.info("cluster").get("cluster_enabled", 0)) == "1"
    except BaseException:
        client.close()
        raise
    if on_cluster:
        client.close()
        raise UnusableUrl(f"{variable} {redact(url)} is a Redis Cluster node: {RQ_NEEDS_PLAIN}")
    return client


# rq keeps a job's keys together in transactions that span slots.
RQ_NEEDS_PLAIN = "rq needs a plain Redis, it does not run on a cluster"


def timers_client(url: str, variable: str = "CHOREO_TIMERS_URL") -> redis.Redis:
    """A bytes client for rq's queue on `url`; UnusableUrl at once for a cluster URL."""
    if cluster_url(url):
        raise UnusableUrl(f"{variable} must name a plain Redis: {RQ_NEEDS_PLAIN}")
    return raw_client(url)


def raw_client(url: str) -> redis.Redis:
    """A client on `url` that returns bytes (UnusableUrl at once if redis-py could not use it)."""
    decoded = client_for(url)
    try:
        return same_server(decoded, decode=False)
    finally:
        decoded.close()


def _reach(client: redis.Redis, url: str | None, variable: str = "REDIS_URL") -> None:
    try:
        with translated_errors():
            client.ping()
    except BusUnavailable as exc:
        client.close()
        where = "Redis" if variable == "REDIS_URL" else f"Redis ({variable})"
        raise BusUnavailable(f"cannot reach {where} at {redact(url)} ({exc}); "
                             f"{how_to_start(url, variable)}") from None
    except CredentialsRefused as exc:
        client.close()
        where = "Redis" if variable == "REDIS_URL" else f"Redis ({variable})"
        raise CredentialsRefused(f"{where} at {redact(url)} refused the user name and password "
                                 f"({exc.__cause__}): check them in {variable}") from None

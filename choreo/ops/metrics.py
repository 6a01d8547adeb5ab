"""Prometheus metrics (the optional extra `choreo[metrics]`): a worker's own counters, served on
/metrics. prometheus_client is imported only when metrics are asked for; without it, asking gives
MetricsUnavailable with the line to install it.

Every series carries `service`; entry outcomes also `stream` (the streams a service reads are
declared, so the label set is small and fixed). Children are bound once at start, so a hook on
the consumer loop is one dict look-up and one increment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from choreo.workers.observer import OUTCOMES, Observer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

INSTALL = "pip install 'choreo[metrics]'"
# Seconds. Handlers run in microseconds to milliseconds; a commit is one Redis round trip.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class MetricsUnavailable(Exception):
    """Metrics were asked for but cannot be served: the extra is missing (a setup mistake, exit 2)
    or the port is taken (exit 1, as for a server that cannot be reached)."""

    def __init__(self, message: str, port_taken: bool = False):
        super().__init__(message)
        self.port_taken = port_taken


def _client():
    try:
        import prometheus_client
    except ImportError:
        raise MetricsUnavailable(f"metrics need prometheus-client: {INSTALL}") from None
    return prometheus_client


def new_registry(with_process: bool = True) -> "CollectorRegistry":
    """A registry of our own (not the module-global one), with the process and GC collectors."""
    pc = _client()
    registry = pc.CollectorRegistry()
    if with_process:
        pc.ProcessCollector(registry=registry)
        pc.PlatformCollector(registry=registry)
        pc.GCCollector(registry=registry)
    return registry


def serve(registry: "CollectorRegistry", port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics on a daemon thread; a taken port is MetricsUnavailable, said in one line."""
    pc = _client()
    try:
        pc.start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise MetricsUnavailable(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}",
                                 port_taken=True) from None
    except UnicodeError as exc:     # a name the resolver cannot even encode (an empty label, bytes)
        raise MetricsUnavailable(f"cannot serve metrics on {addr[:80]!r}: not a host name or "
                                 f"address ({exc})") from None


class PrometheusObserver(Observer):
    """A worker's hooks (workers.observer) as Prometheus counters and histograms."""

    def __init__(self, service: str, consumer: str, streams: list[str], registry: "CollectorRegistry"):
        pc = _client()
        label = {"service": service}
        pc.Info("choreo_worker", "The worker process: its service and consumer name.",
                registry=registry).info({"service": service, "consumer": consumer})
        entries = pc.Counter("choreo_entries", "Stream entries a worker finished, by how they ended.",
                             ["service", "stream", "outcome"], registry=registry)
        # Every (stream, outcome) exists from the start at 0, so rate() and alerts see the first one.
        self._entries = {(s, o): entries.labels(service=service, stream=s, outcome=o)
                         for s in streams for o in OUTCOMES}
        self._handler = pc.Histogram("choreo_handler_seconds", "Time in a handler, per entry.",
                                     ["service"], registry=registry,
                                     buckets=LATENCY_BUCKETS).labels(**label)
        self._commit = pc.Histogram("choreo_commit_seconds",
                                    "One commit round trip (a batch of entries), in seconds.",
                                    ["service"], registry=registry,
                                    buckets=LATENCY_BUCKETS).labels(**label)
        self._batch = pc.Histogram("choreo_batch_entries", "Entries per batch read and committed.",
                                   ["service"], registry=registry, buckets=BATCH_BUCKETS).labels(**label)
        self._retries = pc.Counter("choreo_retries", "Handler failures left pending for a retry.",
                                   ["service"], registry=registry).labels(**label)
        self._claims = pc.Counter("choreo_claimed_entries",
                                  "Entries claimed from other (dead or stalled) consumers.",
                                  ["service"], registry=registry).labels(**label)
        self._reconnects = pc.Counter("choreo_reconnects",
                                      "Times the run loop backed off after losing Redis or a fault.",
                                      ["service"], registry=registry).labels(**label)

    def read(self, entries: int) -> None:
        self._batch.observe(entries)

    def claimed(self, entries: int) -> None:
        self._claims.inc(entries)

    def handler_ran(self, d, seconds: float) -> None:
        self._handler.observe(seconds)

    def handler_failed(self, d, error: str) -> None:
        self._retries.inc()

    def committed(self, deliveries, seconds: float) -> None:
        self._commit.observe(seconds)

    def finished(self, d, outcome: str) -> None:
        self._entries[(d.stream, outcome)].inc()

    def reconnecting(self, failures: int) -> None:
        self._reconnects.inc()


def worker_observer(service: str, consumer: str, streams: list[str], port: int,
                    addr: str = "0.0.0.0") -> PrometheusObserver:
    """The observer of a worker process, its /metrics already served on port."""
    registry = new_registry()
    # No `*_created` series beside every counter: a worker process, not a library, decides this.
    _client().disable_created_metrics()
    observer = PrometheusObserver(service, consumer, list(streams), registry)
    serve(registry, port, addr)
    return observer

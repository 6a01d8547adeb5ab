"""`choreo exporter`: the fleet view the dashboard gathers (choreo.ops.snapshot), as Prometheus
metrics, read at scrape time. Read-only: it connects as the `dashboard` user and gathers exactly
what `choreo dashboard --json` shows, so the two cannot disagree.

A figure Redis cannot give is left out, never made 0: a group's lag is nil after some trims and
deletions (XINFO GROUPS), and a lag of 0 would say "caught up" when nobody knows. While Redis is
unreachable a scrape has `choreo_redis_up 0` and none of the figures (no stale ones either).
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

from choreo.bus.contract import BusError
from choreo.bus.layout import LayoutError
from choreo.ops import snapshot as snap

STATES = ("OK", "LAGGING", "STUCK", "NO CONSUMERS")


class FleetCollector:
    """A prometheus_client custom collector: each collect() is one gather from Redis."""

    def __init__(self, bus, url: str | None, gather: Callable = snap.gather,
                 on_error: Callable[[str], None] = lambda line: None):
        self.bus = bus
        self.url = url
        self.gather = gather
        self.on_error = on_error

    def describe(self):
        return []           # nothing to read from Redis when the collector is registered

    def collect(self) -> Iterator:
        started = time.perf_counter()
        try:
            s = self.gather(self.bus, self.url)
        except (BusError, LayoutError) as exc:
            # LayoutError: another CHOREO_PARTITIONS than the deployment's, whose figures would
            # be a part of the real ones; served as no reading, and logged.
            self.on_error(f"exporter: cannot read Redis: {exc}")
            yield _gauge("choreo_redis_up", "1 when the last scrape read Redis, else 0.", [], [((), 0)])
            return
        yield _gauge("choreo_redis_up", "1 when the last scrape read Redis, else 0.", [], [((), 1)])
        yield from fleet_metrics(s)
        yield _gauge("choreo_exporter_scrape_seconds", "Time this scrape took to read Redis.", [],
                     [((), time.perf_counter() - started)])


def _gauge(name: str, doc: str, labels: list[str], rows):
    from prometheus_client.core import GaugeMetricFamily
    g = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        g.add_metric(list(values), value)
    return g


def fleet_metrics(s: snap.Snapshot) -> Iterator:
    """The snapshot's figures as metric families; absent figures (None) are left out."""
    from prometheus_client.core import CounterMetricFamily
    if s.ping_ms is not None:
        yield _gauge("choreo_redis_ping_seconds", "Round trip of a PING.", [], [((), s.ping_ms / 1000)])
    st = ["stream"]
    yield _gauge("choreo_stream_length", "Entries in the stream now (after trimming).", st,
                 [((r.stream,), r.length) for r in s.streams])
    added = CounterMetricFamily("choreo_stream_entries_added", "Entries ever added (Redis >= 7.0).",
                                labels=st)
    for r in s.streams:
        if r.entries_added is not None:
            added.add_metric([r.stream], r.entries_added)
    yield added
    yield _gauge("choreo_stream_newest_entry_age_seconds", "Age of the newest entry.", st,
                 [((r.stream,), r.newest_age_s) for r in s.streams if r.newest_age_s is not None])
    g = ["stream", "group"]
    yield _gauge("choreo_group_lag", "Entries not yet delivered to the group; absent where Redis "
                 "cannot say (nil lag after trims/deletions), never 0 for unknown.", g,
                 [((r.stream, r.group), r.lag) for r in s.groups if r.lag is not None])
    yield _gauge("choreo_group_pending", "Entries delivered to the group and not yet acknowledged.",
                 g, [((r.stream, r.group), r.pending) for r in s.groups])
    yield _gauge("choreo_group_oldest_pending_age_seconds",
                 "Age of the oldest pending entry (0 when nothing is pending).", g,
                 [((r.stream, r.group), r.oldest_pending_age_s or 0.0) for r in s.groups])
    yield _gauge("choreo_group_max_deliveries", "Highest times-delivered among the oldest pending.",
                 g, [((r.stream, r.group), r.max_deliveries) for r in s.groups])
    yield _gauge("choreo_group_consumers", "Consumers in the group.", g,
                 [((r.stream, r.group), r.consumers) for r in s.groups])
    yield _gauge("choreo_group_live_consumers", "Consumers that read within the last "
                 f"{snap.STALE_AFTER_S:g} s.", g,
                 [((r.stream, r.group), r.live_consumers) for r in s.groups])
    yield _gauge("choreo_group_state", "1 for the group's state as the dashboard shows it.",
                 g + ["state"], [((r.stream, r.group, state), int(r.state == state))
                                 for r in s.groups for state in STATES])
    c = ["group", "consumer"]
    yield _gauge("choreo_consumer_pending", "Entries pending on the consumer, over its streams.", c,
                 [((r.group, r.name), r.pending) for r in s.consumers])
    yield _gauge("choreo_consumer_read_age_seconds", "Since the consumer's loop last read, from its "
                 "heartbeat (absent: no live heartbeat).", c,
                 [((r.group, r.name), r.read_age_s) for r in s.consumers if r.read_age_s is not None])
    yield _gauge("choreo_consumer_live", "1 while the consumer has a live heartbeat and keeps reading.",
                 c, [((r.group, r.name), int(not r.stale)) for r in s.consumers])
    yield _gauge("choreo_dead_letters", "Entries in dlq:<service> (kept up to CHOREO_DLQ_MAX_ENTRIES).",
                 ["service"], [((r.service,), r.count) for r in s.dead_letters])
    yield _gauge("choreo_dead_letter_newest_age_seconds", "Age of the newest dead letter.", ["service"],
                 [((r.service,), r.newest_age_s) for r in s.dead_letters if r.newest_age_s is not None])
    if s.nodes:                     # on a Redis Cluster only
        n = ["node", "role"]
        yield _gauge("choreo_cluster_node_up", "1 while the cluster sees the node connected (0: "
                     "failed, suspected or disconnected).", n,
                     [((r.address, r.role), int(r.link == "connected")) for r in s.nodes])
        yield _gauge("choreo_cluster_node_slots", "Hash slots the node serves (a replica: 0).", n,
                     [((r.address, r.role), r.slots) for r in s.nodes])
        yield _gauge("choreo_cluster_node_partitions", "Partitions whose slot the node serves.", n,
                     [((r.address, r.role), len(r.partitions)) for r in s.nodes])
    if s.orders is None:            # an app without orders
        return
    yield _gauge("choreo_orders", "Orders by status (orders:by_status).", ["status"],
                 [((status,), n) for status, n in sorted(s.orders.by_status.items())])
    yield _gauge("choreo_order_latency_seconds", "Placed to completed, over the latest "
                 f"{snap.RECENT_COMPLETIONS} completions.", ["quantile"],
                 [((q,), ms / 1000) for q, ms in (("0.5", s.orders.p50_ms), ("0.99", s.orders.p99_ms))
                  if ms is not None])


def serve_exporter(bus, url: str | None, port: int, addr: str, on_error, app=None) -> None:
    """Register the collector on a registry of its own and serve it; returns once serving.
    app: whose streams, groups and services (the saga's when None)."""
    import functools
    from choreo.ops.metrics import new_registry, serve
    registry = new_registry()
    gather = (functools.partial(snap.gather, services=app.by_name, orders=app.orders) if app
              else snap.gather)
    registry.register(FleetCollector(bus, url, gather=gather, on_error=on_error))
    serve(registry, port, addr)

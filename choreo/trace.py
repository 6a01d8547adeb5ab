"""An order's events across all streams, put back in causal order.

Depth-first over causation ids; for each event, first its producer's own confirmation, then each
reaction to it (the reacting service's line, then what that reaction emitted)."""

from __future__ import annotations

from dataclasses import dataclass

from bus import inspect, keys as bus_keys
from bus.envelope import Envelope, MalformedEntry
from bus.redis_streams import RedisStreamsBus
from workers import SERVICES
from workers.service import Service


@dataclass(frozen=True)
class TracedEvent:
    event: Envelope
    stream: str
    entry_id: str


def load_events(bus: RedisStreamsBus, order_id: str) -> list[TracedEvent]:
    refs = [tuple(item.split(" ", 1)) for item in inspect.list_items(bus, bus_keys.trace(order_id))]
    found = []
    for d in inspect.entries(bus, refs):
        try:
            found.append(TracedEvent(Envelope.parse(d.fields), d.stream, d.entry_id))
        except MalformedEntry:
            continue                    # trace shows what parses; bad entries live in the DLQ
    return found


def walk(events: list[TracedEvent]) -> list[tuple[int, TracedEvent]]:
    """(depth, event) in causal order; children in commit order."""
    by_id = {t.event.id: t for t in events}
    children: dict[str, list[TracedEvent]] = {}
    for t in events:
        parent = t.event.causation_id if t.event.causation_id in by_id else ""
        children.setdefault(parent, []).append(t)
    out: list[tuple[int, TracedEvent]] = []

    def visit(t: TracedEvent, depth: int) -> None:
        out.append((depth, t))
        for child in children.get(t.event.id, []):
            visit(child, depth + 1)
    for root in children.get("", []):
        visit(root, 0)
    return out


def story(events: list[TracedEvent], services: dict[str, Service] = SERVICES) -> list[str]:
    """The services' lines for this order in causal order: the tutorial's eight on the happy path."""
    by_id = {t.event.id: t.event for t in events}
    lines = []
    for _, t in walk(events):
        e = t.event
        producer = services.get(e.producer)
        if producer is None:
            continue
        cause = by_id.get(e.causation_id)
        if cause is None and e.type in producer.creates:
            lines.append(producer.says_creating(e.type, e.order_id))
        elif cause is not None and cause.type in producer.consumes:
            lines.append(producer.says(cause.type, e.order_id))
        if e.type in producer.consumes:
            lines.append(producer.says(e.type, e.order_id))
    return lines

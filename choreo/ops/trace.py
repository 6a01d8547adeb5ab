"""An order's events across all streams, put back in causal order.

Depth-first over causation ids; for each event, first its producer's own confirmation, then each
reaction to it (the reacting service's line, then what that reaction emitted). story() gives the
services' lines (the demo's eight on the happy path); build_trace() and render_tree() give what
`choreo trace` shows: that walk as a tree, with each consumer's handling (handled, pending with its
delivery count, dead-lettered) and the order's dead letters."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from rich.text import Text
from rich.tree import Tree

from choreo.bus import dead_letters, inspect, keys as bus_keys
from choreo.bus.dead_letters import DeadLetter
from choreo.bus.envelope import Envelope, MalformedEntry, iso_ms
from choreo.bus.redis_streams import RedisStreamsBus
from choreo.bus.trim import parse_id
from choreo.plain import text
from choreo.workers import SERVICES
from choreo.workers.service import Service, trace_keys

ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")     # what a trace field's second word must be


@dataclass(frozen=True)
class TracedEvent:
    event: Envelope
    stream: str
    entry_id: str


@dataclass(frozen=True)
class Trimmed:
    """An event of the trace whose entry is no longer in its stream (trimmed once every group had
    it, `choreo trim`): what its ref still tells, its type and when it was published."""
    stream: str
    entry_id: str

    @property
    def type(self) -> str:
        return bus_keys.event_type_of(self.stream)

    @property
    def at(self) -> str:
        try:
            return iso_ms(parse_id(self.entry_id)[0] / 1000)
        except (ValueError, OverflowError, OSError):
            return "?"                  # milliseconds past what a date can say

    def to_dict(self) -> dict:
        return {"type": self.type, "stream": self.stream, "entry_id": self.entry_id, "at": self.at}


def load_trace(bus: RedisStreamsBus, order_id: str, services: Iterable[Service] = SERVICES.values()
               ) -> tuple[list[TracedEvent], list[Trimmed]]:
    """The instance's events still in their streams, and the refs of those trimmed away."""
    # A field that does not name a stream entry (anyone who may write a record or trace wrote
    # it) is no event: left out, not asked of Redis.
    refs = [ref for ref in inspect.trace_refs(bus, *trace_keys(order_id, services)) if _entry_ref(ref)]
    found, present = [], set()
    for d in inspect.entries(bus, refs):
        present.add((d.stream, d.entry_id))
        try:
            found.append(TracedEvent(Envelope.parse(d.fields), d.stream, d.entry_id))
        except MalformedEntry:
            continue                    # trace shows what parses; bad entries live in the DLQ
    return found, [Trimmed(*ref) for ref in refs if ref not in present]


def _entry_ref(ref: tuple[str, str]) -> bool:
    return ref[0].startswith(bus_keys.STREAM_PREFIX) and ENTRY_ID.fullmatch(ref[1]) is not None


def load_events(bus: RedisStreamsBus, order_id: str,
                services: Iterable[Service] = SERVICES.values()) -> list[TracedEvent]:
    return load_trace(bus, order_id, services)[0]


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
    return [line for _, t in walk(events) for line in event_lines(t, by_id, services)]


def event_lines(t: TracedEvent, by_id: dict[str, Envelope],
                services: dict[str, Service] = SERVICES) -> list[str]:
    """One event's part of the story: the producer's line for doing what emitted it (creating it
    on a command, or reacting to its cause), then the producer's confirmation of it."""
    e = t.event
    producer = services.get(e.producer)
    if producer is None:
        return []
    lines = []
    cause = by_id.get(e.causation_id)
    if e.type in producer.creates:       # published by a command or a timer, not a reaction
        lines.append(producer.says_creating(e.type, e.order_id))
    elif cause is not None and cause.type in producer.consumes:
        lines.append(producer.says(cause.type, e.order_id))
    if e.type in producer.consumes:
        lines.append(producer.says(e.type, e.order_id))
    return lines


# -- the tree `choreo trace` shows -----------------------------------------------------------------
# Business failures are named *Failed / *Rejected in the saga table; each one makes its consumers
# undo what was done (release, refund) or end the order, so the tree marks them as compensations.
FAILURE_SUFFIXES = ("Failed", "Rejected")
DLQ_SCAN = 10_000               # newest dead letters per service searched for this order's entries


def is_compensation(event_type: str) -> bool:
    return event_type.endswith(FAILURE_SUFFIXES)


@dataclass(frozen=True)
class Reaction:
    """A consuming service's handling of one event, where that handling emitted nothing."""
    service: str
    line: str
    status: str     # handled, dead-lettered, pending (delivery N on CONSUMER), not yet handled


@dataclass(frozen=True)
class TraceNode:
    depth: int
    traced: TracedEvent
    lines: list[str]            # this event's part of story(): the tutorial's wording
    reactions: list[Reaction]
    dead_letters: list[DeadLetter]

    def to_dict(self) -> dict:
        e = self.traced.event
        return {"depth": self.depth, "type": e.type, "id": e.id, "causation_id": e.causation_id,
                "producer": e.producer, "at": e.at, "stream": self.traced.stream,
                "entry_id": self.traced.entry_id, "data": e.data,
                "compensation": is_compensation(e.type), "lines": self.lines,
                "reactions": [asdict(r) for r in self.reactions],
                "dead_letters": [dead_letter_dict(d) for d in self.dead_letters]}


def order_dead_letters(bus: RedisStreamsBus, order_id: str,
                       services: dict[str, Service] = SERVICES) -> list[DeadLetter]:
    """Dead letters whose original entry (whole or a truncated copy) belongs to this order, from
    every partition's dead-letter streams: an entry put on another partition's stream than its
    order's is dead-lettered there."""
    return [letter for name in services
            for letter in reversed(dead_letters.read_newest(bus, name, DLQ_SCAN))
            if letter.order_id == order_id]


def dead_letter_dict(d: DeadLetter) -> dict:
    """What --json shows of a dead letter: where it came from and why, not the stored copy."""
    return {"service": d.service, "dlq_id": d.dlq_id, "stream": d.stream, "entry_id": d.entry_id,
            "event_id": d.event_id, "deliveries": d.deliveries, "error": d.error, "at": d.at,
            "entry_truncated": d.truncated}


def reactions(bus: RedisStreamsBus, t: TracedEvent, emitted_by: set[str], dead_by: set[str],
              services: dict[str, Service] = SERVICES) -> list[Reaction]:
    """What each other consumer of this event did with it, when it emitted nothing to show it:
    its dedup marker says it committed; a dead letter that it gave up; XPENDING that it retries;
    else its group's having been handed the entry and acknowledged it, as an event published once
    (bus/commit.lua) leaves no marker."""
    e = t.event
    names = [s.name for s in services.values() if e.type in s.consumes
             and s.name != e.producer and s.name not in emitted_by]
    seen = inspect.remembered(bus, [(bus_keys.seen_for(n, e.order_id), e.id) for n in names])
    return [Reaction(name, services[name].says(e.type, e.order_id),
                     "handled" if handled else _unmarked_status(bus, t, name, dead_by))
            for name, handled in zip(names, seen)]


def _unmarked_status(bus: RedisStreamsBus, t: TracedEvent, group: str, dead_by: set[str]) -> str:
    if group in dead_by:
        return "dead-lettered"
    # Handed first, pending second: an entry delivered between the two reads shows as pending.
    handed = inspect.delivered_past(bus, t.stream, group, t.entry_id)
    p = inspect.pending_entry(bus, t.stream, group, t.entry_id)
    if p is not None:
        return f"pending (delivery {p['times_delivered']} on {p['consumer']})"
    return "handled" if handed else "not yet handled"


def build_trace(bus: RedisStreamsBus, events: list[TracedEvent], dead: list[DeadLetter],
                services: dict[str, Service] = SERVICES) -> list[TraceNode]:
    by_id = {t.event.id: t.event for t in events}
    emitters: dict[str, set[str]] = {}
    for t in events:
        emitters.setdefault(t.event.causation_id, set()).add(t.event.producer)
    nodes = []
    for depth, t in walk(events):
        mine = [d for d in dead if d.event_id == t.event.id]
        nodes.append(TraceNode(depth, t, event_lines(t, by_id, services),
                               reactions(bus, t, emitters.get(t.event.id, set()),
                                         {d.service for d in mine}, services), mine))
    return nodes


def story_with_compensations(bus: RedisStreamsBus, events: list[TracedEvent],
                             services: dict[str, Service] = SERVICES) -> list[str]:
    """story(), and under each failure event what its consumers did about it: a refund, a release
    and the order's end emit nothing, so only their groups' acknowledgements (see reactions) tell
    them."""
    return [line for node in build_trace(bus, events, [], services)
            for line in node.lines + compensations(node)]


def compensations(node: TraceNode) -> list[str]:
    """The handled reactions to a failure event, latest saga step first and the order's end last,
    as a saga is undone. They have no causal order among themselves: this is only how it is told."""
    if not is_compensation(node.traced.event.type):
        return []
    return [r.line for r in reversed(node.reactions) if r.status == "handled"]


def _label(node: TraceNode) -> Text:
    e, t = node.traced.event, node.traced
    label = text((e.type, "bold red" if is_compensation(e.type) else "bold"),
                 (f"  {t.stream} {t.entry_id}  producer={e.producer} at={e.at}", "dim"))
    if is_compensation(e.type):
        label.append("  compensation", style="red")
    return label


_REACTION_STYLE = {"handled": "green", "dead-lettered": "bold red"}


def render_tree(order_id: str, status: str, nodes: list[TraceNode], dead: list[DeadLetter],
                noun: str = "order", trimmed: Sequence[Trimmed] = ()) -> Tree:
    """noun: what the instance is called, "order" in the saga, "instance" in another app (which
    has no status record: none is shown). trimmed: events whose entries are gone, listed after."""
    head = f"  {status or 'unknown'}" if noun == "order" else ""
    tree = Tree(text((f"{noun} {order_id}", "bold"), head))
    branches: list[Tree] = [tree]
    for node in nodes:
        del branches[node.depth + 1:]           # walk() is depth-first: pop back to the parent
        branch = branches[-1].add(_label(node))
        for line in node.lines:
            branch.add(text(line))
        for r in node.reactions:
            branch.add(text(r.line, (f"  [{r.status}]", _REACTION_STYLE.get(r.status, "yellow"))))
        for d in node.dead_letters:
            branch.add(_dead_letter_text(d))
        branches.append(branch)
    listed = {(d.partition, d.dlq_id) for n in nodes for d in n.dead_letters}
    for d in dead:
        if (d.partition, d.dlq_id) not in listed:              # e.g. a malformed entry that never made the trace
            tree.add(_dead_letter_text(d))
    for t in trimmed:
        tree.add(text((t.type, "bold"), (f"  {t.stream} {t.entry_id}  at={t.at}", "dim"),
                      ("  trimmed from its stream", "yellow")))
    return tree


def _dead_letter_text(d: DeadLetter) -> Text:
    return text(("DEAD LETTER", "bold white on red"),
                f" {d.dlq_stream} {d.dlq_id}: {d.stream} {d.entry_id} "
                f"after {d.deliveries} deliveries: {d.error} (at {d.at})")


def trace_json(order_id: str, status: str, nodes: list[TraceNode], dead: list[DeadLetter],
               events: list[TracedEvent], services: dict[str, Service] = SERVICES,
               trimmed: Sequence[Trimmed] = ()) -> str:
    return json.dumps({"order_id": order_id, "status": status,
                       "events": [n.to_dict() for n in nodes],
                       "trimmed": [t.to_dict() for t in trimmed],
                       "dead_letters": [dead_letter_dict(d) for d in dead],
                       "story": story(events, services)}, indent=2)

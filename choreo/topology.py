"""`choreo topology`: who consumes and emits what, drawn from the services' declarations (the
same data the workers run on), as text, a Mermaid flowchart or a Graphviz dot graph.

Services are boxes and event types (one stream each) rounded nodes. An arrow from a service to
an event: its handlers emit it; dashed: it publishes it on a command or a timer. An arrow from
an event to a service: the service consumes that stream (its own events, as confirmation, too).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from choreo.bus import keys as bus_keys
from choreo.workers.service import Service

FORMATS = ("text", "mermaid", "dot")


def event_types(services: Iterable[Service]) -> list[str]:
    """Every event type some service publishes, in the order declared (services in order, each
    one's created then emitted types), then any consumed that nobody publishes."""
    services = list(services)
    published = [t for s in services for t in (*s.creates, *s.emits)]
    consumed = [t for s in services for t in s.consumes]
    return list(dict.fromkeys(published + consumed))


def edges(services: Mapping[str, Service]) -> list[tuple[str, str, str]]:
    """(from, to, kind): kind is "emits", "creates" (service -> event) or "consumes" (event ->
    service), each once, services in declaration order."""
    out = []
    for s in services.values():
        out += [(s.name, t, "creates") for t in s.creates]
        out += [(s.name, t, "emits") for t in s.emits if t not in s.creates]
    for t in event_types(services.values()):
        out += [(t, s.name, "consumes") for s in services.values() if t in s.consumes]
    return out


def render(services: Mapping[str, Service], fmt: str = "text") -> str:
    return {"text": text, "mermaid": mermaid, "dot": dot}[fmt](services)


def text(services: Mapping[str, Service]) -> str:
    lines = []
    for s in services.values():
        lines.append(f"{s.name:<10} consumes  {', '.join(s.consumes)}")
        lines.append(f"{'':<10} emits     {', '.join(s.emits) or '(nothing: its handlers only change state)'}")
        if s.creates:
            lines.append(f"{'':<10} publishes {', '.join(s.creates)}  (on a command or a timer)")
    for event_type in sorted({t for s in services.values() for t in (*s.emits, *s.creates)}):
        readers = [s.name for s in services.values() if event_type in s.consumes]
        lines.append(f"{bus_keys.stream(event_type):<26} -> {', '.join(readers) or '(nobody)'}")
    return "\n".join(lines)


def mermaid(services: Mapping[str, Service]) -> str:
    lines = ["flowchart LR"]
    lines += [f"    svc_{s.name}[{s.name}]" for s in services.values()]
    lines += [f"    evt_{t}([{t}])" for t in event_types(services.values())]
    for a, b, kind in edges(services):
        if kind == "consumes":
            lines.append(f"    evt_{a} --> svc_{b}")
        else:
            lines.append(f"    svc_{a} {'-.->' if kind == 'creates' else '==>'} evt_{b}")
    return "\n".join(lines)


def dot(services: Mapping[str, Service]) -> str:
    lines = ["digraph choreography {", "    rankdir=LR;"]
    lines += [f'    svc_{s.name} [label="{s.name}", shape=box];' for s in services.values()]
    lines += [f'    evt_{t} [label="{t}", shape=oval];' for t in event_types(services.values())]
    for a, b, kind in edges(services):
        if kind == "consumes":
            lines.append(f"    evt_{a} -> svc_{b};")
        else:
            lines.append(f"    svc_{a} -> evt_{b} [style={'dashed' if kind == 'creates' else 'bold'}];")
    lines.append("}")
    return "\n".join(lines)

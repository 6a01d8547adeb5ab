"""An application: a choreography declared as data — its services and its event types.

Every command reads the application it is given (`--app module:attribute`, or `CHOREO_APP`; the
order saga, `choreo.workers:APP`, by default): `choreo worker` runs one of its services, and the payload
checks, dead-letter reasons, `topology`, `schema`, `trace`, the dashboard, `dlq`, `audit`, `trim`
and the ACL users all come from it, never from lists elsewhere.

    from choreo.workers.app import App
    from choreo.workers.service import On, Service

    app = App("signup", services=[ACCOUNTS, MAILER], events={"SignedUp": SignedUp, ...})
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable, Mapping

import msgspec
from msgspec import Struct

from choreo.workers.service import Service

DEFAULT = "choreo.workers:APP"
# Names become parts of keys, stream names, consumer groups and ACL users.
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
EVENT_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
# Users, dedup sets and heartbeats of choreo's own processes (choreo.ops.acl, workers.timers).
RESERVED = ("timers", "trimmer", "dashboard", "admin")


class AppError(Exception):
    """The application cannot be loaded or is declared inconsistently; the message says how."""


@dataclass(frozen=True)
class App:
    name: str
    services: Iterable[Service]
    events: Mapping[str, type[Struct]]            # event type -> the model its `data` must fit
    # Functions `choreo timers` may run (module:function); any other job in its queue is refused.
    timer_jobs: tuple[str, ...] = ()
    # Event types the timers process publishes on a service's behalf (the service lists them in
    # `creates`); their streams are written by the timers user, not the service's.
    timer_events: tuple[str, ...] = ()
    # Extra checks `choreo audit` runs for this application: a function of the bus (read it
    # through choreo.bus.inspect) returning the violations it finds, one line each.
    audit: Callable | None = field(default=None, compare=False)
    # Whether the order commands (demo, place-order, status, load, bench) apply: the saga only.
    orders: bool = False

    def __post_init__(self):
        services = tuple(self.services)
        object.__setattr__(self, "services", services)
        problems = []
        names = [s.name for s in services]
        problems += [f"service name {n!r} is not {NAME.pattern}" for n in names if not NAME.fullmatch(n)]
        problems += [f"two services are named {n!r}" for n in set(names) if names.count(n) > 1]
        problems += [f"service name {n!r} is taken by choreo's own process of that name"
                     for n in names if n in RESERVED]
        problems += [f"event type {t!r} is not {EVENT_NAME.pattern}" for t in self.events
                     if not EVENT_NAME.fullmatch(t)]
        for s in services:
            for t in (*s.consumes, *s.emits, *s.creates):
                if t not in self.events:
                    problems.append(f"{s.name} names event type {t!r}, which the app does not declare")
        for t in self.timer_events:
            if not any(t in s.creates for s in services):
                problems.append(f"timer event {t!r} is in no service's `creates`")
        for t in self.timer_events:     # a timer publishes its event with no data: it must fit
            if t in self.events:
                try:
                    msgspec.convert({}, self.events[t])
                except msgspec.ValidationError as exc:
                    problems.append(f"timer event {t!r} is published with no data, but its model "
                                    f"wants some: {exc}")
        if self.timer_jobs and not self.timer_events:
            problems.append("timer_jobs without timer_events: the timers would publish nothing "
                            "(their Redis user may write only these events' streams): list the "
                            "events your timers publish (uow.publish_later) in timer_events")
        if self.timer_events and not self.timer_jobs:
            problems.append("timer_events without timer_jobs: `choreo timers` would refuse every "
                            "one (the generic job is choreo.workers.timers.JOB)")
        for s in services:      # the lines a service logs: {order_id} (the instance) is all they get
            for what, text in [*((t, on.says) for t, on in s.consumes.items()), *s.creates.items()]:
                try:
                    text.format(order_id="1")
                except (KeyError, IndexError, ValueError) as exc:
                    problems.append(f"{s.name}'s line for {what} {text!r} can only use {{order_id}} "
                                    f"(the instance id): {type(exc).__name__}: {exc}")
        if problems:
            raise AppError(f"app {self.name!r}: " + "; ".join(problems))

    @cached_property
    def by_name(self) -> dict[str, Service]:
        return {s.name: s for s in self.services}

    @cached_property
    def publishers(self) -> dict[str, frozenset[str]]:
        """Who may publish each event type (what it emits or creates): an entry claiming another
        producer is dead-lettered. ACLs (choreo acl render) make the claim itself unforgeable."""
        return {t: frozenset(s.name for s in self.services if t in (*s.emits, *s.creates))
                for t in self.events}

    @cached_property
    def consumers(self) -> dict[str, frozenset[str]]:
        """Which services consume each event type: the only groups a replayed copy's `for` may name
        on its stream (bus.dead_letters.republish); one naming another is malformed."""
        return {t: frozenset(s.name for s in self.services if t in s.consumes) for t in self.events}

    def service(self, name: str) -> Service:
        try:
            return self.by_name[name]
        except KeyError:
            raise AppError(f"app {self.name!r} has no service {name!r} "
                           f"(one of {', '.join(self.by_name)})") from None


def load_app(spec: str | None) -> App:
    """The App named by "module:attribute" (DEFAULT when None or empty); AppError if the module
    cannot be imported or the attribute is not an App."""
    spec = spec or DEFAULT
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AppError(f"app {spec!r} is not module:attribute (e.g. {DEFAULT})")
    if os.getcwd() not in sys.path:     # the user's module, from where the command runs (last:
        sys.path.append(os.getcwd())    # a file there never shadows an installed package)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppError(f"cannot import app module {module_name!r}: {exc}") from None
    except Exception as exc:        # the user's module itself failed: say where, in one line
        where = f" ({exc.filename}:{exc.lineno})" if isinstance(exc, SyntaxError) else ""
        raise AppError(f"importing app module {module_name!r} failed: {type(exc).__name__}: "
                       f"{exc}{where}") from None
    origin = getattr(module, "__file__", None) or "a built-in module"
    if not hasattr(module, attribute):
        raise AppError(f"{spec}: {module_name} ({origin}) has no attribute {attribute!r}")
    app = getattr(module, attribute)
    if not isinstance(app, App):
        raise AppError(f"{spec}: {attribute} in {origin} is a {type(app).__name__}, not an App")
    return app

"""The worker runtime and the order saga, the reference application: APP is the whole
choreography, as data (see workers.app)."""

from choreo.workers import deadlines, inventory, order, payment, shipping
from choreo.workers.app import App
from choreo.workers.events import EVENTS
from choreo.workers.service import On, Service

SERVICES: dict[str, Service] = {s.name: s for s in (
    order.SERVICE, inventory.SERVICE, payment.SERVICE, shipping.SERVICE)}

# The only functions `choreo timers` will run; anything else in its queue is refused.
TIMER_JOBS: tuple[str, ...] = (deadlines.JOB,)

APP = App("order saga", services=SERVICES.values(), events=EVENTS, timer_jobs=TIMER_JOBS,
          timer_events=(deadlines.EVENT,), orders=True)

# Who may publish each event type (what it emits or creates): an entry claiming another producer
# is dead-lettered. ACLs (choreo acl render) make the claim itself unforgeable.
PUBLISHERS: dict[str, frozenset[str]] = APP.publishers
CONSUMERS: dict[str, frozenset[str]] = APP.consumers

__all__ = ["APP", "CONSUMERS", "PUBLISHERS", "SERVICES", "TIMER_JOBS", "App", "On", "Service"]

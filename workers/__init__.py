"""The worker runtime and the four services. SERVICES is the whole choreography, as data."""

from workers import deadlines, inventory, order, payment, shipping
from workers.service import On, Service

SERVICES: dict[str, Service] = {s.name: s for s in (
    order.SERVICE, inventory.SERVICE, payment.SERVICE, shipping.SERVICE)}

# Who may publish each event type (what it emits or creates): an entry claiming another producer
# is dead-lettered. ACLs (choreo acl render) make the claim itself unforgeable.
PUBLISHERS: dict[str, frozenset[str]] = {
    t: frozenset(s.name for s in SERVICES.values() if t in (*s.emits, *s.creates))
    for t in {t for s in SERVICES.values() for t in (*s.emits, *s.creates)}}

# The only functions `choreo timers` will run; anything else in its queue is refused.
TIMER_JOBS: tuple[str, ...] = (deadlines.JOB,)

__all__ = ["PUBLISHERS", "SERVICES", "TIMER_JOBS", "On", "Service"]

"""The worker runtime and the four services. SERVICES is the whole choreography, as data."""

from workers import deadlines, inventory, order, payment, shipping
from workers.service import On, Service

SERVICES: dict[str, Service] = {s.name: s for s in (
    order.SERVICE, inventory.SERVICE, payment.SERVICE, shipping.SERVICE)}

# The only functions `choreo timers` will run; anything else in its queue is refused.
TIMER_JOBS: tuple[str, ...] = (deadlines.JOB,)

__all__ = ["SERVICES", "TIMER_JOBS", "On", "Service"]

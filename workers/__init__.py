"""The worker runtime and the four services. SERVICES is the whole choreography, as data."""

from workers import inventory, order, payment, shipping
from workers.service import On, Service

SERVICES: dict[str, Service] = {s.name: s for s in (
    order.SERVICE, inventory.SERVICE, payment.SERVICE, shipping.SERVICE)}

__all__ = ["SERVICES", "On", "Service"]

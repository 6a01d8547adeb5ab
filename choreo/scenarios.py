"""What `choreo demo --scenario NAME` runs, as data: the order it places, the end it expects, and
whether a deadline overtakes a service. Each unhappy order breaks one rule of config.catalogue, so
the quantities follow the rules if they change."""

from __future__ import annotations

from dataclasses import dataclass

from choreo.config.catalogue import CATALOGUE, RULES
from choreo.workers.order import CANCELLED, COMPLETED, REJECTED


@dataclass(frozen=True)
class Scenario:
    name: str
    lines: tuple[tuple[int, int], ...]      # (product id, quantity) per order line
    expect: str                             # the order's terminal status when the saga does its job
    deadline_s: float | None = None         # None: settings.order_deadline_s
    # The service that has not run when the deadline passes (the stopped shipping worker):
    # it runs only after the others went quiet, the deadline passed and DeadlinePassed was published.
    late: str | None = None

    @property
    def order_lines(self) -> list[dict]:
        return [{"product_id": p, "quantity": q} for p, q in self.lines]


HAPPY = "happy"
# 0.3 s: long enough for order, inventory and payment to run in one process, short enough to wait out.
SHORT_DEADLINE_S = 0.3

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario(HAPPY, ((101, 2),), COMPLETED),
    Scenario("out-of-stock", ((103, CATALOGUE[103].stock + 1),), REJECTED),
    Scenario("card-declined", ((102, RULES.card_limit_cents // CATALOGUE[102].price_cents + 1),),
             CANCELLED),
    Scenario("parcel-too-big", ((101, RULES.parcel_max_items + 10),), CANCELLED),
    Scenario("deadline", ((101, 1),), CANCELLED, deadline_s=SHORT_DEADLINE_S, late="shipping"),
)}

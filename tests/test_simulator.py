"""The saga under any interleaving (tests/simulator.py): hypothesis draws orders (stock short or
not, over the card limit, too big for a parcel, with and without deadlines) and a plan of steps
(which service handles which entry next, crashes before commits, redeliveries, duplicates, time,
deadlines firing), runs the real handlers and commits, and checks the invariants.

More examples: `./dev test tests/test_simulator.py --hypothesis-profile=thorough` (see conftest)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from choreo.bus import layout
from choreo.bus.layout import Layout

from tests.simulator import Order, explore, simulate

small = st.integers(0, 7)
orders = st.lists(st.one_of(
    st.builds(Order, st.just(101), st.integers(1, 3), st.sampled_from([0, 1, 3, 10])),
    st.builds(Order, st.just(103), st.integers(1, 6), st.sampled_from([0, 2])),      # 5 in stock
    st.builds(Order, st.just(102), st.just(101), st.sampled_from([0, 2])),           # over the card limit
    st.builds(Order, st.just(101), st.just(60), st.sampled_from([0, 2]))),           # over a parcel
    min_size=1, max_size=3)
steps = st.one_of(
    st.tuples(st.just("deliver"), small, small),
    st.tuples(st.just("crash"), small, small),
    st.tuples(st.just("redeliver"), small),
    st.tuples(st.just("drain"), small),
    st.tuples(st.just("duplicate"), small, small, small),
    st.tuples(st.just("republish"), small, small),
    st.tuples(st.just("tick"), st.integers(0, 4000)),
    st.tuples(st.just("fire"), small))


@given(orders, st.data())
def test_the_saga_holds_under_any_interleaving(order_list, data):
    """Each step drawn from what could happen next: hypothesis explores interleavings."""
    plan, found = explore(order_list, lambda enabled: data.draw(st.sampled_from(enabled)))
    assert found == [], f"simulate({order_list!r}, {plan!r})"


@given(orders, st.lists(steps, max_size=60))
def test_the_saga_holds_under_any_plan(order_list, plan):
    """Blind plans too: steps that cannot happen are skipped, so odd corners are reached."""
    assert simulate(order_list, plan) == []


@settings(max_examples=40)
@given(orders, st.data())
def test_the_saga_holds_under_any_interleaving_in_the_tagged_layout(order_list, data):
    """Stock by holds (docs/partitions.md): the same invariants, and the holds agree with it."""
    previous = layout.use(Layout(partitions=4))
    try:
        plan, found = explore(order_list, lambda enabled: data.draw(st.sampled_from(enabled)))
    finally:
        layout.use(previous)
    assert found == [], f"tagged: simulate({order_list!r}, {plan!r})"


def test_the_happy_path_in_arrival_order_completes():
    assert simulate([Order(101, 1)], []) == []


# -- counterexamples the simulator found, kept as regressions --------------------------------------

def test_a_timer_rearmed_after_it_fired_publishes_no_second_deadline():
    """Found by the simulator: the order worker arms the deadline and dies before its commit; the
    timer fires; the redelivered OrderCreated arms it again, and it fired a second time, so
    DeadlinePassed was published twice. The timers' dedup marker now stops the second."""
    plan = [("crash", 0, 0), ("fire", 0), ("redeliver", 0), ("fire", 0)]
    assert simulate([Order(101, 1, 1)], plan) == []


def test_shipping_reached_after_the_deadline_does_not_book_before_deadline_passed_arrives():
    """The issue's run, in the simulator: inventory and payment handle the order in time, the
    clock passes the deadline, and shipping reads PaymentProcessed before any DeadlinePassed."""
    plan = [("deliver", 1, 0), ("deliver", 2, 1), ("tick", 2500), ("deliver", 3, 0)]
    assert simulate([Order(101, 1, 1)], plan) == []


def test_payment_reached_after_the_deadline_does_not_charge():
    """Inventory handles the order in time; payment only after the deadline (and before any
    DeadlinePassed): it must not take the money, then give it back."""
    plan = [("deliver", 1, 0), ("tick", 2500), ("deliver", 2, 1)]
    assert simulate([Order(101, 1, 1)], plan) == []

"""`choreo demo --scenario NAME` on the embedded store: each unhappy path told in the services' words,
compensations included, its end state, and an exit code that says whether it ended as expected."""

from __future__ import annotations

import pytest

from choreo import scenarios
from choreo.cli import main
from choreo.scenarios import Scenario
from tests.helpers import EIGHT
from choreo.workers.order import REJECTED

CREATED_AND_CHECKED = EIGHT[:4]
PAID = EIGHT[:6]
COMPENSATED_AFTER_SHIPPING = [
    "ShippingService: Arranging shipping for order 1",
    "PaymentService: Refunding payment for order 1",
    "InventoryService: Releasing stock for order 1",
    "OrderService: Order 1 cancelled: shipping failed",
]


@pytest.fixture
def demo(monkeypatch, capsys):
    """Run the demo embedded; returns (exit code, story lines, end-state lines)."""
    monkeypatch.delenv("REDIS_URL", raising=False)

    def run(*argv: str):
        code = main(["demo", *argv])
        out = capsys.readouterr().out.splitlines()
        blank = out.index("")
        return code, out[:blank], out[blank + 1:]
    return run


def test_out_of_stock_is_rejected_and_takes_nothing(demo):
    code, story, end = demo("--scenario", "out-of-stock")
    assert code == 0
    assert story == [*EIGHT[:3], "OrderService: Order 1 rejected: out of stock"]
    assert end[0].startswith("order 1: REJECTED (not enough stock for product 103)")
    assert end[1:4] == ["stock of 103 (Limited print): 5 available, 0 reserved, 0 sold",
                        "payment: none", "shipment: none"]


def test_card_declined_releases_the_reservation_and_cancels(demo):
    code, story, end = demo("--scenario", "card-declined")
    assert code == 0
    assert story == [*CREATED_AND_CHECKED, "PaymentService: Processing payment for order 1",
                     "InventoryService: Releasing stock for order 1",
                     "OrderService: Order 1 cancelled: payment failed"]
    assert end[0].startswith("order 1: CANCELLED (card declined: 504899 cents is over")
    assert end[1] == "stock of 102 (Gadget): 200000 available, 0 reserved, 0 sold"
    assert end[2].startswith("payment: DECLINED 5048.99 (card declined")
    assert end[3] == "shipment: none"


def test_parcel_too_big_refunds_releases_and_cancels(demo):
    code, story, end = demo("--scenario", "parcel-too-big")
    assert code == 0
    assert story == [*PAID, *COMPENSATED_AFTER_SHIPPING]
    why = "(60 items do not fit one parcel (max 50))"
    assert end[0] == f"order 1: CANCELLED {why}, total 1199.40, tracking -"
    assert end[1:4] == ["stock of 101 (Widget): 1000000 available, 0 reserved, 0 sold",
                        f"payment: REFUNDED 1199.40 {why}", f"shipment: FAILED {why}"]


def test_deadline_passed_before_shipping_read_payment_so_it_never_books(demo):
    # Shipping meets PaymentProcessed first (its DeadlinePassed is still unread) and refuses from
    # the deadline the event carries: the point of no return is decided by time, not arrival.
    code, story, end = demo("--scenario", "deadline")
    assert code == 0
    assert story == [*PAID, *COMPENSATED_AFTER_SHIPPING, "OrderService: Deadline passed for order 1"]
    why = "(deadline passed before shipping)"
    assert end[0] == f"order 1: CANCELLED {why}, total 19.99, tracking -"
    assert end[1:4] == ["stock of 101 (Widget): 1000000 available, 0 reserved, 0 sold",
                        f"payment: REFUNDED 19.99 {why}", f"shipment: CANCELLED {why}"]
    assert "events:DeadlinePassed=1" in end[4] and "events:ShippingArranged=0" in end[4]


def test_happy_scenario_tells_the_eight_lines_and_the_whole_end_state(demo):
    code, story, end = demo("--scenario", "happy")
    assert code == 0
    assert story == EIGHT
    assert end[0].startswith("order 1: COMPLETED, total 39.98, tracking TRK-")
    assert end[2:4] == ["payment: CHARGED 39.98", "shipment: BOOKED"]


def test_without_a_scenario_the_demo_prints_only_the_tutorials_summary(demo):
    code, story, end = demo()
    assert code == 0
    assert story == EIGHT
    assert [line.split(" ", 1)[0] for line in end] == ["order", "stock", "entries"]


def test_a_scenario_that_ends_otherwise_than_expected_exits_1(demo, monkeypatch):
    monkeypatch.setitem(scenarios.SCENARIOS, "expects-rejection",
                        Scenario("expects-rejection", ((101, 1),), REJECTED))
    code, _, end = demo("--scenario", "expects-rejection")
    assert code == 1
    assert end[0].startswith("order 1: COMPLETED")


def test_an_unknown_scenario_is_one_line_and_exit_2(capsys):
    assert main(["demo", "--scenario", "sunny"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "invalid choice: 'sunny'" in captured.err and "parcel-too-big" in captured.err

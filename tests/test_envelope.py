import json

import pytest

from choreo.bus.envelope import FIELDS, Envelope, MalformedEntry


def test_fields_are_flat_strings_and_round_trip():
    e = Envelope.new("OrderCreated", "1", "order", {"lines": [{"product_id": 101, "quantity": 2}]})
    fields = e.fields()
    assert tuple(fields) == FIELDS and all(isinstance(v, str) for v in fields.values())
    assert json.loads(fields["data"]) == e.data
    assert Envelope.parse(fields) == e


def test_caused_event_points_at_its_cause():
    e = Envelope.new("OrderCreated", "1", "order")
    child = e.caused("InventoryChecked", "inventory", {"x": 1})
    assert (child.causation_id, child.order_id, child.producer) == (e.id, "1", "inventory")
    assert child.id != e.id


@pytest.mark.parametrize("mutate,reason", [
    (lambda f: f.pop("order_id"), "missing field"),
    (lambda f: f.update(data="{not json"), "not JSON"),
    (lambda f: f.update(data="[1, 2]"), "JSON object"),
    (lambda f: f.update(v="9"), "unknown schema version"),
    (lambda f: f.update(id=""), "empty"),
    (lambda f: f.update(data=json.dumps({"pad": "x" * 70_000})), "cap"),
])
def test_malformed_entries_are_refused_with_a_reason(mutate, reason):
    fields = Envelope.new("OrderCreated", "1", "order").fields()
    mutate(fields)
    with pytest.raises(MalformedEntry, match=reason):
        Envelope.parse(fields)

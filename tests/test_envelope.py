import json

import pytest

from choreo.bus.envelope import FIELDS, Envelope, MalformedEntry, decode_data, encode_data


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


@pytest.mark.parametrize("data", [
    {}, {"b": 1, "a": [{"quantity": 2, "product_id": 101}]}, {"text": "é 中文 🚀 \"q\" \\ \x00 \u2028"},
    {"big": 2 ** 70, "f": 0.1, "e": 1e16, "t": True, "list": (1, 2)}, {"none": None}, {1: "int key"},
])
def test_data_is_written_as_strict_compact_sorted_json_that_reads_back_as_given(data):
    text = encode_data(data)
    assert json.loads(text) == json.loads(json.dumps(data)) == decode_data(text)
    orders = []
    json.loads(text, object_pairs_hook=lambda pairs: orders.append([k for k, _ in pairs]))
    assert all(keys == sorted(keys) for keys in orders)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "\ud800"])
def test_data_json_cannot_carry_is_refused_not_written_as_null(bad):
    with pytest.raises(ValueError):
        encode_data({"x": [bad]})

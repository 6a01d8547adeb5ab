"""`choreo schema`: the JSON Schema printed is the contract the workers check, not a description
beside it: a payload is valid by the schema exactly when check_data lets it through — with one
difference JSON Schema cannot express: it counts 1.0 as an integer, the workers want 1."""

from __future__ import annotations

import contextlib
import io
import json

import jsonschema
import pytest

from choreo.bus.envelope import Envelope, MalformedEntry
from choreo.cli import main
from choreo.workers import SERVICES
from choreo.workers.events import EVENTS, check_data


def printed(capsys, *args) -> dict:
    assert main(["schema", *args]) == 0
    return json.loads(capsys.readouterr().out)


def accepted(event_type: str, data: dict) -> bool:
    try:
        check_data(Envelope.new(event_type, "1", "x", data))
        return True
    except MalformedEntry:
        return False


# Boundary values: either side of each bound, the wrong types JSON can carry, and 2.0.
VALUES = [-1, 0, 1, 2, 10 ** 9, 10 ** 9 + 1, 10 ** 12, 10 ** 12 + 1, 10 ** 13 + 1, True, 2.0, 2.5,
          "", "x", None, [], {}]
LINE = {"product_id": 101, "quantity": 1}
VALID = {"lines": [LINE], "total_cents": 1999, "amount_cents": 1999, "deadline_at_ms": 1,
         "reason": "r", "tracking_id": "T"}


def one_change_payloads(event_type: str):
    """Every valid payload of the type with one change — a field or a line's field set to each
    boundary value or dropped, an unknown field added, the lines empty or too many: where a
    schema and a validator could disagree."""
    valid = {f: VALID[f] for f in EVENTS[event_type].__struct_fields__}
    yield valid
    for name in valid:
        yield {k: v for k, v in valid.items() if k != name}
        for value in VALUES:
            yield {**valid, name: value}
    for value in VALUES:
        yield {**valid, "other": value}
    if "lines" in valid:
        for lines in ([], [LINE] * 100, [LINE] * 101, [{"product_id": 1}], [{**LINE, "x": 1}]):
            yield {**valid, "lines": lines}
        for name in LINE:
            for value in VALUES:
                yield {**valid, "lines": [{**LINE, name: value}]}


@pytest.fixture(scope="module")
def schema() -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["schema"]) == 0
    return json.loads(out.getvalue())


@pytest.mark.parametrize("event_type", sorted(EVENTS))
def test_the_printed_schema_accepts_exactly_what_the_workers_accept(schema, event_type):
    validator = jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": f"#/$defs/{event_type}"})
    for data in one_change_payloads(event_type):
        if integral_float(data):    # the one difference: refused by the workers, maybe not the schema
            assert validator.is_valid(data) or not accepted(event_type, data), data
        else:
            assert validator.is_valid(data) == accepted(event_type, data), data


def integral_float(value) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(integral_float(v) for v in value.values())
    return isinstance(value, list) and any(integral_float(v) for v in value)


def test_an_integer_written_with_a_fraction_is_refused_though_json_schema_allows_it(schema):
    data = {"lines": [{"product_id": 101, "quantity": 2.0}], "total_cents": 1}
    assert jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/OrderCreated"}).is_valid(data)
    assert not accepted("OrderCreated", data)


def test_the_schema_names_every_event_type_and_a_real_payload_validates(capsys):
    schema = printed(capsys)
    assert set(EVENTS) <= set(schema["$defs"])
    created = {"lines": [{"product_id": 101, "quantity": 2}], "total_cents": 3998}
    jsonschema.validate(created, {"$defs": schema["$defs"], "$ref": "#/$defs/OrderCreated"})
    assert accepted("OrderCreated", created)


def test_asyncapi_lists_each_stream_with_its_producers_and_consumers(capsys):
    doc = printed(capsys, "--format", "asyncapi")
    assert doc["asyncapi"].startswith("2.")
    for name in EVENTS:
        channel = doc["channels"][f"events:{name}"]
        assert channel["x-consumers"] == [s.name for s in SERVICES.values() if name in s.consumes]
        assert channel["x-producers"] == [s.name for s in SERVICES.values()
                                          if name in (*s.emits, *s.creates)]
        ref = doc["components"]["messages"][name]["payload"]["x-data-schema"]["$ref"]
        assert ref.rpartition("/")[2] in doc["components"]["schemas"]


def test_a_bad_format_is_one_line_and_exit_2(capsys):
    assert main(["schema", "--format", "yaml"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

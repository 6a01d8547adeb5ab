"""The command line as a user meets it: exit codes, one-line errors, the demo's eight lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from choreo import arguments as arg
from choreo.cli import build_parser, main
from tests.redis_server import free_port

from tests.helpers import EIGHT


def test_demo_embedded_prints_the_eight_lines_first_and_in_order(monkeypatch, capsys):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:8] == EIGHT
    assert "order 1: COMPLETED" in out[9]
    assert "998 available, 0 reserved, 2 sold" in out[10]


def test_demo_as_a_fresh_process_from_another_directory(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "choreo", "demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:8] == EIGHT


def test_demo_against_a_real_server_uses_the_next_free_id(redis_url, capsys):
    assert main(["demo", "--redis-url", redis_url]) == 0
    assert capsys.readouterr().out.splitlines()[:8] == EIGHT
    assert main(["demo", "--redis-url", redis_url]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "OrderService: Creating order 2"


@pytest.mark.parametrize("argv", [
    ["place-order", "--product", "999", "--quantity", "1"],
    ["place-order", "--product", "101", "--quantity", "0"],
    ["place-order", "--product", "101"],
    ["load", "--orders", "many"],
    ["worker", "accounting"],
    ["no-such-verb"],
    [],
    # What a shell passes as it is: bytes that are not UTF-8 (surrogates), spaces, nothing.
    ["status", "\udcff"], ["trace", "\udcff\udcfe"], ["status", "a b"], ["trace", ""],
])
def test_bad_arguments_give_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv, named", [
    (["place-order", "--product", "101", "--quantity", "1", "--deadline", "nan"], "--deadline"),
    (["place-order", "--product", "101", "--quantity", "1", "--deadline", "inf"], "--deadline"),
    (["place-order", "--product", "101", "--quantity", "1", "--deadline", "1e300"], "--deadline"),
    (["place-order", "--product", "101", "--quantity", "1", "--deadline", "2592001"], "--deadline"),
    (["place-order", "--product", "101", "--quantity", "1", "--deadline", "0"], "--deadline"),
    (["place-order", "--product", "101", "--quantity", "1000001"], "--quantity"),
    (["place-order", "--product", "1" * 5000, "--quantity", "1"], "--product"),
    (["load", "--orders", "10000000"], "--orders"),
    (["load", "--orders", "5", "--timeout", "1e9"], "--timeout"),
    (["load", "--orders", "5", "--timeout", "-inf"], "--timeout"),
    (["load", "--orders", "5", "--rate", "nan"], "--rate"),
    (["load", "--orders", "5", "--rate", "1e6"], "--rate"),
    (["load", "--orders", "5", "--quantity", "99999999999"], "--quantity"),
    (["load", "--orders", "5", "--deadline", "1e300"], "--deadline"),
    (["dashboard", "--refresh", "1e9"], "--refresh"),
    (["dashboard", "--refresh", "0.001"], "--refresh"),
    (["trim", "--keep-seconds", "9" * 30], "--keep-seconds"),
    (["trim", "--keep-entries", "-1"], "--keep-entries"),
])
def test_numbers_out_of_bounds_give_one_line_naming_the_argument_and_exit_2(argv, named, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"argument {named}:" in err and len(err) < 200, err


def test_numbers_at_their_bounds_are_accepted_and_help_states_the_bounds(capsys):
    args = build_parser().parse_args(["load", "--orders", "1000000", "--timeout", "86400",
                                      "--rate", "100000", "--quantity", "1000000",
                                      "--deadline", "2592000"])
    assert (args.orders, args.timeout, args.rate, args.quantity, args.deadline) == \
        (1_000_000, 86400.0, 100_000.0, 1_000_000, 2_592_000.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["load", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for bounds in ("1..1000000", "0.1..86400", "0.01..100000", "0.1..2592000 (30 days"):
        assert bounds in shown


def test_readme_states_every_argument_bound():
    text = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    for flag, kind in (("--deadline", arg.deadline), ("--timeout", arg.load_timeout),
                       ("--rate", arg.rate), ("--refresh", arg.refresh), ("--orders", arg.orders),
                       ("--quantity", arg.quantity), ("--keep-entries", arg.keep_entries),
                       ("--keep-seconds", arg.keep_seconds), ("--replicas", arg.replica_count)):
        assert f"`{flag}` {kind.bounds}" in text, flag


def test_bad_setting_gives_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("CHOREO_BATCH_SIZE", "lots")
    assert main(["topology"]) == 2
    assert "CHOREO_BATCH_SIZE" in capsys.readouterr().err


@pytest.mark.parametrize("verb", [["topology"], ["dlq", "list"], ["demo"]])
def test_a_nonsense_setting_is_refused_by_any_command_in_one_line(verb, monkeypatch, capsys):
    monkeypatch.setenv("CHOREO_SEEN_TTL_S", "-5")
    assert main(verb) == 2
    assert capsys.readouterr().err.strip().splitlines() == \
        ["choreo: CHOREO_SEEN_TTL_S must be 60..315360000, got -5"]


@pytest.mark.parametrize("partitions, says", [("0", "must be 1..1024, got 0"),
                                                ("abc", "must be an integer, got 'abc'")])
def test_a_nonsense_partition_count_is_one_line_from_a_fresh_process(partitions, says, tmp_path):
    """CHOREO_PARTITIONS is read by the commands, not while the services are declared on import
    (a traceback before main() could say anything)."""
    env = {**os.environ, "CHOREO_PARTITIONS": partitions}
    run = lambda *argv: subprocess.run([sys.executable, "-m", "choreo", *argv], cwd=tmp_path, env=env,
                                       capture_output=True, text=True, timeout=60)
    done = run("--version")
    assert (done.returncode, done.stderr) == (0, "")
    for argv in (["status", "1"], ["topology"], ["worker", "order"]):
        done = run(*argv)
        assert done.returncode == 2, argv
        assert done.stderr.strip().splitlines() == [f"choreo: CHOREO_PARTITIONS {says}"], argv


def test_a_worker_refuses_a_nonsense_per_service_setting_at_start(procs, real_bus):
    done = procs.run("worker", "payment", CHOREO_CLAIM_IDLE_MS_PAYMENT="nan", timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == \
        ["choreo: CHOREO_CLAIM_IDLE_MS_PAYMENT must be an integer, got 'nan'"]
    done = procs.run("worker", "payment", CHOREO_HOUSEKEEPING_EVERY_S_PAYMENT="inf", timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == \
        ["choreo: CHOREO_HOUSEKEEPING_EVERY_S_PAYMENT must be 0.1..86400, got inf"]
    assert not real_bus.client.exists("events:InventoryChecked")     # never got as far as Redis


def test_a_consumer_name_a_worker_cannot_use_is_one_line_and_exit_2(procs):
    """Given (--consumer) or made of CHOREO_SLOT and the host name: a name with bytes that are not
    UTF-8, spaces or control characters is refused before the worker starts (as a process, on a
    port nothing serves: a worker that took it would wait there for ever, not touch a real Redis)."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    for given in ("\udcff", "a b", "", "x" * 201):
        done = procs.run("worker", "order", "--consumer", given, "--redis-url", url, timeout=20)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, given
        assert "argument --consumer: a consumer name is 1-200 printable characters" in done.stderr
    for slot in ("\udcff", "1 2", "\x1b[2J"):
        done = procs.run("worker", "order", "--redis-url", url, timeout=20, CHOREO_SLOT=slot)
        assert done.returncode == 2, slot
        (line,) = done.stderr.strip().splitlines()
        assert "CHOREO_SLOT" in line and "give --consumer" in line, slot


def test_bad_per_service_setting_gives_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("CHOREO_BATCH_SIZE_PAYMENT", "lots")
    assert main(["worker", "payment", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CHOREO_BATCH_SIZE_PAYMENT" in err


def test_unreachable_server_names_url_without_password_and_how_to_start(capsys):
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    assert main(["status", "1", "--redis-url", url]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "s3cret" not in err and "user:***@127.0.0.1" in err and "redis-server" in err


def test_place_order_status_and_trace_on_a_real_server(redis_url, capsys):
    assert main(["place-order", "--product", "101", "--quantity", "2", "--redis-url", redis_url]) == 0
    order_id = capsys.readouterr().out.strip()
    assert order_id == "1"
    assert main(["place-order", "--product", "101", "--quantity", "1", "--order-id", "1",
                 "--redis-url", redis_url]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["status", "1", "--redis-url", redis_url]) == 0
    assert "order 1: PENDING" in capsys.readouterr().out
    assert main(["trace", "1", "--redis-url", redis_url]) == 0
    assert "OrderCreated" in capsys.readouterr().out


def test_topology_prints_every_service():
    done = subprocess.run([sys.executable, "-m", "choreo", "topology"], capture_output=True, text=True)
    assert done.returncode == 0
    for name in ("order", "inventory", "payment", "shipping"):
        assert name in done.stdout


def test_topology_is_the_declarations(capsys):
    from choreo.workers import SERVICES
    assert main(["topology"]) == 0
    out = capsys.readouterr().out
    for s in SERVICES.values():
        assert f"{s.name:<10} consumes  {', '.join(s.consumes)}" in out
    assert "events:DeadlinePassed      -> shipping" in out
    assert "events:ShippingFailed      -> order, inventory, payment" in out


def test_worker_log_format_json_gives_one_object_per_handled_event(procs, redis_server):
    import json
    from tests.helpers import wait_for
    worker = procs.start("worker", "inventory", "--log-format", "json", name="inv-json")
    wait_for(lambda: redis_server.client().exists("stock:101"), what="worker up")
    assert main(["place-order", "--product", "101", "--quantity", "1", "--redis-url", procs.url]) == 0
    wait_for(lambda: "Checking inventory" in open(worker.log_path).read(), what="handled")
    line = next(l for l in open(worker.log_path) if "Checking inventory" in l)
    record = json.loads(line)
    assert record["msg"] == "InventoryService: Checking inventory for order 1"
    assert set(record) >= {"event_id", "order_id", "stream", "entry_id", "deliveries", "ms"}


def test_a_reader_that_goes_away_gets_no_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "choreo", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()                     # gone before the demo prints its first line
    err = proc.stderr.read()
    assert proc.wait(60) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_readme_embeds_the_diagram_the_topology_command_draws(capsys):
    """README's Mermaid copy of the saga is what `choreo topology --format mermaid` prints now."""
    from pathlib import Path
    assert main(["topology", "--format", "mermaid"]) == 0
    drawn = capsys.readouterr().out
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    marker = "<!-- choreo topology --format mermaid -->\n```mermaid\n"
    assert marker in readme
    embedded = readme.split(marker, 1)[1].split("```", 1)[0]
    assert embedded == drawn


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_topology_diagrams_draw_every_declared_edge_and_no_other(capsys, fmt):
    import re
    from choreo.workers import SERVICES
    assert main(["topology", "--format", fmt]) == 0
    out = capsys.readouterr().out
    arrow = r"\s*(svc|evt)_(\w+) (?:-->|==>|-\.->|->) (svc|evt)_(\w+)"
    drawn = set(re.findall(arrow, out))
    want = {("svc", s.name, "evt", t) for s in SERVICES.values() for t in (*s.emits, *s.creates)}
    want |= {("evt", t, "svc", s.name) for s in SERVICES.values() for t in s.consumes}
    assert drawn == want
    dashed = set(re.findall(r"svc_(\w+) (?:-\.->|-> evt_\w+ \[style=dashed)", out))
    assert dashed == {s.name for s in SERVICES.values() if s.creates}


def test_an_order_id_given_by_hand_is_never_drawn_from_the_sequence_later(procs, redis_server):
    """`--order-id 3` on a fresh server, then `load --orders 5`: the load drew 1-5 from
    orders:seq, failed on "order 3 already exists" and placed nothing. An id given by hand that
    the sequence could hand out later raises it first; ids of another shape leave it alone."""
    r = redis_server.client()
    for given in ("3", "o-9", "007"):
        placed = procs.run("place-order", "--product", "101", "--quantity", "1", "--order-id", given)
        assert placed.returncode == 0 and placed.stdout.strip() == given, placed.stderr
    assert r.get("orders:seq") == "3"
    load = procs.run("load", "--orders", "5", "--timeout", "1")
    assert "already exists" not in load.stderr
    from choreo.workers import keys
    assert r.exists(*(keys.order(str(i)) for i in range(4, 9))) == 5 and not r.exists(keys.order("9"))
    plain = procs.run("place-order", "--product", "101", "--quantity", "1")
    assert plain.returncode == 0 and plain.stdout.strip() == "9", plain.stderr
    # Raised exactly up to 2^53 (a Lua number counted in doubles); an id far above, near 2^63,
    # is placed without raising it: the counter would have no room left (INCRBY overflow).
    for given in ("9007199254740989", "9007199254740991", "9223372036854775807"):
        placed = procs.run("place-order", "--product", "101", "--quantity", "1", "--order-id", given)
        assert placed.returncode == 0, placed.stderr
    assert r.get("orders:seq") == "9007199254740991"
    drawn = procs.run("place-order", "--product", "101", "--quantity", "1")
    assert drawn.returncode == 0 and drawn.stdout.strip() == "9007199254740992", drawn.stderr


def test_an_order_id_rq_cannot_name_a_timer_for_is_refused_while_it_would_need_one(procs, redis_server):
    """`--order-id a.b` was placed, and its deadline could never be armed: rq refused the job id
    `DeadlinePassed-a.b` for the order worker's whole batch, round after round, until the crash
    guard dead-lettered the entry with a wrong reason. Refused at placing, one line; placed
    without a deadline it needs no timer."""
    refused = procs.run("place-order", "--product", "101", "--quantity", "1", "--order-id", "a.b")
    assert refused.returncode != 0 and "cannot name its deadline's timer" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not redis_server.client().exists("order:a.b")
    bare = procs.run("place-order", "--product", "101", "--quantity", "1", "--order-id", "a.b",
                     CHOREO_ORDER_DEADLINE_S="0")
    assert bare.returncode == 0, bare.stderr

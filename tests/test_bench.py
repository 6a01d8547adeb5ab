"""`choreo bench`: a smoke run of the real command (no timing is asserted: speed is printed, never
tested), its cleanup on the way out, Ctrl-C included, and the reference's flow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from choreo.benchmarks import reference
from choreo.cli import main
from tests.conftest import BIN
from choreo.workers import SERVICES

ROWS = ("reference-plain", "reference-atomic", "choreo", "choreo+deadlines")
HAPPY = ("OrderCreated", "InventoryChecked", "PaymentProcessed", "ShippingArranged")


def marked(mark: str) -> list[int]:
    """Pids of live processes whose environment carries the mark: the workers a bench run started
    inherit it, whoever their parent is now. (redis-server writes its title over its environment,
    so the servers are found as the bench's children instead.)"""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            pass                # gone meanwhile, or not ours to read
    return found


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            pass
    return found


def bench(*args: str, mark: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHOREO_BENCH_TEST_MARK": mark}
    env.pop("REDIS_URL", None)
    return subprocess.run([str(BIN / "choreo"), "bench", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_smoke_prints_every_row_and_leaves_no_process():
    mark = uuid.uuid4().hex
    done = bench("--orders", "300", mark=mark)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    speed = [cells[0] for cells in lines if cells and cells[0] in ROWS and cells[-1] == "300/300"]
    cost = [cells[0] for cells in lines if cells and cells[0] in ROWS and cells[-3:-1] == ["(max", "of"]]
    assert speed == cost == list(ROWS)
    assert marked(mark) == []


def test_json_has_every_figure_and_names_the_processes_it_stopped():
    mark = uuid.uuid4().hex
    done = bench("--orders", "300", "--rows", "reference-plain,reference-atomic,choreo", "--json", mark=mark)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [r["name"] for r in out["rows"]] == list(ROWS[:3])
    for r in out["rows"]:
        assert r["completed"] == r["orders"] == 300
        assert {"orders_per_s", "p50_ms", "p99_ms", "max_ms", "commands_per_order", "commands",
                "redis_cpu_us_per_order", "worker_cpu_us_per_order", "redis_bytes_per_order",
                "redis_bytes_per_order_trimmed", "redis_keys_per_order", "peak_rss_mib",
                "settled"} <= r.keys()
        assert set(r["ratio"]) == {"reference-plain", "reference-atomic"}
        assert sorted(r["peak_rss_mib"]) == sorted(f"{s}.1" for s in SERVICES)
        assert r["commands"]["xadd"] >= 4               # four events per order, at least
    # Three servers (a fresh one per row) and four workers per row.
    assert len(out["processes"]) == 3 * 5
    assert not [p for p in out["processes"] if Path(f"/proc/{p}").exists()]
    assert marked(mark) == []


def test_repeat_runs_every_row_each_round_and_reports_the_medians():
    mark = uuid.uuid4().hex
    done = bench("--orders", "100", "--rows", "reference-plain,choreo", "--repeat", "2", "--json",
                 mark=mark)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["repeat"] == 2 and len(out["rounds"]) == 2
    assert [[r["name"] for r in rows] for rows in out["rounds"]] == [["reference-plain", "choreo"]] * 2
    for place, row in enumerate(out["rows"]):
        same = [rows[place] for rows in out["rounds"]]
        assert row["orders_per_s"] == statistics.median(r["orders_per_s"] for r in same)
        assert row["ratio"]["reference-plain"]["orders_per_s"] == statistics.median(
            r["ratio"]["reference-plain"]["orders_per_s"] for r in same)
        assert row["completed"] == 100
    assert len(out["processes"]) == 2 * 2 * 5            # a server and four workers per row, per round
    assert not [p for p in out["processes"] if Path(f"/proc/{p}").exists()]
    assert marked(mark) == []


def test_the_rounds_ratio_is_the_median_of_each_rounds_own():
    """Rows of one round ran under much the same load of the machine: a ratio is taken within a
    round first, so a slow round slows both sides of it, not one."""
    from choreo.measure.bench import RowResult, add_ratios, combine

    def row(name: str, per_s: float, rss: float) -> RowResult:
        return RowResult(name, 10, 10, 1.0, per_s, 1.0, 2.0, 3.0, 5.0, {"xadd": 4.0}, 10.0, 20.0,
                         100.0, 1.0, {"order.1": rss}, True)
    rounds = [[row("reference-atomic", 50, 30), row("choreo", 45, 41)],        # 0.9: a slow round
              [row("reference-atomic", 100, 30), row("choreo", 80, 40)],       # 0.8
              [row("reference-atomic", 200, 30), row("choreo", 60, 39)]]       # 0.3
    for rows in rounds:
        add_ratios(rows)
    ref, choreo = combine(rounds)
    assert choreo.orders_per_s == 60 and ref.orders_per_s == 100
    assert choreo.ratio["reference-atomic"]["orders_per_s"] == pytest.approx(0.8)   # not 60/100
    assert choreo.peak_rss_mib == {"order.1": 41} and choreo.commands == {"xadd": 4.0}


def test_the_rounds_commands_count_a_round_without_one_as_zero_and_nodes_are_one_rounds():
    from choreo.measure.bench import RowResult, add_ratios, combine
    rounds = []
    for n, (per_s, extra) in enumerate([(10, {"xclaim": 0.3}), (30, {}), (20, {})]):
        r = RowResult("choreo", 10, 10, 1.0, per_s, 1.0, 2.0, 3.0, 5.0, {"xadd": 4.0, **extra}, 10.0,
                      20.0, 100.0, 1.0, {}, True, redis_cpu_us_per_order_by_node={f"127.0.0.1:{4000 + n}": per_s})
        rounds.append([r])
        add_ratios(rounds[-1])
    [row] = combine(rounds)
    assert row.commands == {"xadd": 4.0, "xclaim": 0.0}
    assert row.redis_cpu_us_per_order_by_node == {"127.0.0.1:4002": 20}        # the median round's


def test_a_cluster_row_beside_a_single_node_has_every_figure_and_leaves_no_process():
    mark = uuid.uuid4().hex
    done = bench("--orders", "200", "--rows", "choreo,choreo-cluster", "--json", mark=mark, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [r["name"] for r in out["rows"]] == ["choreo", "choreo-cluster"]
    assert out["partitions"] == 8 and any("summed over the primaries" in n for n in out["notes"])
    for r in out["rows"]:
        assert r["completed"] == r["orders"] == 200 and r["settled"]
        assert r["commands"]["xadd"] >= 4 and r["redis_cpu_us_per_order"] > 0
        assert r["redis_keys_per_order"] > 0 and r["worker_cpu_us_per_order"] > 0
        assert 0 < r["redis_bytes_per_order_trimmed"] < r["redis_bytes_per_order"]
    single, cluster = out["rows"]
    assert single["replica_cpu_us_per_order"] == 0 < cluster["replica_cpu_us_per_order"]
    assert len(single["redis_cpu_us_per_order_by_node"]) == 1
    assert len(cluster["redis_cpu_us_per_order_by_node"]) == 3      # the primaries
    # One server and four workers; six cluster nodes and four workers.
    assert len(out["processes"]) == 1 + 4 + 6 + 4
    assert not [p for p in out["processes"] if Path(f"/proc/{p}").exists()]
    assert marked(mark) == []


@pytest.mark.parametrize("argv, started_n, marked_n", [
    (["--orders", "1000000", "--rows", "choreo"], 1 + 4, 1 + 4),          # server, workers
    (["--soak", "1000000", "--rate", "200"], 1 + 4 + 1, 1 + 4 + 1),       # server, workers, trimmer
    (["--orders", "1000000", "--rows", "choreo-cluster"], 6 + 4, 1 + 4)])  # six nodes, workers
def test_ctrl_c_stops_every_process_it_started(argv, started_n, marked_n):
    mark = uuid.uuid4().hex
    env = {**os.environ, "CHOREO_BENCH_TEST_MARK": mark}
    # SIGINT as a terminal's Ctrl-C sends it: not ignored, even if whatever started the tests
    # (a shell's background job) ignores it and the bench would inherit that.
    proc = subprocess.Popen([str(BIN / "choreo"), "bench", *argv],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(started) < started_n and time.monotonic() < deadline:
            time.sleep(0.1)
            started = children(proc.pid)
        # The marked: the bench and the processes it started, but the servers (see marked()).
        assert len(started) == started_n and len(marked(mark)) == marked_n
        time.sleep(1.0)                                 # the load is running by now
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130                     # six nodes and four workers to stop, on a busy machine
    finally:
        _kill_if_left(proc)
        print(proc.stderr.read())       # shown if the test failed: "Exception ignored", a crash
    assert marked(mark) == []
    assert not [p for p in started if Path(f"/proc/{p}").exists()]


def _kill_if_left(proc: subprocess.Popen) -> None:
    """A failed test still leaves nothing running: the workers have their own sessions, so
    killing the bench alone would orphan them. Only while the bench runs are these pids surely
    still its children (afterwards a pid may be reused): they go first, then the bench."""
    if proc.poll() is not None:
        return
    for pid in children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("argv", [["--replicas", "inventory=two"], ["--replicas", "stock=2"],
                                  ["--replicas", "inventory=99"], ["--rows", "choreo,fast"],
                                  ["--orders", "0"], ["--soak", "0"], ["--soak", "9", "--curve"],
                                  ["--soak", "9", "--rows", "choreo"], ["--retention", "5"],
                                  ["--soak", "9", "--retention", "0"], ["--soak", "9", "--seen-ttl", "59"],
                                  ["--rows", "choreo-cluster", "--partitions", "0"],
                                  ["--rows", "choreo-cluster", "--partitions", "1025"],
                                  ["--rows", "choreo-cluster", "--partitions", "eight"],
                                  ["--partitions", "4"], ["--rows", "choreo", "--partitions", "4"],
                                  ["--soak", "9", "--partitions", "4"],
                                  ["--rows", "choreo,choreo-cluster", "--redis-url", "redis://127.0.0.1:1/0"],
                                  ["--repeat", "0"], ["--repeat", "10"], ["--soak", "9", "--repeat", "2"]])
def test_bad_arguments_are_one_line_and_exit_2(argv, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("choreo")


def test_refuses_a_database_that_is_not_empty(redis_server, redis_url, capsys):
    redis_server.client().set("someone:else", "1")
    assert main(["bench", "--redis-url", redis_url, "--orders", "10"]) == 1
    assert "holds 1 keys" in capsys.readouterr().err
    assert redis_server.client().get("someone:else") == "1"


def test_reference_reads_what_choreo_services_read_on_the_happy_path():
    for name, service in SERVICES.items():
        assert reference.CONSUMES[name] == tuple(t for t in service.consumes if t in HAPPY)


def test_reference_reacts_like_the_saga_and_acks_per_stream():
    created = reference.event("OrderCreated", "7", "order", {"lines": [], "total_cents": 1999})
    confirmed = reference.event("InventoryChecked", "6", "inventory", {})
    batch = [("events:OrderCreated", [("1-0", created)]), ("events:InventoryChecked", [("2-0", confirmed)])]
    adds, acks, seen = reference.follow_ons("inventory", batch)
    [(stream, emitted)] = adds
    assert stream == "events:InventoryChecked"
    assert (emitted["type"], emitted["order_id"], emitted["causation_id"], emitted["producer"]) == \
        ("InventoryChecked", "7", created["id"], "inventory")
    assert json.loads(emitted["data"]) == {"lines": [], "total_cents": 1999}
    assert acks == {"events:OrderCreated": ["1-0"], "events:InventoryChecked": ["2-0"]}
    assert seen == [created["id"], confirmed["id"]]


def test_soak_prints_its_table_and_a_clean_audit_and_leaves_no_process():
    # Retention and dedup markers at the least their settings allow, so they expire during the run.
    mark = uuid.uuid4().hex
    done = bench("--soak", "600", "--rate", "300", "--retention", "1", "--seen-ttl", "60", mark=mark)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    header = next(i for i, line in enumerate(out) if line.split()[:3] == ["time", "s", "placed"])
    rows = [line.split() for line in out[header + 2:] if line.strip()]
    rows = rows[:next(i for i, cells in enumerate(rows) if not cells[0].replace(",", "").isdigit())]
    assert rows[0][1:3] == ["0", "0"] and rows[-1][1:3] == ["600", "600"]     # placed, completed
    assert all(len(cells) == 6 for cells in rows)
    assert any(line.startswith("memory: ") for line in out)
    assert out[-1].startswith("audit clean: ")
    assert marked(mark) == []


def test_soak_json_has_every_sample_and_names_the_processes_it_stopped():
    mark = uuid.uuid4().hex
    done = bench("--soak", "300", "--rate", "300", "--retention", "1", "--json", mark=mark)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["orders"], out["completed"], out["retention_s"], out["seen_ttl_s"]) == (300, 300, 1, 60)
    assert out["audit_clean"] and out["audit"][0].startswith("audit clean: ")
    last = out["samples"][-1]
    assert (last["placed"], last["completed"]) == (300, 300) and last["keys"] > 0
    assert len(out["processes"]) == 1 + 4 + 1           # server, workers, trimmer
    assert not [p for p in out["processes"] if Path(f"/proc/{p}").exists()]
    assert marked(mark) == []


def test_record_layouts_measures_each_layout_and_never_flushes_a_database_in_use(redis_server, redis_url,
                                                                                 capsys):
    from choreo.benchmarks import record_layouts
    assert record_layouts.main(["--redis-url", redis_url, "--orders", "200"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == list(record_layouts.LAYOUTS)
    assert all(float(line.split()[1].replace(",", "")) > 0 for line in lines[1:])
    assert redis_server.client().dbsize() == 0                    # emptied again at the end
    redis_server.client().set("someone's", "data")
    assert record_layouts.main(["--redis-url", redis_url, "--orders", "200"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert redis_server.client().get("someone's") == "data"


def test_profile_drains_its_orders_and_counts_instructions_under_callgrind():
    """benchmarks/profile.py, as docs/benchmarks.md runs it: every order completes, CPU per order
    by service; with --callgrind, instructions per order of the workers and of the server."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "choreo.benchmarks.profile", *args],
                              capture_output=True, text=True, timeout=120)
    done = run("--orders", "40")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("40 orders drained in ") and lines[0].endswith(", 40 completed")
    assert [part.split()[0] for part in lines[1].split(": ")[1].split("; ")[0].split(", ")] == \
        ["order", "inventory", "payment", "shipping"]
    assert shutil.which("valgrind"), "valgrind is not installed (./dev test installs it: apt-get install valgrind)"
    counted = run("--orders", "5", "--callgrind")
    assert counted.returncode == 0, counted.stdout + counted.stderr
    figures = counted.stdout.splitlines()[-1].split(": ")[1]
    workers, server = (int(part.split()[-1].replace(",", "")) for part in figures.split(", "))
    assert workers > 100_000 and server > 10_000
    refused = run("--orders", "0")
    assert refused.returncode == 2 and "--orders must be at least 1" in refused.stderr

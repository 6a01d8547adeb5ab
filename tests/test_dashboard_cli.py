"""`choreo dashboard` as the real command: --once and --json during a load run against real
workers, and the live view on a pseudo-terminal (quits on q and Ctrl-C leaving the terminal as it
found it, shows "disconnected" while Redis is down and recovers when it is back)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
import time

from choreo.bus import keys as bus_keys
from choreo.bus.connect import open_bus
from choreo.orders import OrderRequest, new_order_ids, place_orders
from tests.conftest import BIN, ROOT
from tests.helpers import order_statuses, wait_for
from tests.redis_server import free_port
from choreo.workers import SERVICES

ALT_SCREEN_ON, ALT_SCREEN_OFF, SHOW_CURSOR = "\x1b[?1049h", "\x1b[?1049l", "\x1b[?25h"


def _wait_for_stream(client, stream: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not client.exists(stream):
        assert time.monotonic() < deadline, f"{stream} never appeared"
        time.sleep(0.05)


def test_once_and_json_during_a_load_run(procs, redis_server):
    for name in SERVICES:
        procs.worker(name)
    load = procs.start("load", "--orders", "2000", "--rate", "400", "--timeout", "60")
    _wait_for_stream(redis_server.client(), bus_keys.stream("OrderCreated"))

    # The load alone may be done before a slow machine has started the dashboard: orders keep
    # arriving until the dashboard has answered, so its interval always sees some placed.
    with placing_orders(procs.url) as trickled:
        answer = procs.run("dashboard", "--json", "--refresh", "0.5", timeout=30)
    assert answer.returncode == 0, answer.stderr
    snap = json.loads(answer.stdout)
    streams = {s["stream"]: s for s in snap["streams"]}
    assert streams[bus_keys.stream("OrderCreated")]["per_s"] > 0       # placed during the interval
    assert snap["connected"] and snap["server_version"].startswith("7.")
    assert {g["state"] for g in snap["groups"]} <= {"OK", "LAGGING", "STUCK", "NO CONSUMERS"}
    host = socket.gethostname()
    assert {c["name"] for c in snap["consumers"]} == {f"{n}-{host}-1" for n in SERVICES}
    assert not any(c["stale"] for c in snap["consumers"]), [(c["state"], c["read_age_s"]) for c in snap["consumers"] if c["stale"]]

    frame = procs.run("dashboard", "--once", "--refresh", "0.2", timeout=30)
    assert frame.returncode == 0, frame.stderr
    for title in ("streams", "orders", "dead letters", "consumer groups", "consumers", "recent events"):
        assert f"─ {title} ─" in frame.stdout
    assert bus_keys.stream("OrderCreated") in frame.stdout and ALT_SCREEN_ON not in frame.stdout

    assert load.wait(60) == 0
    assert open(load.log_path).read().splitlines()[-1].startswith("orders=2000 completed=2000 ")
    everything = 2000 + trickled["placed"]
    wait_for(lambda: order_statuses(redis_server.client()) == {"COMPLETED": everything},
             what="the trickled orders completed too")
    after = json.loads(procs.run("dashboard", "--json", "--refresh", "0.1").stdout)
    assert after["orders"]["by_status"] == {"COMPLETED": everything}
    assert after["orders"]["sampled"] == 500 and after["orders"]["p99_ms"] >= after["orders"]["p50_ms"]


@contextlib.contextmanager
def placing_orders(url: str):
    """Places an order every 20 ms, from a thread, until the block ends; counts them."""
    bus, stop, count = open_bus(url), threading.Event(), {"placed": 0}

    def place() -> None:
        while not stop.wait(0.02):
            place_orders(bus, [OrderRequest(new_order_ids(bus, 1)[0],
                                            [{"product_id": 101, "quantity": 1}])])
            count["placed"] += 1
    thread = threading.Thread(target=place)
    thread.start()
    try:
        yield count
    finally:
        stop.set()
        thread.join(5)
        bus.close()


def test_once_against_an_unreachable_server_is_one_line(procs):
    url = f"redis://127.0.0.1:{free_port()}/0"
    answer = procs.run("dashboard", "--once", "--redis-url", url)
    assert answer.returncode == 1
    assert answer.stderr.startswith(f"choreo: cannot reach Redis at {url}")
    assert len(answer.stderr.splitlines()) == 1


def test_the_live_view_into_a_pipe_says_it_needs_a_terminal(procs):
    """Without a terminal the full-screen view would write nothing and run until killed."""
    answer = procs.run("dashboard", "--redis-url", f"redis://127.0.0.1:{free_port()}/0", timeout=20)
    assert (answer.returncode, answer.stdout) == (2, "")
    assert answer.stderr.strip().splitlines() == [
        "choreo dashboard: the live view needs a terminal; add --once or --json for a file or a pipe"]


class Terminal:
    """`choreo dashboard` on a pseudo-terminal of 160x50, its screen output collected as text."""

    def __init__(self, url: str):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self.modes = termios.tcgetattr(slave)
        self.slave = slave
        env = {**os.environ, "TERM": "xterm-256color", "PATH": f"{BIN}:{os.environ['PATH']}"}
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        self.proc = subprocess.Popen([str(BIN / "choreo"), "dashboard", "--refresh", "0.2",
                                      "--redis-url", url], stdin=slave, stdout=slave, stderr=slave,
                                     cwd=ROOT, env=env, start_new_session=True,
                                     # the pty becomes its controlling terminal, so ^C is SIGINT
                                     # and SIGINT is not ignored, whatever started the tests
                                     preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL),
                                                         fcntl.ioctl(0, termios.TIOCSCTTY, 0)))
        self.output = ""

    def wait_for(self, text: str, start: int = 0, timeout_s: float = 15) -> int:
        deadline = time.monotonic() + timeout_s
        while text not in self.output[start:]:
            assert time.monotonic() < deadline, f"never saw {text!r}; got {self.output[-2000:]!r}"
            if select.select([self.master], [], [], 0.1)[0]:
                self.output += os.read(self.master, 65536).decode(errors="replace")
        return start + self.output[start:].index(text)

    def press(self, key: bytes, timeout_s: float = 10) -> int:
        """Send a key and wait for the program to exit, reading its output all the while: a pty
        nobody reads fills up, and the program's last writes (and its TCSADRAIN restoring the
        terminal modes) would block on it forever."""
        os.write(self.master, key)
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"no exit {timeout_s}s after {key!r}"
            self._drain(0.05)
        while self._drain(0.2):
            pass
        return self.proc.returncode

    def _drain(self, wait_s: float) -> bool:
        if not select.select([self.master], [], [], wait_s)[0]:
            return False
        try:
            self.output += os.read(self.master, 65536).decode(errors="replace")
        except OSError:             # the slave side closed: nothing more to read
            return False
        return True

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def test_live_view_survives_redis_going_away_and_quits_on_q(own_redis):
    term = Terminal(own_redis.url)
    try:
        term.wait_for("consumer groups")
        own_redis.kill()
        down = term.wait_for("DISCONNECTED")
        own_redis.start()                                   # same port, empty
        term.wait_for("Redis 7.", start=down)
        assert term.press(b"q") == 0
        assert term.output.index(ALT_SCREEN_ON) < term.output.rindex(ALT_SCREEN_OFF)
        assert SHOW_CURSOR in term.output[term.output.rindex(ALT_SCREEN_OFF) - 50:]
        assert termios.tcgetattr(term.slave) == term.modes  # echo and line mode are back
    finally:
        term.close()


def test_live_view_quits_cleanly_on_ctrl_c(redis_url):
    term = Terminal(redis_url)
    try:
        term.wait_for("consumer groups")
        assert term.press(b"\x03") == 0
        assert ALT_SCREEN_OFF in term.output and "Traceback" not in term.output
        assert termios.tcgetattr(term.slave) == term.modes
    finally:
        term.close()

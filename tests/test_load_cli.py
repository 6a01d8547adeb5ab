"""`choreo load`: the figures line stays the last line of stdout (scripts parse it); a summary
table goes to stderr; the progress bar (placed, completed, failed) only on a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess

from tests.conftest import BIN, ROOT
from tests.helpers import FIGURES
from choreo.workers import SERVICES



def _start_workers(procs) -> None:
    for name in SERVICES:
        procs.worker(name)


def test_plain_output_off_a_terminal(procs):
    _start_workers(procs)
    done = procs.run("load", "--orders", "200", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert FIGURES.match(done.stdout.splitlines()[-1]).groups() == ("200", "200", "0", "0.000")
    assert len(done.stdout.splitlines()) == 1
    assert "\x1b[" not in done.stderr and "━" not in done.stderr       # no bar, no control codes
    table = {" ".join(cells[:-1]): cells[-1] for cells in (line.split() for line in done.stderr.splitlines())
             if len(cells) >= 2}
    assert (table["orders"], table["placed"], table["COMPLETED"]) == ("200", "200", "200")
    assert table["not finished"] == "0"
    assert (table["outages"], table["outage s"], table["found placed on retry"]) == ("0", "0.000", "0")


def test_progress_bar_on_a_terminal(procs):
    _start_workers(procs)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([str(BIN / "choreo"), "load", "--orders", "400", "--rate", "400",
                                 "--quantity", "51"], stdout=subprocess.PIPE, stderr=slave,
                                cwd=ROOT, env=procs.env(TERM="xterm"), text=True)
        screen = ""
        while proc.poll() is None or select.select([master], [], [], 0.2)[0]:
            if select.select([master], [], [], 0.1)[0]:
                screen += os.read(master, 65536).decode(errors="replace")
        stdout = proc.stdout.read()
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)           # colours and cursor moves
    for task in ("placed", "completed", "failed"):
        assert re.search(rf"{task}\s*━", screen), task                # a bar for each
    assert re.search(r"failed\s*━+\s*400/400", screen)              # every order over the parcel limit
    assert FIGURES.match(stdout.splitlines()[-1]).groups()[:3] == ("400", "0", "0")

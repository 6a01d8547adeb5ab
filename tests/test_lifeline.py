"""choreo.measure.lifeline: a Ctrl-C a finalizer dropped is raised again; children die with the
process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from choreo.measure.lifeline import interrupts_kept


class Interrupted:
    """As when SIGINT's handler runs inside redis-py's AbstractConnection.__del__."""

    def __del__(self):
        raise KeyboardInterrupt


def test_a_ctrl_c_a_finalizer_dropped_is_raised_again():
    with pytest.raises(KeyboardInterrupt), interrupts_kept():
        Interrupted()                   # freed at once: its KeyboardInterrupt is dropped
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.01)
    assert time.monotonic() < deadline


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_without_it_the_ctrl_c_is_lost():
    Interrupted()
    time.sleep(0.05)                    # nothing raised here: the failure the bench had


def test_handlers_and_hook_are_as_they_were_afterwards():
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)], sys.unraisablehook
    with pytest.raises(KeyboardInterrupt), interrupts_kept():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert ([signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)],
            sys.unraisablehook) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_child_dies_with_the_process_that_started_it_however_that_dies():
    # A parent that starts a child in its own session, prints its pid, and waits to be SIGKILLed.
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from choreo.measure.lifeline import die_with_parent\n"
        "child = subprocess.Popen(['sleep', '60'], start_new_session=True, preexec_fn=die_with_parent())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert Path(f"/proc/{child}").exists()
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    # Reparented to init (or a subreaper), which reaps it: gone, or a zombie for a moment.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False

"""What keeps Ctrl-C of `choreo bench` working: it always stops the bench, and nothing the bench
started outlives it.

Two ways it failed on a busy machine (tests/test_bench.py's Ctrl-C test):

- Python runs a signal handler wherever the main thread is, finalizers included. A
  KeyboardInterrupt raised inside a `__del__` (redis-py's `AbstractConnection.__del__`, run when
  the garbage collector frees a dropped connection) cannot propagate: Python prints "Exception
  ignored in ..." and drops it, and the bench went on placing orders as if no Ctrl-C had come.
  `interrupts_kept()` raises it again once the finalizer has returned.
- A bench that dies without unwinding (SIGKILL, a crash) runs none of its finally blocks, and the
  workers, in sessions of their own, would run on. `die_with_parent` has the kernel SIGKILL each
  process the bench starts when the bench dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

# A dropped KeyboardInterrupt is raised again by SIGALRM, AGAIN_S later: not at once, which
# would raise it inside the hook itself (Python code too), where it would be dropped for good.
AGAIN_S = 0.01


def _raise_again(previous: Callable) -> Callable:
    def hook(unraisable) -> None:
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            # Should SIGALRM's handler run in a finalizer again, this hook sees it dropped again
            # and arms the timer again, until it lands outside one.
            signal.setitimer(signal.ITIMER_REAL, AGAIN_S)
            return
        previous(unraisable)
    return hook


@contextmanager
def interrupts_kept() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt as SIGINT does, and one a finalizer dropped is raised
    again; the handlers and the hook as they were on the way out."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    hook = sys.unraisablehook
    for sig in (signal.SIGTERM, signal.SIGALRM):
        signal.signal(sig, signal.default_int_handler)
    sys.unraisablehook = _raise_again(hook)
    try:
        yield
    finally:
        # The timer and the handlers first: a SIGALRM or Ctrl-C landing in here, before they are
        # back, would leave SIGTERM raising KeyboardInterrupt in an in-process caller.
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in before.items():
            signal.signal(sig, handler)
        sys.unraisablehook = hook


PR_SET_PDEATHSIG = 1            # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn for subprocess.Popen: the child gets SIGKILL when this process dies, however
    it dies. None where prctl(2) is not (the child then outlives a crash, as before). It runs
    between fork and exec, so it only calls prctl and getppid: nothing that takes a lock.
    NOTE: Linux sends the signal when the *thread* that started the child ends, so start
    children with it from the main thread (the bench, the test fixtures), never from a short-lived one."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:          # the parent died before the line above
            os.kill(os.getpid(), signal.SIGKILL)
    return set_death_signal

"""Deliberate bugs, one at a time, against the tests that must catch them.

    .venv/bin/python scripts/mutate.py                      # every mutation in scripts/mutations.toml
    .venv/bin/python scripts/mutate.py --list
    .venv/bin/python scripts/mutate.py conflict-acked dedup-marker-off

The working tree (without .git, .venv and caches) is copied once to a scratch directory. Each
mutation is applied there alone, its tests run with this project's .venv python from the copy, and
reverted. The project is installed editable in .venv, so the copy goes first on PYTHONPATH (which
`choreo` subprocesses inherit too), its choreo/ gets links to the folders pyproject.toml maps into
the namespace (choreo/bus -> ../bus, ...), and the imports are checked to come from it before
anything runs.
Prints one line per mutation, caught or SURVIVED; exits 1 if any survived, 2 if the list is wrong
(a text not found exactly once, a test that fails with no mutation, a run that errors).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = Path(__file__).with_name("mutations.toml")
PYTHON = ROOT / ".venv" / "bin" / "python"
NOT_COPIED = (".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info", "build")
PACKAGES = ("choreo.bus", "choreo.scheduling", "choreo.workers", "choreo.config", "choreo", "tests")
MAPPED = ("bus", "scheduling", "workers", "config", "benchmarks")     # [tool.setuptools.package-dir] in pyproject


class ListError(Exception):
    """The mutation list, or the unmutated tests, cannot give a meaningful answer."""


@dataclass(frozen=True)
class Mutation:
    id: str
    why: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]

    def apply(self, text: str) -> str:
        found = text.count(self.find)
        if found != 1:
            raise ListError(f"{self.id}: the text to find occurs {found} times in {self.file}, "
                            f"not once:\n{self.find}")
        return text.replace(self.find, self.replace)


def load(path: Path = LIST) -> list[Mutation]:
    rows = tomllib.loads(path.read_text())["mutation"]
    mutations = [Mutation(r["id"], r["why"], r["file"], r["find"], r["replace"], tuple(r["tests"]))
                 for r in rows]
    ids = [m.id for m in mutations]
    if len(set(ids)) != len(ids):
        raise ListError(f"duplicate ids in {path.name}")
    return mutations


def select(mutations: list[Mutation], ids: list[str]) -> list[Mutation]:
    by_id = {m.id: m for m in mutations}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise ListError(f"no such mutation: {', '.join(unknown)} (see --list)")
    return [by_id[i] for i in ids] if ids else mutations


class Scratch:
    """A copy of the working tree in which one mutation at a time is applied and reverted."""

    def __init__(self, parent: Path):
        self.root = parent / "repo"
        shutil.copytree(ROOT, self.root, ignore=shutil.ignore_patterns(*NOT_COPIED))
        for name in MAPPED:         # choreo.bus found in the copy, before the editable install's map
            (self.root / "choreo" / name).symlink_to(Path("..") / name)
        path = os.pathsep.join(filter(None, [str(self.root), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}

    def check_imports(self) -> None:
        probe = f"import {', '.join(PACKAGES)}; " + \
                "; ".join(f"print({name}.__file__)" for name in PACKAGES)
        out = subprocess.run([str(PYTHON), "-c", probe], cwd=self.root, env=self.env,
                             capture_output=True, text=True, check=True).stdout.split()
        strays = [f for f in out if not Path(os.path.realpath(f)).is_relative_to(self.root.resolve())]
        if strays:
            raise ListError(f"imported from outside the scratch copy: {strays}")

    def pytest(self, tests: tuple[str, ...], timeout_s: float) -> tuple[int, str]:
        cmd = [str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        try:
            done = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return -1, f"timed out after {timeout_s:.0f} s"
        return done.returncode, done.stdout + done.stderr

    def run(self, m: Mutation, timeout_s: float) -> tuple[int, str]:
        path = self.root / m.file
        original = path.read_text()
        path.write_text(m.apply(original))
        try:
            return self.pytest(m.tests, timeout_s)
        finally:
            path.write_text(original)


def first_failure(output: str) -> str:
    """The short summary's first FAILED/ERROR line, without its (long) message."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return output.strip().splitlines()[-1] if output.strip() else ""


def baseline(scratch: Scratch, mutations: list[Mutation], timeout_s: float) -> None:
    """A mutation is only caught if its tests pass without it."""
    tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    code, output = scratch.pytest(tests, timeout_s)
    if code != 0:
        raise ListError(f"the tests fail with no mutation applied:\n{output[-3000:]}")


def mutate(mutations: list[Mutation], timeout_s: float, check_baseline: bool) -> int:
    """Applies each mutation alone; returns the number that survived."""
    for m in mutations:                     # refuse a stale list before spending minutes on it
        m.apply((ROOT / m.file).read_text())
    survived = 0
    with tempfile.TemporaryDirectory(prefix="choreo-mutate-") as tmp:
        scratch = Scratch(Path(tmp))
        scratch.check_imports()
        if check_baseline:
            baseline(scratch, mutations, timeout_s)
        width = max(len(m.id) for m in mutations)
        for m in mutations:
            started = time.monotonic()
            code, output = scratch.run(m, timeout_s)
            took = f"{time.monotonic() - started:5.1f}s"
            if code == 0:
                survived += 1
                print(f"SURVIVED  {m.id:<{width}}  {took}  {m.why}", flush=True)
            elif code in (1, -1):           # a failing test, or one hanging until the timeout
                print(f"caught    {m.id:<{width}}  {took}  {first_failure(output)}", flush=True)
            else:
                raise ListError(f"{m.id}: pytest exited {code} (not a test failure):\n{output[-3000:]}")
    print(f"{len(mutations)} mutations: {len(mutations) - survived} caught, {survived} survived")
    return survived


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--timeout", type=float, default=300, help="per pytest run, seconds")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running the tests unmutated first")
    args = parser.parse_args(argv)
    try:
        mutations = select(load(), args.ids)
        if args.list:
            for m in mutations:
                print(f"{m.id}  {m.file}  {m.why}")
            return 0
        if not PYTHON.exists():
            raise ListError(f"{PYTHON} missing: run ./dev test once to create it")
        return 1 if mutate(mutations, args.timeout, not args.no_baseline) else 0
    except ListError as exc:
        print(f"mutate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Fixtures. Tests marked by needing `redis_url` talk to a real redis-server started here; a missing
redis-server is an error, never a skip."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fakeredis
import pytest
from hypothesis import settings as hypothesis_settings

# Property tests (the simulator above all) run a modest number of examples in the default suite;
# `--hypothesis-profile=thorough` runs many more (docs/guarantees.md, "The simulator").
hypothesis_settings.register_profile("default", deadline=None, max_examples=100)
hypothesis_settings.register_profile("thorough", deadline=None, max_examples=3000)
hypothesis_settings.load_profile("default")

from choreo.bus.redis_streams import RedisStreamsBus
from tests.redis_server import RedisServer
from choreo.measure.redis_cluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    """Three primaries and three replicas, started only by a session that has a test asking for
    it (such tests carry the `redis_cluster` mark), killed at its end. Tests that kill a primary
    restart it before they finish, so the next test finds three primaries again."""
    with LocalCluster() as cluster:
        yield cluster


def pytest_configure(config):
    config.addinivalue_line("markers", "redis_cluster: the test uses the local Redis Cluster "
                                       "(deselect with -m 'not redis_cluster')")


def pytest_collection_modifyitems(items):
    for item in items:
        if "redis_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis_cluster)


@pytest.fixture
def redis_url(redis_server) -> str:
    """URL of the shared throwaway server, flushed for this test."""
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def timers_server(tmp_path_factory):
    """A second server, for rq's queue on a Redis of its own (CHOREO_TIMERS_URL)."""
    server = RedisServer(tmp_path_factory.mktemp("timers-redis")).start()
    yield server
    server.stop()


@pytest.fixture
def timers_url(timers_server) -> str:
    """URL of the second throwaway server, flushed for this test."""
    timers_server.client().flushall()
    return timers_server.url


@pytest.fixture
def own_redis(tmp_path):
    """A server of this test's own, for killing and restarting; AOF-persisted so it comes back."""
    server = RedisServer(tmp_path / "redis", persist=True).start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def real_bus(redis_url):
    from choreo.bus.connect import open_bus
    bus = open_bus(redis_url)
    yield bus
    bus.close()


@pytest.fixture
def fake_bus():
    return RedisStreamsBus(fakeredis.FakeRedis(decode_responses=True))


@pytest.fixture(params=["fakeredis", "redis-server"])
def any_bus(request):
    """The bus contract suite runs on both; any difference shows up as a failing case."""
    if request.param == "fakeredis":
        yield RedisStreamsBus(fakeredis.FakeRedis(decode_responses=True))
    else:
        yield request.getfixturevalue("real_bus")


class Processes:
    """Subprocesses of the real `choreo` command, stopped (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self, url: str, log_dir: Path):
        self.url = url
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self.base_env = {"REDIS_URL": url}

    def env(self, **extra) -> dict:
        env = {**os.environ, **self.base_env, "PYTHONUNBUFFERED": "1",
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("HONCHO_PROCESS_NAME", None)
        if "REDIS_URL" not in self.base_env:
            env.pop("REDIS_URL", None)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start(self, *args: str, name: str | None = None, **env) -> subprocess.Popen:
        log = open(self.log_dir / f"{name or args[0]}-{len(self.procs)}.log", "w")
        proc = subprocess.Popen([str(BIN / "choreo"), *args], env=self.env(**env), stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        proc.log_path = log.name
        self.procs.append(proc)
        return proc

    def worker(self, service: str, slot: int = 1, **env) -> subprocess.Popen:
        return self.start("worker", service, name=f"{service}.{slot}", CHOREO_SLOT=slot, **env)

    def run(self, *args: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "choreo"), *args], env=self.env(**env), cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 6
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def procs(redis_url, tmp_path):
    p = Processes(redis_url, tmp_path)
    yield p
    p.stop_all()


@contextlib.contextmanager
def on_rendered_users(spec: str, app, tmp_path: Path, **env):
    """A throwaway redis-server loaded with `choreo acl render --app spec`'s users (a password
    each), and Processes whose every role connects as its own user (REDIS_URL_<ROLE>), with
    CHOREO_APP=spec and `env`: yields (server, procs, passwords); stops them all after."""
    from choreo.ops.acl import roles
    passwords = {r.user: f"pw-{r.user}-0123456789" for r in roles(list(app.services), app.timer_events)}
    secrets = {f"CHOREO_ACL_PASSWORD_{u.upper()}": p for u, p in passwords.items()}
    rendered = subprocess.run([str(BIN / "choreo"), "acl", "render", "--app", spec], cwd=ROOT,
                              capture_output=True, text=True, timeout=30,
                              env={"PATH": str(BIN), "PYTHONPATH": os.environ.get("PYTHONPATH", ""), **secrets})
    assert rendered.returncode == 0, rendered.stderr
    (tmp_path / "users.acl").write_text(rendered.stdout)
    server = RedisServer(tmp_path / "redis", extra=("--aclfile", str(tmp_path / "users.acl")),
                         auth=("admin", passwords["admin"])).start()
    procs = Processes(server.url_for("admin", passwords["admin"]), tmp_path)
    try:
        procs.base_env.pop("REDIS_URL")
        procs.base_env.update({f"REDIS_URL_{u.upper()}": server.url_for(u, p) for u, p in passwords.items()},
                              CHOREO_APP=spec, **env)
        yield server, procs, passwords
    finally:
        procs.stop_all()
        server.stop()

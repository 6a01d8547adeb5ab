"""A throwaway Redis Cluster on loopback: three primaries, one replica each, every node a child
process in its own temp directory (its nodes.conf lives there). Whoever starts it owns it: they
may SIGKILL a primary, wait for its replica to take over, and start the node again as a replica.
Nothing is persisted; `stop()` kills every node and removes the directories."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from choreo.measure.lifeline import die_with_parent
from choreo.measure.redis_server import find_redis_server

SLOTS = 16384
# A primary is marked failed, and its replica elected, a few node timeouts after it stops
# answering; 2 s keeps a failover to a few seconds where the default (15 s) would dominate a test.
NODE_TIMEOUT_MS = 2000


class ClusterError(RuntimeError):
    """The cluster could not be started or did not reach the state asked for; the message is one
    line naming the node and what it reported."""


def find_redis_cli() -> str:
    path = shutil.which("redis-cli") or ("/usr/bin/redis-cli" if os.path.exists("/usr/bin/redis-cli") else None)
    if not path:
        raise ClusterError("redis-cli not found on PATH (Debian: apt-get install redis-tools)")
    return path


def free_cluster_port() -> int:
    """A free port P whose cluster bus port, P + 10000, is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and _free(port + 10000):
            return port
    raise ClusterError("no free port P with P + 10000 free on 127.0.0.1")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    def __init__(self, primaries: int = 3, replicas_per_primary: int = 1,
                 node_timeout_ms: int = NODE_TIMEOUT_MS, start_timeout: float = 30):
        self.size = primaries * (1 + replicas_per_primary)
        self.replicas_per_primary = replicas_per_primary
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        self.ports: list[int] = []
        self.root: Path | None = None
        self.procs: dict[int, subprocess.Popen] = {}
        self.ids: dict[int, str] = {}           # port -> cluster node id (kept across a restart)
        self._replicas_of: dict[int, list[int]] = {}    # a killed primary's port -> its replicas' ports

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0?cluster=true"

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "LocalCluster":
        server, cli = find_redis_server(), find_redis_cli()
        atexit.register(self.stop)
        try:
            self.root = Path(tempfile.mkdtemp(prefix="choreo-cluster-"))
            while len(self.ports) < self.size:
                port = free_cluster_port()
                if not {port, port + 10000, port - 10000} & set(self.ports):    # nor a bus port
                    self.ports.append(port)
            for port in self.ports:
                self._spawn(port, server)
            for port in self.ports:
                self._wait_answering(port, time.monotonic() + 10)
            self._create(cli)
            self._wait_until(self._ready, self.start_timeout, "to become ok")
            self.ids = {port: self.ask(port, "CLUSTER", "MYID") for port in self.ports}
        except BaseException:
            # KeyboardInterrupt included: no node outlives a start that did not finish
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(10)
        self.procs.clear()
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        atexit.unregister(self.stop)

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node (not cluster-aware), for asking it about itself."""
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True,
                           socket_connect_timeout=1, socket_timeout=2)

    def ask(self, port: int, *command):
        """One command to one node, on a connection closed after it."""
        with self.node(port) as client:
            return client.execute_command(*command)

    def alive(self) -> list[int]:
        return [p for p in self.ports if p in self.procs and self.procs[p].poll() is None]

    def primaries(self) -> list[int]:
        return [p for p, role in self._roles().items() if role == "master"]

    def replicas(self) -> list[int]:
        return [p for p, role in self._roles().items() if role == "slave"]

    def kill_primary(self, port: int | None = None) -> int:
        """SIGKILL one primary (the first, unless named); returns its port."""
        primaries = self.primaries()
        port = primaries[0] if port is None else port
        if port not in primaries:
            raise ClusterError(f"127.0.0.1:{port} is not a live primary (primaries: {primaries})")
        self._replicas_of[port] = [p for p in self.replicas() if int(self.ask(p, "ROLE")[2]) == port]
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return port

    def wait_failover(self, killed_port: int, timeout: float = 30) -> int:
        """Until every surviving node sees the killed node as failed, owning no slots, and is ok
        with all slots served; returns the port of the replica that took over."""
        killed = self.ids[killed_port]
        self._wait_until(lambda: self._failed_over(killed), timeout, f"to fail over from 127.0.0.1:{killed_port}")
        promoted = [p for p in self.primaries() if p in self._replicas_of.get(killed_port, ())]
        if not promoted:
            raise ClusterError(f"no replica of 127.0.0.1:{killed_port} became a primary (primaries: {self.primaries()})")
        return promoted[0]

    def restart(self, port: int, timeout: float = 30) -> None:
        """Start a killed node again in its own dir: it reads its nodes.conf, learns that its
        slots have moved on, and rejoins as a replica of the node that took them."""
        if port in self.alive():
            raise ClusterError(f"127.0.0.1:{port} is still running")
        self._spawn(port, find_redis_server())
        self._wait_answering(port, time.monotonic() + 10)
        self._wait_until(self._ready, timeout, f"to take 127.0.0.1:{port} back")

    # -- starting --------------------------------------------------------------------------------

    def _spawn(self, port: int, server: str) -> None:
        workdir = self.root / str(port)
        workdir.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
             # a replica's first full sync would otherwise wait 5 s for more replicas to share it
             "--repl-diskless-sync-delay", "0",
             "--save", "", "--appendonly", "no", "--dir", str(workdir),
             "--logfile", str(workdir / "redis.log")],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())

    def _wait_answering(self, port: int, deadline: float) -> None:
        proc = self.procs[port]
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if self.ask(port, "PING"):
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise ClusterError(f"redis-server on 127.0.0.1:{port} did not start: {self._log_tail(port)}")

    def _create(self, cli: str) -> None:
        done = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas_per_primary), "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise ClusterError(f"redis-cli --cluster create failed: {said[-1] if said else done.returncode}")

    def _log_tail(self, port: int) -> str:
        log = self.root / str(port) / "redis.log" if self.root else None
        lines = log.read_text().strip().splitlines() if log and log.exists() else []
        return lines[-1] if lines else "(no log)"

    # -- asking the nodes ------------------------------------------------------------------------

    def _roles(self) -> dict[int, str]:
        roles = {}
        for port in self.alive():
            try:
                roles[port] = self.ask(port, "ROLE")[0]
            except redis.RedisError:
                pass
        return roles

    def _wait_until(self, check, timeout: float, what: str) -> None:
        """`check` returns None when satisfied, else what is wrong (which node, what it said)."""
        deadline = time.monotonic() + timeout
        while (wrong := check()) is not None:
            if time.monotonic() > deadline:
                raise ClusterError(f"cluster did not manage {what} in {timeout:g} s: {wrong}")
            time.sleep(0.1)

    def _cluster_ok(self, port: int) -> str | None:
        try:
            info = self.ask(port, "CLUSTER", "INFO")
        except redis.RedisError as e:
            return f"127.0.0.1:{port} did not answer CLUSTER INFO ({e})"
        fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
        if fields.get("cluster_state") != "ok" or fields.get("cluster_slots_ok") != str(SLOTS):
            return (f"127.0.0.1:{port} reports cluster_state:{fields.get('cluster_state')}, "
                    f"slots ok {fields.get('cluster_slots_ok')}/{SLOTS}")
        return None

    def _ready(self) -> str | None:
        """Every node up and ok with all slots served, and every replica's link to its primary up."""
        for port in set(self.ports) - set(self.alive()):
            return f"127.0.0.1:{port} is not running: {self._log_tail(port)}"
        for port in self.ports:
            if wrong := self._cluster_ok(port):
                return wrong
            replication = self.ask(port, "INFO", "replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return f"replica 127.0.0.1:{port} has master_link_status:{replication.get('master_link_status')}"
            if replication["role"] == "master" and replication["connected_slaves"] < self.replicas_per_primary:
                return f"primary 127.0.0.1:{port} has {replication['connected_slaves']} replicas attached"
        if len(primaries := self.primaries()) != self.size // (1 + self.replicas_per_primary):
            return f"primaries are {primaries}"
        return self._agreed()

    def _agreed(self) -> str | None:
        """Every node's CLUSTER NODES view says of each node what that node says of itself (role,
        its primary, slots): the roles gossip a little later than the replicas attach, and a
        client or a kill_primary() that asked too early would see a replica as a bare primary."""
        views = {port: {line[0]: line for line in self._nodes(port)} for port in self.ports}
        selves = {line[0]: line for view in views.values() for line in view.values() if "myself" in line[2]}
        for port, view in views.items():
            for node_id, own in selves.items():
                seen = view.get(node_id)
                if seen is None or _said(seen) != _said(own):
                    return (f"127.0.0.1:{port} sees 127.0.0.1:{self._port_of(own)} as "
                            f"{' '.join(_said(seen)) if seen else 'unknown'}")
        return None

    def _nodes(self, port: int) -> list[list[str]]:
        return [line.split() for line in self.ask(port, "CLUSTER", "NODES").splitlines()]

    @staticmethod
    def _port_of(line: list[str]) -> int:
        return int(line[1].split("@")[0].rsplit(":", 1)[1])

    def _failed_over(self, killed: str) -> str | None:
        for port in self.alive():
            if wrong := self._cluster_ok(port):
                return wrong
            line = next((line for line in self._nodes(port) if line[0] == killed), None)
            if line is None or "fail" not in line[2].split(",") or len(line) > 8:
                return f"127.0.0.1:{port} sees the killed node as {line[2] if line else 'unknown'}"
        return None


def _said(line: list[str]) -> tuple:
    """What a CLUSTER NODES line says of a node's role: its flags without `myself`, its primary's
    id (or -), its slot ranges."""
    flags = ",".join(f for f in line[2].split(",") if f != "myself")
    return (flags, line[3], *line[8:])

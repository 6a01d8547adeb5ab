"""A throwaway redis-server on a free port, owned by whoever started it (the tests, `choreo bench`):
they may kill, restart, flush it. Nothing is persisted unless asked."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import redis

from choreo.measure.lifeline import die_with_parent


def find_redis_server() -> str:
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if not path:
        raise RuntimeError("redis-server not found on PATH (Debian: apt-get install redis-server; "
                           "the tests: ./dev test installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Certificates:
    """A throwaway CA, and a server and a client certificate it signed, made with the openssl CLI."""
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, directory: Path) -> "Certificates":
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = directory / "ca.crt", directory / "ca.key"
        _openssl("req", "-x509", *_new_key(ca_key), "-days", "1", "-out", ca, "-subj", "/CN=choreo test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
            extensions = directory / f"{name}.ext"
            extensions.write_text(f"extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
            _openssl("req", *_new_key(directory / f"{name}.key"), "-out", directory / f"{name}.csr",
                     "-subj", f"/CN=choreo test {name}")
            _openssl("x509", "-req", "-in", directory / f"{name}.csr", "-CA", ca, "-CAkey", ca_key,
                     "-set_serial", str(len(name)), "-days", "1", "-extfile", extensions,
                     "-out", directory / f"{name}.crt")
        return cls(ca, directory / "server.crt", directory / "server.key",
                   directory / "client.crt", directory / "client.key")


def _new_key(path: Path) -> tuple:
    # EC keys: made in milliseconds, where RSA would take a noticeable part of a second each.
    return "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", path


def _openssl(*args) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, persist: bool = False,
                 tls: Certificates | None = None, password: str | None = None,
                 extra: tuple[str, ...] = (), auth: tuple[str, str] | None = None,
                 wrapper: tuple[str, ...] = ()):
        self.workdir = workdir
        self.port = port or free_port()
        # persist: AOF with fsync on every write, so a SIGKILLed server comes back with everything
        self.persist = persist
        # tls: TLS only (--port 0), and clients must show a certificate the CA signed
        self.tls = tls
        self.password = password
        self.proc: subprocess.Popen | None = None
        self.extra = extra          # more redis-server arguments (e.g. --aclfile)
        self.auth = auth            # (user, password) for client(), where default is off
        self.wrapper = wrapper      # what runs the server (e.g. valgrind and its options)

    @property
    def url(self) -> str:
        if not self.tls:
            return f"redis://127.0.0.1:{self.port}/0"
        query = {"ssl_ca_certs": self.tls.ca, "ssl_certfile": self.tls.client_cert,
                 "ssl_keyfile": self.tls.client_key}
        if self.password:
            query["password"] = self.password
        return f"rediss://127.0.0.1:{self.port}/0?{urlencode(query, safe='/', quote_via=quote)}"

    def _listen_args(self) -> list[str]:
        if not self.tls:
            return ["--port", str(self.port)]
        t = self.tls
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(t.server_cert),
                "--tls-key-file", str(t.server_key), "--tls-ca-cert-file", str(t.ca),
                "--tls-auth-clients", "yes"]

    def start(self, timeout_s: float = 10) -> "RedisServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "redis.log"
        self.proc = subprocess.Popen(
            [*self.wrapper, find_redis_server(), *self._listen_args(), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
             "--dir", str(self.workdir), "--logfile", str(log),
             *(["--requirepass", self.password] if self.password else []), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.02)
        tail = log.read_text()[-1000:] if log.exists() else ""
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")

    def client(self, decode: bool = True) -> redis.Redis:
        user, password = self.auth or (None, None)
        named = {"username": user, "password": password} if self.auth else {}
        return redis.Redis.from_url(self.url, decode_responses=decode, socket_connect_timeout=1, **named)

    def url_for(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

"""A fake email gateway, standing in for an HTTP API. It decides by the address, so the same
behaviour holds in a worker subprocess: `...@bounce.test` is refused for good (a permanent
failure), `...@down.test` times out every time (a transient one). `flaky` (address -> times)
times out that many times first, for tests that run the mailer in-process."""

from __future__ import annotations

import hashlib


class PermanentFailure(Exception):
    """The gateway refused the message for good (no such mailbox): retrying cannot help."""


class TransientFailure(Exception):
    """The gateway did not answer (timeout, 503): a later try may succeed."""


class FakeGateway:
    def __init__(self, flaky: dict[str, int] | None = None):
        self.flaky = dict(flaky or {})
        self.sent: dict[str, tuple[str, str]] = {}      # idempotency key -> (to, body)
        self.attempts = 0

    def send(self, to: str, subject: str, body: str, key: str) -> str:
        self.attempts += 1
        domain = to.rpartition("@")[2].lower()
        if domain == "bounce.test":
            raise PermanentFailure(f"550 no such mailbox: {to}")
        if domain == "down.test":
            raise TransientFailure("gateway timed out")
        if self.flaky.get(to, 0) > 0:
            self.flaky[to] -= 1
            raise TransientFailure("gateway timed out")
        self.sent.setdefault(key, (to, body))       # the same key twice sends one message
        return "msg-" + hashlib.sha256(key.encode()).hexdigest()[:12]

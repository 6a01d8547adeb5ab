"""The sign-up example's own tests, as a user writes them for their services:

1. handlers called directly, no Redis: a UnitOfWork over a BatchView of plain dicts;
2. the whole flow on the embedded Redis (fakeredis): real workers, real commits, in-process.

(End to end with `choreo worker` processes on a real redis-server: tests/test_example_signup.py.)
"""

from __future__ import annotations

import time

import fakeredis
import pytest
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from choreo.bus import keys as bus_keys
from choreo.bus.envelope import Envelope
from choreo.bus.redis_streams import RedisStreamsBus, same_server
from choreo.scheduling.timers import QUEUE
from choreo.config.settings import Settings
from choreo.workers import timers
from choreo.workers.runtime import Worker
from choreo.workers.unit_of_work import BatchView, UnitOfWork

from .app import ACCOUNTS, PENDING, SignUpRefused, account, email_claim, mail, make_app, mailer
from .commands import confirm_email, sign_up, status
from .gateway import FakeGateway

NOW = 1_700_000_000.0


# -- 1. handlers, without Redis ------------------------------------------------------------------

class DictBus:
    """All a BatchView needs: hashes from a dict."""

    def __init__(self, hashes=None):
        self.hashes = hashes or {}

    def read_hashes(self, keys):
        return [dict(self.hashes.get(k, {})) for k in keys]


def handle(service, event, hashes=None) -> UnitOfWork:
    uow = UnitOfWork(service.name, service.emits, BatchView(DictBus(hashes)), cause=event,
                     clock=lambda: NOW, creates=service.creates)
    service.consumes[event.type].handle(event, uow)
    return uow


def requested(account_id="1", email="ada@example.com"):
    return Envelope.new("SignUpRequested", account_id, "accounts",
                        {"email": email, "code": "abc123", "expires_at_ms": 1_700_000_060_000})


def written(uow, key):
    return {k: v for op in uow.ops if getattr(op, "key", None) == key for k, v in op.fields.items()}


def test_the_mailer_sends_the_code_and_says_so():
    gateway = FakeGateway()
    uow = handle(mailer(gateway), requested())
    [(to, body)] = gateway.sent.values()
    assert to == "ada@example.com" and "abc123" in body
    assert [(e.type, e.causation_id) for e in uow.emitted] == [("VerificationEmailSent", uow.cause.id)]
    assert written(uow, mail("1"))["status"] == "SENT"


def test_a_permanent_email_failure_is_an_event_not_an_exception():
    uow = handle(mailer(FakeGateway()), requested(email="gone@bounce.test"))
    assert [e.type for e in uow.emitted] == ["EmailFailed"]
    assert "550 no such mailbox" in uow.emitted[0].data["reason"]


def test_a_transient_email_failure_raises_so_the_runtime_retries():
    with pytest.raises(Exception, match="timed out"):
        handle(mailer(FakeGateway()), requested(email="x@down.test"))


def test_accounts_arm_the_expiry_timer_when_their_sign_up_is_durable():
    uow = handle(ACCOUNTS, requested())
    [timer] = uow.timers
    assert (timer.job_id, timer.at_ms, timer.producer, timer.job) == (
        "VerificationExpired-1", 1_700_000_060_000, "accounts", timers.JOB)


@pytest.mark.parametrize("event_type, data, ends", [
    ("EmailVerified", {}, "ACTIVE"), ("VerificationExpired", {}, "EXPIRED"),
    ("EmailFailed", {"reason": "550"}, "FAILED")])
def test_the_first_ending_event_decides_and_disarms_the_timer(event_type, data, ends):
    event = Envelope.new(event_type, "1", "mailer", data)
    uow = handle(ACCOUNTS, event, {account("1"): {"status": PENDING, "email": "Ada@example.com"}})
    assert written(uow, account("1"))["status"] == ends
    # The timer's own event disarms nothing: it has fired (rq is still finishing its job).
    assert uow.disarmed == ([] if event_type == "VerificationExpired" else ["VerificationExpired-1"])
    released = written(uow, email_claim("ada@example.com"))
    assert released == ({} if ends == "ACTIVE" else {"account": ""})     # the compensation


@pytest.mark.parametrize("ended", ["ACTIVE", "FAILED", "EXPIRED"])
def test_a_late_timeout_or_verification_changes_nothing(ended):
    for late in ("VerificationExpired", "EmailVerified", "EmailFailed"):
        event = Envelope.new(late, "1", "accounts", {"reason": "x"} if late == "EmailFailed" else {})
        uow = handle(ACCOUNTS, event, {account("1"): {"status": ended, "email": "a@b.c"}})
        assert uow.ops == [] and uow.emitted == [] and uow.disarmed == []


# -- 2. the flow on the embedded Redis -----------------------------------------------------------

@pytest.fixture
def bus():
    return RedisStreamsBus(fakeredis.FakeRedis(decode_responses=True))


def start(bus, gateway=None, **settings):
    app = make_app(gateway or FakeGateway())
    workers = [Worker(s, bus, Settings(**settings), f"{s.name}-test-1", publishers=app.publishers,
                      events=app.events) for s in app.services]
    for w in workers:
        w.start()
    return workers


def run_until(workers, done, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sum(w.poll(block_ms=0) for w in workers) and done():
            return
    raise AssertionError("the flow did not get there in time")


def fire_due_timers(bus, now):
    """What `choreo timers` does when they are due, here, in this process: each armed job's
    function (the generic one) with its arguments."""
    raw = same_server(bus.client, decode=False)
    registry = ScheduledJobRegistry(QUEUE, connection=raw, serializer=JSONSerializer)
    for job_id in registry.get_jobs_to_schedule(int(now)):
        job_id = job_id.decode() if isinstance(job_id, bytes) else job_id
        job = Job.fetch(job_id, connection=raw, serializer=JSONSerializer)
        assert job.func_name == timers.JOB
        timers.fire(bus, *job.args)


def test_verified_in_time_ends_active(bus):
    workers = start(bus)
    account_id, code = sign_up(bus, "ada@example.com", verify_within_s=60)
    run_until(workers, lambda: status(bus, account_id).get("message_id"))
    confirm_email(bus, account_id, code)
    run_until(workers, lambda: status(bus, account_id)["status"] != PENDING)
    assert status(bus, account_id)["status"] == "ACTIVE"
    assert not bus.client.exists("rq:job:VerificationExpired-" + account_id)   # disarmed
    with pytest.raises(SignUpRefused, match="already signed up"):
        sign_up(bus, "ADA@example.com")


def test_not_verified_in_time_expires_and_a_late_verification_changes_nothing(bus):
    workers = start(bus)
    account_id, code = sign_up(bus, "bob@example.com", verify_within_s=1)
    run_until(workers, lambda: status(bus, account_id).get("message_id"))
    fire_due_timers(bus, time.time() + 2)
    run_until(workers, lambda: status(bus, account_id)["status"] != PENDING)
    assert status(bus, account_id)["status"] == "EXPIRED"
    confirm_email(bus, account_id, code)            # too late: published, and ignored
    fire_due_timers(bus, time.time() + 2)           # nothing left armed: nothing happens
    run_until(workers, lambda: True)
    assert status(bus, account_id)["status"] == "EXPIRED"
    assert bus.client.xlen(bus_keys.stream("VerificationExpired")) == 1
    sign_up(bus, "bob@example.com")                 # the address was freed


def test_a_bounced_email_fails_the_account_and_frees_the_address(bus):
    workers = start(bus)
    account_id, _ = sign_up(bus, "gone@bounce.test", verify_within_s=60)
    run_until(workers, lambda: status(bus, account_id)["status"] != PENDING)
    assert status(bus, account_id)["status"] == "FAILED"
    assert "550" in status(bus, account_id)["reason"]
    assert bus.client.hget(email_claim("gone@bounce.test"), "account") == ""


def test_a_transient_failure_is_retried_then_sent_once(bus):
    gateway = FakeGateway(flaky={"eve@example.com": 2})
    workers = start(bus, gateway, retry_base_ms=1, max_deliveries=5)
    account_id, _ = sign_up(bus, "eve@example.com", verify_within_s=60)
    run_until(workers, lambda: status(bus, account_id).get("message_id"))
    assert gateway.attempts == 3 and len(gateway.sent) == 1
    assert bus.client.xlen(bus_keys.dead_letters("mailer")) == 0


def test_a_timer_that_fires_twice_publishes_once(bus):
    for _ in range(2):
        timers.fire(bus, "7", "cause-1", "accounts", "VerificationExpired")
    [(_, entry)] = bus.client.xrange(bus_keys.stream("VerificationExpired"))
    assert (entry["producer"], entry["order_id"], entry["causation_id"]) == ("accounts", "7", "cause-1")


def test_a_timer_armed_again_by_a_later_event_fires_again(bus):
    """Once per arming, not once per instance: a new cause is a new timer."""
    timers.fire(bus, "7", "cause-1", "accounts", "VerificationExpired")
    timers.fire(bus, "7", "cause-2", "accounts", "VerificationExpired")
    causes = [e["causation_id"] for _, e in bus.client.xrange(bus_keys.stream("VerificationExpired"))]
    assert causes == ["cause-1", "cause-2"]

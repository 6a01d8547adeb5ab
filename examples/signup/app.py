"""Sign-up, a choreography of two services (see README.md beside this file):

| event                 | published by          | consumed by | effect                               |
|-----------------------|-----------------------|-------------|--------------------------------------|
| SignUpRequested       | accounts (command)    | accounts    | starts the verification clock        |
|                       |                       | mailer      | sends the verification email         |
| VerificationEmailSent | mailer                | accounts    | notes the message id                 |
| EmailFailed           | mailer                | accounts    | account FAILED, email address freed  |
| EmailVerified         | accounts (command)    | accounts    | account ACTIVE                       |
| VerificationExpired   | accounts (timer)      | accounts    | account EXPIRED, email address freed |

An account ends in exactly one of ACTIVE, FAILED, EXPIRED; whichever of the last three events
comes first decides, and the others, arriving later, change nothing.

Run from examples/:  choreo worker accounts --app signup.app:app
     or the root:    choreo worker accounts --app examples.signup.app:app
"""

from __future__ import annotations

import secrets

from msgspec import Struct

from choreo.workers.app import App
from choreo.workers.service import On, Service
from choreo.workers.timers import JOB as PUBLISH_DUE
from choreo.workers.unit_of_work import UnitOfWork

from .gateway import FakeGateway, PermanentFailure

PENDING, ACTIVE, FAILED, EXPIRED = "PENDING", "ACTIVE", "FAILED", "EXPIRED"


# -- events: one msgspec Struct per type; an entry whose data does not fit is dead-lettered ------

class SignUpRequested(Struct):
    email: str
    code: str                       # the verification code the email carries
    expires_at_ms: int              # verify before this, or the account expires


class VerificationEmailSent(Struct):
    message_id: str


class EmailFailed(Struct):
    reason: str


class EmailVerified(Struct):
    pass


class VerificationExpired(Struct):  # published by `choreo timers`, on accounts' behalf
    pass


EVENTS = {t.__name__: t for t in (SignUpRequested, VerificationEmailSent, EmailFailed,
                                  EmailVerified, VerificationExpired)}


# -- keys: each service owns its own (its Redis ACL user may touch no others) --------------------

def account(account_id: str) -> str:
    return f"signup:account:{account_id}"


def email_claim(email: str) -> str:
    return f"signup:email:{email.lower()}"


def mail(account_id: str) -> str:
    return f"signup:mail:{account_id}"


SEQUENCE = "signup:seq"


class SignUpRefused(ValueError):
    """A command that cannot be done as asked (address taken, wrong code...)."""


# -- commands: write state and publish an event in one commit (see commands.py) ------------------

def request_sign_up(uow: UnitOfWork, account_id: str, email: str, verify_within_s: float) -> str:
    """Claim the address, create the PENDING account and publish SignUpRequested; the code."""
    if "@" not in email or len(email) > 254:
        raise SignUpRefused(f"{email!r} is not an email address")
    if uow.read(email_claim(email)).get("account"):
        raise SignUpRefused(f"{email} is already signed up")
    code = secrets.token_hex(3)
    expires_at_ms = uow.now_ms() + int(verify_within_s * 1000)
    uow.set(account(account_id), email=email, status=PENDING, code=code,
            expires_at_ms=expires_at_ms)
    uow.set(email_claim(email), account=account_id)
    uow.emit("SignUpRequested", order_id=account_id, email=email, code=code,
             expires_at_ms=expires_at_ms)
    return code


def verify(uow: UnitOfWork, account_id: str, code: str) -> None:
    """Publish EmailVerified if the code is right; whether it still counts is decided by the
    accounts service when it handles the event (the account may have expired meanwhile)."""
    state = uow.read(account(account_id))
    if not state:
        raise SignUpRefused(f"no account {account_id}")
    if not secrets.compare_digest(state.get("code", ""), code):
        raise SignUpRefused(f"wrong code for account {account_id}")
    uow.emit("EmailVerified", order_id=account_id)


# -- accounts: owns the account's state and ends it in one terminal status -----------------------

def start_clock(event, uow: UnitOfWork) -> None:
    """Our own SignUpRequested is durable: arm the timer that expires the account (a generic
    timer: `choreo timers` publishes VerificationExpired when due, whatever the state)."""
    uow.publish_later("VerificationExpired", event.data["expires_at_ms"], job=PUBLISH_DUE)


def note_sent(event, uow: UnitOfWork) -> None:
    state = uow.read(account(event.order_id))
    if state.get("status") == PENDING:
        uow.set(account(event.order_id), message_id=event.data["message_id"])


def _end(status: str, release_email: bool):
    def end(event, uow: UnitOfWork) -> None:
        state = uow.read(account(event.order_id))
        if state.get("status") != PENDING:
            return      # already ended (or unknown): a late or repeated event changes nothing
        uow.set(account(event.order_id), status=status, reason=event.data.get("reason", event.type),
                ended_at_ms=uow.now_ms())
        if release_email:   # the compensation: the address may sign up again
            uow.set(email_claim(state["email"]), account="")
        uow.disarm("VerificationExpired")
    end.__name__ = f"mark_{status.lower()}"
    return end


def _account(event) -> list[str]:
    return [account(event.order_id)]


ACCOUNTS = Service(
    name="accounts",
    voice="Accounts",
    consumes={
        "SignUpRequested": On(start_clock, "Account {order_id} waits for verification"),
        "VerificationEmailSent": On(note_sent, "Verification email for {order_id} sent", _account),
        "EmailFailed": On(_end(FAILED, True), "Account {order_id} failed: email undeliverable", _account),
        "EmailVerified": On(_end(ACTIVE, False), "Account {order_id} verified", _account),
        "VerificationExpired": On(_end(EXPIRED, True), "Account {order_id} expired", _account),
    },
    emits=(),
    creates={"SignUpRequested": "Signing up {order_id}",
             "EmailVerified": "Verifying {order_id}",
             "VerificationExpired": "Verification of {order_id} timed out"},
    owns=("signup:account:*", "signup:email:*", SEQUENCE),
    record=account,         # the events it publishes for an account are listed there
)


# -- mailer: sends the verification email through a gateway that can fail -----------------------

def mailer(gateway) -> Service:
    """The mailer service over `gateway` (anything with send(to, subject, body, key) -> id).
    A permanent failure is a business outcome: EmailFailed. A transient one raises out of the
    handler: the entry stays pending, is retried with backoff and, after max_deliveries, goes
    to dlq:mailer. The event id is the gateway's idempotency key: a retry sends one email."""
    def send_verification(event, uow: UnitOfWork) -> None:
        try:
            message_id = gateway.send(event.data["email"], "Verify your address",
                                      f"Your code: {event.data['code']}", key=event.id)
        except PermanentFailure as exc:
            uow.set(mail(event.order_id), status="FAILED", reason=str(exc))
            uow.emit("EmailFailed", reason=str(exc))
            return
        uow.set(mail(event.order_id), status="SENT", message_id=message_id)
        uow.emit("VerificationEmailSent", message_id=message_id)

    return Service(
        name="mailer",
        voice="Mailer",
        consumes={"SignUpRequested": On(send_verification, "Verification email for {order_id}")},
        emits=("VerificationEmailSent", "EmailFailed"),
        owns=("signup:mail:*",),
        record=mail,
    )


def make_app(gateway=None) -> App:
    return App("signup", services=[ACCOUNTS, mailer(gateway or FakeGateway())], events=EVENTS,
               timer_jobs=(PUBLISH_DUE,), timer_events=("VerificationExpired",))


app = make_app()

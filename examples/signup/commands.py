"""The sign-up commands, as a user (or a web handler) would call them:

    python -m signup.commands signup ada@example.com [--verify-within 3600]
    python -m signup.commands verify 1 3f9a0c
    python -m signup.commands status 1

against REDIS_URL (default redis://localhost:6379/0), run from examples/ (or `-m
examples.signup.commands` from the repository root). A command writes its state and publishes
its event in one commit, as a worker does; it does not wait for the services.
"""

from __future__ import annotations

import argparse
import sys
import time

from choreo.bus.connect import open_bus
from choreo.bus.contract import Outcome
from choreo.config.settings import Settings
from choreo.workers.unit_of_work import BatchView, UnitOfWork

from .app import ACCOUNTS, SEQUENCE, SignUpRefused, account, app, request_sign_up, verify


def _run(bus, command, *args, clock=time.time):
    """One command in one commit; SignUpRefused if it cannot be done, or if what it read
    changed before the commit (a racing sign-up of the same address)."""
    uow = UnitOfWork(ACCOUNTS.name, ACCOUNTS.creates, BatchView(bus), clock=clock, models=app.events,
                     record=ACCOUNTS.record)
    result = command(uow, *args)
    if bus.commit("", [uow.to_commit()])[0] is not Outcome.APPLIED:
        raise SignUpRefused("changed concurrently: try again")
    return result


def sign_up(bus, email: str, verify_within_s: float = 3600, clock=time.time) -> tuple[str, str]:
    """A new PENDING account for `email`: (its id, the code the email carries)."""
    account_id = str(bus.allocate_ids(SEQUENCE, 1)[0])
    return account_id, _run(bus, request_sign_up, account_id, email, verify_within_s, clock=clock)


def confirm_email(bus, account_id: str, code: str, clock=time.time) -> None:
    _run(bus, verify, account_id, code, clock=clock)


def status(bus, account_id: str) -> dict[str, str]:
    return {k: v for k, v in bus.read_hashes([account(account_id)])[0].items() if k != "_v"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="signup", description="sign-up commands")
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("signup", help="request a sign-up: prints the account id and its code")
    p.add_argument("email")
    p.add_argument("--verify-within", type=float, default=3600.0, metavar="SECONDS")
    p = sub.add_parser("verify", help="verify an account's email with its code")
    p.add_argument("account_id")
    p.add_argument("code")
    sub.add_parser("status", help="an account's state").add_argument("account_id")
    args = parser.parse_args(argv)
    if getattr(args, "verify_within", 1) <= 0:
        parser.error("--verify-within must be > 0")
    with open_bus(Settings.from_env().url) as bus:
        try:
            if args.verb == "signup":
                account_id, code = sign_up(bus, args.email, args.verify_within)
                print(f"account {account_id}: PENDING, code {code}")
            elif args.verb == "verify":
                confirm_email(bus, args.account_id, args.code)
                print(f"account {args.account_id}: EmailVerified published")
            else:
                state = status(bus, args.account_id)
                print(f"account {args.account_id}: " + (" ".join(
                    f"{k}={v}" for k, v in sorted(state.items()) if k != "code") or "unknown"))
        except SignUpRefused as exc:
            print(f"signup: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

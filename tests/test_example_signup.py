"""The sign-up example (examples/signup) end to end, as a user runs it: `choreo worker` and
`choreo timers` processes with --app, on a real redis-server; then the dead letters, the
diagram and the dashboard of that app. (Its handler and embedded-Redis tests are beside it.)"""

from __future__ import annotations

import json
import os

import pytest

from choreo.bus import keys as bus_keys
from examples.signup.app import email_claim
from examples.signup.commands import confirm_email, sign_up, status
from tests.helpers import wait_for

APP = "examples.signup.app:app"


@pytest.fixture
def signup(procs, real_bus):
    """Both services and the timers, the mailer retrying fast and giving up after 2 deliveries."""
    procs.base_env.update(CHOREO_APP=APP, CHOREO_RETRY_BASE_MS="100", CHOREO_MAX_DELIVERIES="2")
    for service in ("accounts", "mailer"):
        procs.worker(service)
    procs.start("timers", name="timers")
    return real_bus


def ended(bus, account_id, timeout=20):
    wait_for(lambda: status(bus, account_id).get("status") not in (None, "PENDING"),
             timeout=timeout, what=f"account {account_id} ended")
    return status(bus, account_id)


def test_the_four_endings_on_a_real_server(signup, procs):
    bus = signup
    happy, code = sign_up(bus, "ada@example.com", verify_within_s=30)
    bounced, _ = sign_up(bus, "gone@bounce.test", verify_within_s=30)
    down, _ = sign_up(bus, "x@down.test", verify_within_s=30)
    late, late_code = sign_up(bus, "bob@example.com", verify_within_s=1)
    wait_for(lambda: status(bus, happy).get("message_id"), what="the email sent")
    confirm_email(bus, happy, code)
    assert ended(bus, happy)["status"] == "ACTIVE"
    assert ended(bus, bounced)["status"] == "FAILED"
    assert bus.client.hget(email_claim("gone@bounce.test"), "account") == ""     # freed
    assert ended(bus, late)["status"] == "EXPIRED"                # by the timers process
    assert 0 < bus.client.ttl(bus_keys.trace(late)) <= 86400      # the timer's trace expires
    confirm_email(bus, late, late_code)                           # too late: changes nothing
    # The transient failure: retried, then dead-lettered; the account waits for its timer.
    wait_for(lambda: bus.client.xlen(bus_keys.dead_letters("mailer")) == 1, what="dead letter")
    listed = procs.run("dlq", "list")
    assert listed.returncode == 0 and "events:SignUpRequested" in listed.stdout
    assert "TransientFailure" in listed.stdout, listed.stdout
    assert status(bus, down)["status"] == "PENDING"
    assert bus.client.xlen(bus_keys.stream("VerificationExpired")) == 1
    wait_for(lambda: bus.client.xlen(bus_keys.stream("EmailVerified")) == 2, what="late verify")
    wait_for(lambda: not bus.client.xpending(bus_keys.stream("EmailVerified"), "accounts")["pending"],
             what="the late verification handled")
    assert status(bus, late)["status"] == "EXPIRED"


def test_the_diagram_and_the_dashboard_show_the_example(signup, procs):
    drawn = procs.run("topology", "--format", "mermaid")
    assert drawn.returncode == 0
    assert "svc_mailer ==> evt_EmailFailed" in drawn.stdout
    assert "evt_VerificationExpired --> svc_accounts" in drawn.stdout
    assert "order" not in drawn.stdout.lower()
    account_id, _ = sign_up(signup, "ada@example.com")
    wait_for(lambda: status(signup, account_id).get("message_id"), what="the email sent")
    shown = procs.run("dashboard", "--json", "--refresh", "0.1")
    assert shown.returncode == 0, shown.stderr
    text = json.dumps(json.loads(shown.stdout))
    for name in ("accounts", "mailer", "events:SignUpRequested", "events:VerificationEmailSent"):
        assert name in text
    assert "inventory" not in text


def test_the_acl_users_of_the_example_fit_its_timer(tmp_path):
    """Every process on its own user, from `choreo acl render --app`: accounts arms the expiry
    timer (rq's keys for VerificationExpired-*), only the timers user publishes the event, and
    `choreo acl check --app` finds no mismatch."""
    from choreo.bus.connect import open_bus
    from examples.signup.app import app
    from tests.conftest import on_rendered_users
    with on_rendered_users(APP, app, tmp_path) as (server, procs, passwords):
        for service in ("accounts", "mailer"):
            procs.worker(service)
        procs.start("timers", name="timers")
        with open_bus(server.url_for("accounts", passwords["accounts"])) as bus:
            account_id, _ = sign_up(bus, "bob@example.com", verify_within_s=1)
            assert ended(bus, account_id)["status"] == "EXPIRED"
            [(_, fired)] = server.client().xrange(bus_keys.stream("VerificationExpired"))
            assert fired["producer"] == "accounts"
            # The timer's event is traced in trace:<id>, which its commit, as the timers user,
            # gives the retention (CHOREO_RETENTION_S, a day): nothing else would expire it.
            assert 0 < server.client().ttl(bus_keys.trace(account_id)) <= 86400
        checked = procs.run("acl", "check", REDIS_URL=server.url_for("admin", passwords["admin"]))
        assert checked.returncode == 0 and ", 0 mismatches" in checked.stdout, checked.stdout[-2000:]


def test_the_diagram_in_the_walkthrough_is_what_topology_draws(capsys):
    from pathlib import Path
    from choreo.cli import main
    assert main(["topology", "--app", APP, "--format", "mermaid"]) == 0
    page = (Path(__file__).resolve().parent.parent / "docs" / "own-service.md").read_text()
    embedded = page.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert embedded == capsys.readouterr().out


def test_the_example_procfile_under_honcho_as_its_readme_says(procs, real_bus, tmp_path):
    """From examples/: `honcho -f signup/Procfile start`, then the example's commands; every
    process stops with 0 on SIGTERM."""
    import signal
    import subprocess
    import sys
    from tests.conftest import BIN, ROOT
    examples = ROOT / "examples"
    env = {**procs.env(), "CHOREO_RETRY_BASE_MS": "100"}
    env.pop("CHOREO_APP", None)
    log = open(tmp_path / "honcho.log", "w")
    honcho = subprocess.Popen([str(BIN / "honcho"), "-f", "signup/Procfile", "start"], cwd=examples,
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        command = [sys.executable, "-m", "signup.commands"]
        wait_for(lambda: real_bus.client.exists(bus_keys.stream("SignUpRequested")), timeout=30,
                 what="the workers' groups")
        done = subprocess.run([*command, "signup", "ada@example.com", "--verify-within", "60"],
                              cwd=examples, env=env, capture_output=True, text=True, check=True)
        account, code = done.stdout.split()[1].rstrip(":"), done.stdout.split()[-1]
        wait_for(lambda: status(real_bus, account).get("message_id"), what="the email sent")
        subprocess.run([*command, "verify", account, code], cwd=examples, env=env, check=True,
                       capture_output=True)
        assert ended(real_bus, account)["status"] == "ACTIVE"
        shown = subprocess.run([*command, "status", account], cwd=examples, env=env,
                               capture_output=True, text=True, check=True).stdout
        assert "status=ACTIVE" in shown
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        honcho.wait(15)
    output = open(tmp_path / "honcho.log").read()
    assert output.count("started (pid=") == 4 and output.count("stopped (rc=0)") == 4, output[-2000:]

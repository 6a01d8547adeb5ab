"""Least privilege with Redis ACLs: rules rendered from roles, and checked on a live server.

A Role is one Redis user. Its grants are Redis 7 selectors: each allows a set of commands on a set
of key patterns and nothing else, so "may XADD to events:InventoryChecked" and "may HSET stock:*"
never combine into "may XADD to stock:*". Commands without keys (PING, EVALSHA with no KEYS) are
granted at the root. Scripts need no grant of their own beyond EVALSHA: Redis checks every
command a script runs, on every key it touches, against the calling user.

Checks ask the server (ACL DRYRUN) whether a user may run a sample command: one sample per granted
command and key pattern ("needs"), and any number of samples that must be refused ("refuses").
The same samples serve `choreo acl check` and a worker's check at start, so a worker whose user
lacks one permission refuses to start, naming it, instead of half-applying a commit later.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

from choreo.bus.contract import BusError, PermissionsMissing
from choreo.bus.redis_streams import RedisStreamsBus, translated_errors

SAMPLE_KEY = "acl-check"            # stands for the `*` of a key pattern in a sample command

# How to exercise each command on one key ({key}, {group}: the role's user) for ACL DRYRUN.
SAMPLES = {
    "xadd": "XADD {key} * f v", "xreadgroup": "XREADGROUP GROUP {group} c STREAMS {key} >",
    "xread": "XREAD STREAMS {key} 0-0",
    "xack": "XACK {key} {group} 0-1", "xautoclaim": "XAUTOCLAIM {key} {group} c 0 0-0",
    "xclaim": "XCLAIM {key} {group} c 0 0-1", "xpending": "XPENDING {key} {group}",
    "xgroup|create": "XGROUP CREATE {key} {group} 0 MKSTREAM",
    "xgroup|delconsumer": "XGROUP DELCONSUMER {key} {group} c",
    "xgroup|destroy": "XGROUP DESTROY {key} {group}", "xgroup|setid": "XGROUP SETID {key} {group} 0",
    "xinfo|consumers": "XINFO CONSUMERS {key} {group}", "xinfo|groups": "XINFO GROUPS {key}",
    "xinfo|stream": "XINFO STREAM {key}", "xrange": "XRANGE {key} - +",
    "xrevrange": "XREVRANGE {key} + -", "xtrim": "XTRIM {key} MINID 0-0", "xlen": "XLEN {key}",
    "hset": "HSET {key} f v", "hdel": "HDEL {key} f", "hincrby": "HINCRBY {key} f 1", "hget": "HGET {key} f",
    "hgetall": "HGETALL {key}", "hmget": "HMGET {key} f", "rpush": "RPUSH {key} v",
    "lrange": "LRANGE {key} 0 -1", "zadd": "ZADD {key} 1 m", "zrem": "ZREM {key} m",
    "zrange": "ZRANGE {key} 0 -1", "zrangebyscore": "ZRANGEBYSCORE {key} -inf +inf", "zrevrange": "ZREVRANGE {key} 0 -1",
    "zscore": "ZSCORE {key} m", "zremrangebyscore": "ZREMRANGEBYSCORE {key} -inf 0", "sadd": "SADD {key} m",
    "set": "SET {key} 1 EX 1", "get": "GET {key}", "pexpire": "PEXPIRE {key} 1000", "pttl": "PTTL {key}", "del": "DEL {key}", "expire": "EXPIRE {key} 1", "exists": "EXISTS {key}", "type": "TYPE {key}",
    "incrby": "INCRBY {key} 1", "scan": "SCAN 0 MATCH {key}", "randomkey": "RANDOMKEY", "dbsize": "DBSIZE",
    "ping": "PING", "time": "TIME", "info": "INFO server", "multi": "MULTI", "exec": "EXEC", "wait": "WAIT 0 0",
    "evalsha": "EVALSHA " + "0" * 40 + " 1 {key}", "script|load": "SCRIPT LOAD return",
    "acl|dryrun": "ACL DRYRUN default PING", "acl|whoami": "ACL WHOAMI",
    "cluster|nodes": "CLUSTER NODES",
    "flushall": "FLUSHALL", "config|set": "CONFIG SET maxmemory 0", "keys": "KEYS *",
    "script|flush": "SCRIPT FLUSH", "function|flush": "FUNCTION FLUSH", "move": "MOVE {key} 1",
}


def sample(command: str, key: str = "", group: str = "") -> tuple[str, ...]:
    return tuple(SAMPLES[command].format(key=key.replace("*", SAMPLE_KEY), group=group).split())


@dataclass(frozen=True)
class Grant:
    """One selector: these commands (ACL names, `xgroup|create` for a subcommand) on these keys."""
    commands: tuple[str, ...]
    keys: tuple[str, ...]
    read_only: bool = False         # %R~: the keys may be read, never written
    # Asked of the server by `choreo acl check` and at a process's start. False: granted for one
    # command's sake (place-order --order-id), which says so itself if refused, so that users
    # rendered before it was granted still run everything else.
    checked: bool = True

    def rule(self) -> str:
        mark = "%R~" if self.read_only else "~"
        return "(" + " ".join([*("+" + c for c in self.commands), *(mark + k for k in self.keys)]) + ")"


@dataclass(frozen=True)
class Role:
    user: str
    what: str                                   # one line for people reading the rules
    grants: tuple[Grant, ...] = ()
    # Root permissions: ACL tokens as written (`+ping`, `+@read`, `-@dangerous`, `~*`, `&rq:*`).
    root: tuple[str, ...] = ()
    needs: tuple[tuple[str, ...], ...] = ()     # samples beyond those the grants imply
    refuses: tuple[tuple[str, ...], ...] = ()   # samples that must be refused

    def needed(self) -> list[tuple[str, ...]]:
        """A sample for every granted command on every granted key pattern, then `needs`."""
        found = [sample(c, k, self.user) for g in self.grants if g.checked for c in g.commands for k in g.keys]
        found += [sample(t[1:]) for t in self.root if t[1:] in SAMPLES and t.startswith("+")
                  and "{key}" not in SAMPLES[t[1:]]]
        return list(dict.fromkeys([*found, *self.needs]))


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def render(roles: Iterable[Role], passwords: dict[str, str]) -> str:
    """An ACL file (redis-server --aclfile, or ACL LOAD): one `user` line per role, passwords only
    as SHA-256 (#...), and `default` off. ACL files take no comments: `choreo acl render` is the
    source, so render again rather than editing the file."""
    lines = ["user default off resetkeys resetchannels -@all"]
    for role in roles:
        lines.append(" ".join(["user", role.user, "reset", "on", "#" + password_hash(passwords[role.user]),
                               "resetchannels", "-@all", *role.root, *(g.rule() for g in role.grants)]))
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Verdict:
    user: str
    command: tuple[str, ...]
    expected: bool                  # allowed?
    allowed: bool
    reason: str = ""                # the server's words when refused

    @property
    def ok(self) -> bool:
        return self.expected == self.allowed


def check(bus: RedisStreamsBus, roles: Iterable[Role], refusals: bool = True) -> list[Verdict]:
    """Ask the server (ACL DRYRUN: nothing is executed) about every sample, in one round trip."""
    wanted = [(role.user, command, expected) for role in roles
              for command, expected in [*((c, True) for c in role.needed()),
                                        *((c, False) for c in (role.refuses if refusals else ()))]]
    with translated_errors():
        pipe = bus.client.pipeline(transaction=False)
        for user, command, _ in wanted:
            pipe.execute_command("ACL", "DRYRUN", user, *command)
        answers = pipe.execute()
    return [Verdict(user, command, expected, answer == "OK", "" if answer == "OK" else str(answer))
            for (user, command, expected), answer in zip(wanted, answers)]


def whoami(bus: RedisStreamsBus) -> str | None:
    """The user this client is authenticated as; None where the server has no ACLs to ask."""
    try:
        with translated_errors():
            return bus.client.execute_command("ACL", "WHOAMI")
    except BusError as exc:
        if "unknown" in str(exc).lower():
            return None             # an embedded or pre-6 server: no ACLs, nothing to check
        raise


WAIT_SAMPLE = ("WAIT", "0", "0")


def require_wait(bus: RedisStreamsBus, command: str) -> None:
    """For a command that commits without require() of its role (place-order, load): when it
    waits for replicas, require() the WAIT its commits need, before it writes anything: a WAIT
    refused after a commit leaves the commit standing and the command reporting failure."""
    if bus.wait_replicas:
        require(bus, Role(command, f"{command}, waiting for replicas after each commit"))


def require(bus: RedisStreamsBus, role: Role) -> None:
    """Raise PermissionsMissing naming every command `role` needs that this client's user may
    not run. A server without ACLs (the embedded one) has nothing to refuse."""
    user = whoami(bus)
    if user is None:
        return
    # WAIT only where this process waits for replicas (CHOREO_WAIT_REPLICAS): users rendered
    # before `+wait` was granted still start without it. (`choreo acl check` asks it of all.)
    root = role.root if bus.wait_replicas else tuple(t for t in role.root if t != "+wait")
    needs = (*role.needs, *((WAIT_SAMPLE,) if bus.wait_replicas else ()))
    try:
        missing = [v for v in check(bus, [Role(user, role.what, role.grants, root, needs)],
                                    refusals=False) if not v.ok]
    except PermissionsMissing as exc:
        raise PermissionsMissing(f"user {user!r} cannot check its permissions ({exc}); grant it "
                                 f"+acl|dryrun, as `choreo acl render` does") from None
    except BusError as exc:
        if "unknown" in str(exc).lower():
            return                  # Redis < 7 has no ACL DRYRUN: nothing to ask
        raise                       # unreachable and the like: the caller's loop retries
    if missing:
        shown = "; ".join(f"{' '.join(v.command)}: {v.reason}" for v in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise PermissionsMissing(f"user {user!r} lacks {len(missing)} permission(s) the "
                                 f"{role.user} role needs: {shown}{more}")



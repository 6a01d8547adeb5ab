"""Argument types for the `choreo` command: each checks one value and says what is wrong in one
line (argparse reports it; the command exits 2)."""

from __future__ import annotations

import argparse
import re

from bus.envelope import ORDER_ID
from config.catalogue import CATALOGUE


class UsageError(Exception):
    """Bad arguments: one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def positive(text: str) -> int:
    return _whole(text, 1)


def count(text: str) -> int:
    return _whole(text, 0)


def product(text: str) -> int:
    pid = positive(text)
    if pid not in CATALOGUE:
        known = ", ".join(str(p) for p in CATALOGUE)
        raise argparse.ArgumentTypeError(f"unknown product {pid} (catalogue: {known})")
    return pid


def order_id(text: str) -> str:
    # Ids go into key names and rq job ids (which may not contain ':').
    if not ORDER_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"order ids are 1-64 of A-Z a-z 0-9 _ . -, got {text!r}")
    return text


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def entry_id(text: str) -> str:
    """A stream entry id, `<ms>-<seq>`: checked here so Redis never sees a malformed one."""
    if not re.fullmatch(r"\d+-\d+", text.rpartition("/")[2]):
        raise argparse.ArgumentTypeError(f"expected an entry id like 1700000000000-0, got {text!r}")
    return text


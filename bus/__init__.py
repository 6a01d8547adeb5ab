"""The thin adapter over Redis Streams. It knows events and entries, never orders.

contract.py says what the bus promises; redis_streams.py keeps those promises over redis-py;
envelope.py is the wire format; keys.py names every key; inspect.py reads state for humans.
"""

from choreo.bus.connect import open_bus, redact
from choreo.bus.contract import (Bus, BusError, BusUnavailable, Commit, Delivery, GroupMissing,
                          Outcome, PermissionsMissing)
from choreo.bus.envelope import Envelope, MalformedEntry

__all__ = ["Bus", "BusError", "BusUnavailable", "Commit", "Delivery", "Envelope", "GroupMissing",
           "MalformedEntry", "Outcome", "PermissionsMissing", "open_bus", "redact"]

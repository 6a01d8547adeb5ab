"""A two-service app that is not the order saga: what a user declares in their own module."""

from msgspec import Struct

from choreo.workers.app import App
from choreo.workers.service import On, Service, confirm


class Ping(Struct):
    n: int


class Pong(Struct):
    n: int


def answer(event, uow) -> None:
    uow.set(f"pong:{event.order_id}", n=event.data["n"])
    uow.emit("Pong", n=event.data["n"])


PINGER = Service("pinger", "Pinger", consumes={"Pong": On(confirm, "Pong {order_id} back")},
                 emits=(), creates={"Ping": "Ping {order_id}"})
PONGER = Service("ponger", "Ponger", consumes={"Ping": On(answer, "Ping {order_id} answered")},
                 emits=("Pong",), owns=("pong:*",))

def pongs_are_numbers(bus) -> list[str]:
    """This app's own invariant, checked by `choreo audit --app tests.apps.ping:app`."""
    return [f"{key}: n={n!r} is not a number" for key in bus.client.scan_iter(match="pong:*")
            if not (n := bus.client.hget(key, "n") or "").lstrip("-").isdigit()]


app = App("ping", services=[PINGER, PONGER], events={"Ping": Ping, "Pong": Pong},
          audit=pongs_are_numbers)

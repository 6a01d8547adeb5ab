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

app = App("ping", services=[PINGER, PONGER], events={"Ping": Ping, "Pong": Pong})

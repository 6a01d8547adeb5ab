"""A one-service app whose handler kills its own process for one instance (POISON_ID): an entry
that never raises and is never committed, as a segfaulting library would make it."""

import os
import signal

from msgspec import Struct

from choreo.workers.app import App
from choreo.workers.service import On, Service


class Go(Struct):
    pass


def go(event, uow) -> None:
    if event.order_id == os.environ.get("POISON_ID"):
        os.kill(os.getpid(), signal.SIGKILL)
    uow.set(f"went:{event.order_id}", done="1")


GOER = Service("goer", "Goer", consumes={"Go": On(go, "Go {order_id}")}, emits=(),
               creates={"Go": "Go {order_id}"}, owns=("went:*",))

app = App("poison", services=[GOER], events={"Go": Go})

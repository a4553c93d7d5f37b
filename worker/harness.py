"""An in-process worker for fast tests: the real deliver path, lifecycle and store.

The model is Dramatiq's stub broker + worker and FastStream's test broker, without
stand-ins: messages are sent with a real ``Client``, published to the real broker of
the settings (the embedded one by default) and stored in the real store; ``run``
takes the tasks from the served inboxes and delivers each in this process, through
the same ``run_delivery`` the Celery task calls. Only Celery's own machinery is left
out: a retry's countdown is kept here (and waited for) instead of being republished
with an ETA (a task published with an ETA waits for it here too), and a store outage
is raised, not retried.

    with Harness(Settings(home=tmp_path)) as h:
        h.serve("writer")                       # its @agent module imported already
        sent = h.client.send("writer", {"topic": "x"}, sender="test")
        h.run()                                 # until nothing is due
        assert h.client.status(sent.message_id).status == "delivered"
"""

from __future__ import annotations

import heapq
import itertools
import time
from datetime import datetime
from typing import Any, Self

from messaging.client import Client
from wire.app import create_app
from wire.queues import DELIVER_TASK, inbox_name, inbox_queue
from wire.settings import Settings
from worker import completions
from worker.deliver import DeliveryOutcome, run_delivery
from worker.signals import register_served_agents
from worker.sweeper import SweepReport, sweep

__all__ = ["Harness"]


class Harness:
    """A worker and a client in one process, for tests that run in milliseconds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.client = Client(settings, app=self.app)
        self.outcomes: list[DeliveryOutcome] = []
        self._served: list[str] = []
        # Retries waiting for their countdown: (due, order, envelope).
        self._later: list[tuple[float, int, Any]] = []
        self._order = itertools.count()

    def serve(self, *agents: str) -> list[str]:
        """Register these agents as a worker consuming their inboxes would."""
        queues = {inbox_name(agent, self.settings) for agent in agents}
        self._served = register_served_agents(self.app, queues)
        return self._served

    def run(self, *, timeout_s: float = 10.0) -> list[DeliveryOutcome]:
        """Deliver every waiting task, and every retry once due, until none is left.

        Returns the outcomes of this call, in order.

        Raises:
            TimeoutError: work was still due after ``timeout_s``.
        """
        start = len(self.outcomes)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._take_from_inboxes():
                continue
            if not self._later:
                return self.outcomes[start:]
            due, _, envelope = self._later[0]
            wait = due - time.monotonic()
            if time.monotonic() + max(wait, 0) > deadline:
                raise TimeoutError(f"harness: work still due after {timeout_s} s")
            if wait > 0:
                time.sleep(wait)
            heapq.heappop(self._later)
            self._deliver(envelope)

    def sweep(self) -> SweepReport:
        """One sweep, as beat would run it."""
        return sweep(self.app)

    def _take_from_inboxes(self) -> bool:
        self.client.flush()  # what was sent is on the broker before the inboxes are read
        took = False
        with self.app.connection_for_read() as conn:
            channel = conn.channel()
            for agent in self._served:
                queue = inbox_queue(agent, self.settings)(channel)
                while (message := queue.get(accept=["json"])) is not None:
                    took = True
                    if message.headers.get("task") == DELIVER_TASK:
                        args, _kwargs, _embed = message.decode()
                        self._deliver_at(message.headers.get("eta"), args[0])
                    message.ack()  # acks_late: after the delivery, as the worker does
        return took

    def _deliver_at(self, eta: str | None, envelope: Any) -> None:
        # A task with an ETA waits for it, as a Celery worker holds it until then.
        wait = 0.0 if eta is None else datetime.fromisoformat(eta).timestamp() - time.time()
        if wait > 0:
            heapq.heappush(self._later, (time.monotonic() + wait, next(self._order), envelope))
        else:
            self._deliver(envelope)

    def _deliver(self, envelope: Any) -> None:
        outcome = run_delivery(self.client, envelope)
        completions.flush()  # the store says what run() returns, as a worker's soon does
        self.outcomes.append(outcome)
        if outcome.kind == "retry":
            due = time.monotonic() + outcome.countdown_s
            heapq.heappush(self._later, (due, next(self._order), envelope))

    def close(self) -> None:
        """Release the client's broker connections."""
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

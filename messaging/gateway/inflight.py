"""Requests in flight per caller: one caller's flood cannot take every server thread.

The rate limit caps requests per second; a blocking invoke can last minutes, so a
caller within its rate could still hold every thread that answers others. Each caller
has at most ``AGENTPOST_GATEWAY_MAX_IN_FLIGHT`` requests in flight in a gateway process;
one more is answered 429 at once.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["InFlight"]


class InFlight:
    """Counts each caller's requests in flight in this process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    @contextmanager
    def slot(self, subject: str) -> Iterator[bool]:
        """Yields whether ``subject`` got a slot (it is released when the block ends)."""
        with self._lock:
            granted = self._counts[subject] < self.limit
            if granted:
                self._counts[subject] += 1
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    self._counts[subject] -= 1
                    if not self._counts[subject]:
                        del self._counts[subject]

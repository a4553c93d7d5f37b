"""Refusals audited per window, so that nobody can write audit rows without bound.

The first refusal of a kind (subject, action, outcome, agent, detail) in a window of
``AGENTPOST_AUDIT_WINDOW_S`` writes its row at once; the rest only count, and the
counts are added to that row's ``count`` when the window closes. At most
``AGENTPOST_AUDIT_REFUSAL_KINDS`` kinds get a row of their own per window; further
kinds (a caller varying the path, say) share one overflow row. Rows per window are
so bounded per gateway process, whatever the traffic.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine

import storage
from wire.boundary import store_errors
from wire.errors import StoreUnavailable
from wire.settings import Settings

__all__ = ["Refusals"]

log = logging.getLogger("agentpost.gateway")

_Kind = tuple[str, str, str, str | None, str | None]
_OVERFLOW: _Kind = ("*", "*", "denied", None, "refusals of kinds past this window's allowance")


@dataclass(slots=True)
class _Row:
    entry_id: int
    more: int = 0


@dataclass(slots=True)
class _Window:
    started: float
    rows: dict[_Kind, _Row] = field(default_factory=dict)


class Refusals:
    """``record(...)``: audit one refusal, as a new row or as one more on its kind's."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        # Held across the few inserts a window makes: they are bounded, and the
        # counting that waits behind them is a dictionary update.
        self._lock = threading.Lock()
        self._window = _Window(time.monotonic())
        self._timer: threading.Timer | None = None

    def record(
        self,
        subject: str,
        action: str,
        outcome: str,
        *,
        agent: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Raises ``StoreUnavailable`` if a row cannot be written."""
        kind: _Kind = (subject, action, outcome, agent, detail)
        with self._lock:
            if time.monotonic() - self._window.started >= self._settings.audit_window_s:
                self._close_window()
            rows = self._window.rows
            if kind not in rows and len(rows) >= self._settings.audit_refusal_kinds:
                kind = _OVERFLOW
            row = rows.get(kind)
            if row is not None:
                row.more += 1
                self._close_later()
                return
            entry = storage.AuditEntry(
                at=time.time(),
                subject=kind[0],
                action=kind[1],
                outcome=kind[2],
                agent=kind[3],
                detail=kind[4],
            )
            with store_errors(self._settings.database):
                rows[kind] = _Row(storage.record_audit(self._engine, entry))

    def flush(self) -> None:
        """Write the counts of the open window now (at shutdown)."""
        with self._lock:
            self._close_window()

    def _close_window(self) -> None:
        counts = {row.entry_id: row.more for row in self._window.rows.values() if row.more}
        self._window = _Window(time.monotonic())
        if counts:
            with store_errors(self._settings.database):
                storage.count_audited(self._engine, counts)

    def _close_later(self) -> None:
        # Counts waiting with no refusal to come after them are written by a timer.
        if self._timer is None or not self._timer.is_alive():
            left = self._settings.audit_window_s - (time.monotonic() - self._window.started)
            self._timer = threading.Timer(max(0.0, left) + 0.01, self._on_timer)
            self._timer.daemon = True
            self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            try:
                if time.monotonic() - self._window.started >= self._settings.audit_window_s:
                    self._close_window()
                elif any(row.more for row in self._window.rows.values()):
                    self._close_later()
            except StoreUnavailable as exc:  # the counts are lost; the rows stay
                log.error("audit counts not written: %s", exc)

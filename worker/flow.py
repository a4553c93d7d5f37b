"""Flow control of one delivery: the agent's circuit and rate limit before the claim,
its concurrency limit in the claim, and what the outcome does to the circuit.

A delivery that may not run now is *held*: its row's ``due_at`` moves to when it may
(nothing claimed, no attempt counted) and its task goes back to the broker with that
countdown, so it waits in the broker's schedule, not in a worker's pool slot, and
other agents on the same workers keep flowing. The shared state is the store's
(``storage/flow.py``); every worker of the deployment reads and writes the same rows.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import storage
from messaging.agents import AgentSpec
from messaging.sending import Sender
from wire.deadletter import alert, letter_of

__all__ = [
    "CIRCUIT_READ_S",
    "HOLD_S",
    "Admission",
    "admit",
    "busy",
    "failed",
    "jittered",
    "later",
    "release",
    "succeeded",
]

log = logging.getLogger("agentpost.flow")

# How long a delivery waits before it asks again when the agent runs its limit of
# handlers, or a probe of its circuit is running (jittered by half either way, so the
# waiting ones do not all come back at once).
HOLD_S = 1.0
# A process reads a closed circuit again at most this often (an open one every time,
# and every one right after a failure of its own): a circuit another worker opened
# holds this process's deliveries within that long.
CIRCUIT_READ_S = 1.0
# (store, agent) -> when this process last read the agent's circuit closed, no failures
_closed_at: dict[tuple[str, str], float] = {}


@dataclass(frozen=True, slots=True)
class Admission:
    """What the gate decided for one delivery."""

    hold_s: float = 0.0  # > 0: hold it this long
    reason: str | None = None
    slot: float | None = None  # the rate slot it took (kept on its row when it is held)
    probe: bool = False  # it runs as the probe of a half-open circuit
    clean: bool = True  # circuit closed with no failure counted: success changes nothing


def jittered(seconds: float) -> float:
    """``seconds``, give or take half."""
    return seconds * random.uniform(0.5, 1.5)


def admit(core: Sender, spec: AgentSpec, message_id: str | None, now: float) -> Admission:
    """May this delivery of ``spec``'s agent run now? Its concurrency limit is the
    claim's to check, and so is its rate limit when that is its only limit (the slot
    taken in the claim's own statement)."""
    engine = core.engine
    probe, clean = False, True
    key = (core.settings.database, spec.name)
    if spec.circuit_after is not None and not _known_closed(key):
        circuit = storage.circuit_of(engine, spec.name)
        if circuit is not None and circuit.state is None and not circuit.failures:
            _closed_at[key] = time.monotonic()
        if circuit is not None and circuit.state is not None:
            clean = False
            if circuit.until is not None and circuit.until > now:
                wait = circuit.until - now if circuit.state == "open" else jittered(HOLD_S)
                return Admission(wait + random.uniform(0, 0.2), f"circuit {circuit.state}")
            lease_s = core.settings.lease_s
            if not storage.take_probe(engine, spec.name, now=now, lease_s=lease_s):
                return Admission(jittered(HOLD_S), "circuit half-open: a probe is running")
            probe = True
            log.info("circuit of %s half-open: this delivery is its probe", spec.name)
        elif circuit is not None and circuit.failures:
            clean = False
    slot = None
    rate = spec.rate_per_s
    if rate is not None and spec.max_concurrency is not None:
        slot = storage.rate_slot(engine, message_id, spec.name, interval_s=1 / rate, now=now)
        if slot is not None and slot > now + storage.SLOT_EARLY_S:
            if probe:
                storage.release_probe(engine, spec.name, now=now)
            return Admission(slot - now, f"rate limit {spec.rate_limit}", slot=slot)
    return Admission(slot=slot, probe=probe, clean=clean)


def _known_closed(key: tuple[str, str]) -> bool:
    read_at = _closed_at.get(key)
    return read_at is not None and time.monotonic() - read_at < CIRCUIT_READ_S


def later(admission: Admission, slot: float, spec: AgentSpec, now: float) -> Admission:
    """The claim took the message a rate slot that is not yet: hold it until then."""
    return Admission(slot - now, f"rate limit {spec.rate_limit}", slot=slot, probe=admission.probe)


def busy(admission: Admission, running: int) -> Admission:
    """The claim found the agent at its concurrency limit: hold, keeping any rate slot."""
    reason = f"max_concurrency reached ({running} running)"
    return Admission(jittered(HOLD_S), reason, slot=admission.slot)


def release(core: Sender, spec: AgentSpec, admission: Admission, now: float) -> None:
    """The delivery did not run after all: a probe it took goes back."""
    if admission.probe:
        storage.release_probe(core.engine, spec.name, now=now)


def succeeded(core: Sender, spec: AgentSpec, admission: Admission) -> None:
    """A handler succeeded: its agent's failures in a row end, an open circuit closes."""
    if spec.circuit_after is None or admission.clean:
        return
    _closed_at.pop((core.settings.database, spec.name), None)
    if storage.circuit_ok(core.engine, spec.name):
        log.warning("circuit of %s closed: the probe succeeded", spec.name)


def failed(core: Sender, spec: AgentSpec, error: str, now: float) -> None:
    """A handler failed (an error or a time-out): one more in a row; at the threshold
    (or when the probe failed) the circuit opens and the alert hook is called."""
    after = spec.circuit_after
    if after is None:
        return
    _closed_at.pop((core.settings.database, spec.name), None)
    cooldown_s = spec.circuit_cooldown_s
    failures = storage.circuit_failed(
        core.engine, spec.name, after=after, cooldown_s=cooldown_s, now=now, error=error
    )
    if failures is None:
        return
    log.error(
        "circuit of %s open for %g s after %d failures in a row: %s",
        spec.name,
        cooldown_s,
        failures,
        error,
    )
    letter = letter_of(
        {"receiver": spec.name}, reason="circuit-open", error=error, attempts=failures
    )
    alert(core.settings, letter)

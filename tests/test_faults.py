"""The fault suite at scale (``bench/faults.py``): 2,000 messages through workers that are
SIGKILLed every few seconds, while its own Redis restarts empty twice and its own
PostgreSQL crashes once. It starts those servers itself on private ports, so it runs
where the real-server tests run (``AGENTPOST_TEST_REDIS_URL`` set) and skips elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

MESSAGES = 2000


@pytest.mark.timeout(600)
def test_two_thousand_messages_through_crashing_workers_and_servers(tmp_path: Path) -> None:
    if not os.environ.get("AGENTPOST_TEST_REDIS_URL"):
        pytest.skip("AGENTPOST_TEST_REDIS_URL is not set (the real-server tests are off)")
    report = tmp_path / "faults.json"
    # Each run gives up (and reports) after 150 s, well inside this test's own limit.
    command = ["bench/faults.py", "--messages", str(MESSAGES), "--timeout", "150"]
    run = subprocess.run(
        [sys.executable, *command, "--json", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=560,
        check=False,
    )
    said = f"{run.stdout}\n{run.stderr[-3000:]}"
    assert report.exists(), said
    calm, stormy = json.loads(report.read_text())["runs"]
    # The faults really happened
    assert stormy["kills"] >= 2, said
    assert (stormy["redis_restarts"], stormy["postgres_crashes"]) == (2, 1), said
    for result in (calm, stormy):
        # Every key one row, every message delivered, none dead
        assert (result["rows"], result["keys_with_many_rows"]) == (MESSAGES, 0), said
        assert (result["delivered"], result["dead"]) == (MESSAGES, 0), said
        # Exactly-once effects exactly once, at-least-once effects at least once
        assert result["exactly_once_effects"] == MESSAGES // 2, said
        assert result["exactly_once_not_once"] == 0, said
        assert result["at_least_once_missing"] == 0, said
        # The broker's peak is at most two tasks per message outstanding then
        assert result["peak_tasks"] <= 2 * result["outstanding_at_peak"], said
        assert result["failures"] == [], said
    assert run.returncode == 0, said

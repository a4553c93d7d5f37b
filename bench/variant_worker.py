"""``messaging.cli worker`` with some of agentpost's Celery settings changed, for pricing.

    BENCH_AGENTPOST_VARIANT=no-events python -m bench.variant_worker worker bench.agents -c 2

The core code is untouched: ``wire.app.create_app`` is wrapped in this process only,
and the benchmark's client builds its app through the same ``apply_variant``.
Variants (comma-separated):

* ``no-events``: ``worker_send_task_events`` and ``task_send_sent_event`` off (no
  task-sent/received/started/succeeded events on the broker; the default since task
  events became opt-in, kept for older comparisons).
* ``events``: both on, as ``AGENTPOST_TASK_EVENTS=true`` (compare with ``--raw-variant
  events``).
"""

from __future__ import annotations

import os
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "no-events": {"worker_send_task_events": False, "task_send_sent_event": False},
    "events": {"worker_send_task_events": True, "task_send_sent_event": True},
}


def parse_variant(value: str) -> tuple[str, ...]:
    """``"no-events"`` -> the variant names (checked)."""
    names = tuple(sorted({p.strip() for p in value.split(",") if p.strip()}))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown agentpost variant(s) {unknown}; use {sorted(VARIANTS)}")
    return names


def apply_variant(app: Any, names: tuple[str, ...]) -> Any:
    """Change ``app``'s configuration as the variants say."""
    for name in names:
        app.conf.update(VARIANTS[name])
    return app


def main() -> None:
    import messaging.cli  # noqa: PLC0415  (after the environment is read)
    import wire.app  # noqa: PLC0415

    names = parse_variant(os.environ.get("BENCH_AGENTPOST_VARIANT", ""))
    create_app = wire.app.create_app

    def create_variant_app(*args: Any, **kwargs: Any) -> Any:
        return apply_variant(create_app(*args, **kwargs), names)

    # The CLI's worker command imports create_app from wire.app when it runs.
    wire.app.create_app = create_variant_app  # type: ignore[assignment]
    messaging.cli.main()


if __name__ == "__main__":
    main()

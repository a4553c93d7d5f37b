#!/usr/bin/env bash
# The README's test command: builds its own virtualenv from PyPI, checks style and
# types, then runs the whole suite (real workers; Redis, RabbitMQ and PostgreSQL
# variants run when their AGENTPOST_TEST_* URLs are set, as .ci/run sets them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure_venv.sh "[dev]"  # installs only when pyproject.toml changed
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Tests mostly wait on worker processes: three at a time (each its own Redis db,
# PostgreSQL database and namespace) keeps the suite short on two cores.
exec .venv/bin/python -m pytest -n 3 "$@"

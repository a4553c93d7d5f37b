#!/usr/bin/env bash
# The README's demo command: installs agentpost into .venv, then runs the demo on
# the embedded default (filesystem broker + SQLite under ./.agentpost/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure_venv.sh        # installs only when pyproject.toml changed
exec .venv/bin/agentpost demo "$@"

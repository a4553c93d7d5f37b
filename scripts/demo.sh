#!/usr/bin/env bash
# The README's demo command: installs agentpost into .venv, then runs the demo on
# the embedded default (filesystem broker + SQLite under ./.agentpost/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/agentpost demo "$@"

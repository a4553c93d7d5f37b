#!/usr/bin/env bash
# Make .venv with agentpost installed (editable, with the extras in $1, e.g. "[dev]"),
# from the package index; skipped when .venv already holds this pyproject.toml's
# install with those extras (code changes need none: the install is editable).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
stamp=".venv/.agentpost-install"
base="$(python3 --version) $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ -x .venv/bin/python && -f "$stamp" ]]; then
  have="$(cat "$stamp")"
  # An install with the extras serves a plain one too.
  if [[ "$have" == "$base ${extras}" || ( -z "$extras" && "$have" == "$base "* ) ]]; then
    exit 0
  fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extras}"
echo "$base ${extras}" > "$stamp"

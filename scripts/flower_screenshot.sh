#!/usr/bin/env bash
# Regenerates docs/flower-dead-letter.png (and docs/flower-tasks.png): what an
# operator sees in Flower for a dead-lettered delivery. Self-contained: it starts
# its own Flower and worker against a private Redis db + throwaway SQLite store,
# so it never touches anyone's data, and stops/cleans everything on exit.
# Usage: scripts/flower_screenshot.sh   (env: VENV, REDIS_DB, PORT to override)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
REDIS_DB=${REDIS_DB:-13}
PORT=${PORT:-5599}
URL="http://127.0.0.1:$PORT"

if [[ ! -x /usr/bin/chromium ]]; then
  # Debian's package: no snap/flatpak wrapper, works headless as root with --no-sandbox.
  apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }
fi

[[ -x "$VENV/bin/agentpost" ]] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q -e .; }
TMP=$(mktemp -d)
export AGENTPOST_HOME="$TMP/home"           # the default SQLite store lives here
export AGENTPOST_TEST_SPOOL="$TMP/spool"    # tests.agents logs each handler run here
export AGENTPOST_BROKER_URL="redis://127.0.0.1:6379/$REDIS_DB"
export AGENTPOST_NAMESPACE="shot$$."        # unique queue prefix: no clash with other runs or tests
# The test suite's fast timings, so doomed dead-letters in about a second, not minutes.
export AGENTPOST_LEASE_S=4 AGENTPOST_SWEEP_INTERVAL_S=1 AGENTPOST_REDELIVER_AFTER_S=2 \
  AGENTPOST_BACKOFF_S=0.05 AGENTPOST_BACKOFF_MAX_S=0.2
export PYTHONPATH=.                          # the worker imports tests.agents
unset AGENTPOST_DATABASE_URL AGENTPOST_RESULT_BACKEND AGENTPOST_FLOWER_BASIC_AUTH
mkdir -p "$AGENTPOST_TEST_SPOOL" docs

PIDS=()
cleanup() {
  # Each child leads its own process group (setsid), so this reaches Celery's pool too.
  # TERM the main process (a warm shutdown, as an operator would), KILL stragglers.
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  # Only keys this run created: namespaced queues, failure results, and Celery's
  # un-namespaced event/pidbox bindings (unless they were there before).
  redis-cli -n "$REDIS_DB" --scan | sort | comm -13 "$TMP/keys-before" - \
    | xargs -r -d '\n' redis-cli -n "$REDIS_DB" del >/dev/null || true
  rm -rf "$TMP"
}
redis-cli -n "$REDIS_DB" --scan | sort >"$TMP/keys-before"
trap cleanup EXIT

# Flower first: it only shows the events it receives while running.
setsid "$VENV/bin/agentpost" flower --port "$PORT" --unauthenticated >"$TMP/flower.log" 2>&1 &
PIDS+=($!)
# No --beat: dead-lettering happens in the task itself, and sweep tasks would clutter /tasks.
setsid "$VENV/bin/agentpost" worker tests.agents --agents doomed,flaky --concurrency 1 \
  >"$TMP/worker.log" 2>&1 &
PIDS+=($!)

# Wait for both processes, send one doomed and one flaky message, and wait until
# Flower has the final states; prints the two message ids (doomed first).
TASK_IDS=$("$VENV/bin/python" - "$URL" <<'EOF' || { tail -n 30 "$TMP"/*.log >&2; exit 1; }
import sys, time, httpx, storage
from messaging import Client, Settings

url = sys.argv[1]
def wait(cond, what, timeout=90):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if value := cond():
                return value
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")

wait(lambda: httpx.get(f"{url}/api/workers", timeout=2).status_code == 200, "Flower")
wait(lambda: storage.list_agents(storage.engine_for(Settings().database)), "the worker")
client = Client()
dead = client.send("doomed", {"order": 7}, sender="tester").message_id
flaky = client.send("flaky", {"succeed_on": 3}, sender="tester").message_id
def done():
    tasks = httpx.get(f"{url}/api/tasks", timeout=5).json()
    return tasks.get(dead, {}).get("state") == "FAILURE" and tasks.get(flaky, {}).get("state") == "SUCCESS"
wait(done, "Flower to show the doomed FAILURE and the flaky SUCCESS")
print(dead, flaky)
EOF
)
DEAD=${TASK_IDS%% *}

shot() {  # virtual-time-budget lets page JS (DataTables' XHR) finish before capture
  /usr/bin/chromium --headless=new --no-sandbox --disable-gpu --disable-background-networking \
    --disable-dev-shm-usage --hide-scrollbars --window-size="$3" \
    --virtual-time-budget=5000 --screenshot="$1" "$2" 2>/dev/null
}
# The detail page is tall: at 900 px the exception and traceback fall below the fold.
shot docs/flower-dead-letter.png "$URL/task/$DEAD" 1400,1660
shot docs/flower-tasks.png "$URL/tasks" 1400,900
echo "wrote docs/flower-dead-letter.png (task $DEAD) and docs/flower-tasks.png"

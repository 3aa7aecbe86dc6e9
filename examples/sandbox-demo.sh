#!/usr/bin/env bash
# The sandbox demo of docs/getting-started.md: the example event stream delivered to a local Outreach
# sandbox, end to end, with no credentials and no network.
#
#   examples/sandbox-demo.sh
#
# Starts `signal-engine sandbox outreach` on port 8765 (the port
# examples/sandbox-settings.yaml points at), runs the stream through
# outreach/lead-capture with a fresh state directory, prints what the
# sandbox now holds, stops the sandbox and exits with the run's status.
set -euo pipefail

cd "$(dirname "$0")/.."
PORT=8765

if command -v signal-engine >/dev/null 2>&1; then
    ENGINE=(signal-engine)
elif [ -x .venv/bin/signal-engine ]; then
    ENGINE=(.venv/bin/signal-engine)
else
    echo "sandbox-demo: signal-engine not found; install the project (pip install -e .) or create .venv" >&2
    exit 127
fi
# The summary below needs only the standard library; prefer the project's interpreter.
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi

STATE_DIR="$(mktemp -d)"
SANDBOX_LOG="$STATE_DIR/sandbox.log"
SANDBOX_PID=""
cleanup() {
    if [ -n "$SANDBOX_PID" ]; then
        kill "$SANDBOX_PID" 2>/dev/null || true
        wait "$SANDBOX_PID" 2>/dev/null || true
    fi
    rm -rf "$STATE_DIR"  # holds the rotated refresh token: do not leave it behind
}
trap cleanup EXIT

"${ENGINE[@]}" sandbox outreach --port "$PORT" >"$SANDBOX_LOG" 2>&1 &
SANDBOX_PID=$!

state_url="http://127.0.0.1:$PORT/_sandbox/state"
for _ in $(seq 1 100); do
    if ! kill -0 "$SANDBOX_PID" 2>/dev/null; then
        echo "sandbox-demo: the sandbox exited (is port $PORT in use?):" >&2
        cat "$SANDBOX_LOG" >&2
        SANDBOX_PID=""
        exit 1
    fi
    if "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "$state_url" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
"$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "$state_url" 2>/dev/null || {
    echo "sandbox-demo: the sandbox did not answer on port $PORT" >&2
    exit 1
}

status=0
"${ENGINE[@]}" run outreach/lead-capture \
    --events examples/lead-capture.ndjson \
    --settings examples/sandbox-settings.yaml \
    --state "$STATE_DIR/state" || status=$?

"$PYTHON" -c '
import json, sys, urllib.request
state = json.load(urllib.request.urlopen(sys.argv[1], timeout=5))
prospects, mints, statuses = state["prospects"], state["mints"], state["requests_by_status"]
print(f"sandbox: {len(prospects)} prospect(s), {mints} token mint(s), requests by status {statuses}")
for prospect in prospects:
    attributes = prospect["attributes"]
    print("  #{} {}  tags={}".format(prospect["id"], attributes["emails"][0], attributes.get("tags")))
' "$state_url" || echo "sandbox-demo: could not read the sandbox state" >&2

exit "$status"

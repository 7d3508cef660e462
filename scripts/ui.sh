#!/usr/bin/env bash
# Start the Dagster UI and the Manta explorer together over the same store; Ctrl-C stops both.
#
#   scripts/ui.sh            (what `make ui` runs; BIN, DAGSTER_PORT, EXPLORER_PORT override)
#
# Each links to the other: the explorer's judge links open Dagster at MANTA_DAGSTER_URL, and
# explorer links written into Dagster metadata use MANTA_EXPLORER_URL. Both URLs are also
# recorded in $DAGSTER_HOME/manta_ui.json, where a `dagster asset materialize` run from another
# shell finds the explorer this script started.
set -euo pipefail

BIN=${BIN:-.venv/bin}
DAGSTER_PORT=${DAGSTER_PORT:-3000}
EXPLORER_PORT=${EXPLORER_PORT:-8050}
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.dagster_home}
export MANTA_DAGSTER_URL=${MANTA_DAGSTER_URL:-http://127.0.0.1:$DAGSTER_PORT}
export MANTA_EXPLORER_URL=${MANTA_EXPLORER_URL:-http://127.0.0.1:$EXPLORER_PORT}
mkdir -p "$DAGSTER_HOME"
"$BIN/python" -c 'import json, os, sys
json.dump({"explorer": os.environ["MANTA_EXPLORER_URL"], "dagster": os.environ["MANTA_DAGSTER_URL"]},
          open(sys.argv[1], "w"))' "$DAGSTER_HOME/manta_ui.json"

"$BIN/manta" demo seed --if-empty
"$BIN/manta" dagster register-runs

pids=()
# Ctrl-C reaches both process groups' members from the terminal already; a second SIGINT would
# make them skip their clean shutdown. So: signal only when the terminal did not (one of the
# two exited, or SIGTERM), then give both 20 s to stop before SIGKILL.
stop() {
    local from_terminal=$1
    trap - INT TERM EXIT
    if [ "$from_terminal" != yes ]; then
        for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    fi
    for _ in $(seq 1 40); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && return 0
        sleep 0.5
    done
    for pid in "${pids[@]}"; do pkill -KILL -P "$pid" 2>/dev/null || true; kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'stop yes' INT
trap 'stop no' TERM EXIT

# Dagster's services log only warnings here (a sensor tick a minute would fill the terminal),
# and `dagster dev` does not print its own SupersessionWarning (pointing at `dg dev`, a CLI
# this project does not install).
PYTHONWARNINGS="ignore:Function \`dev_command\` is superseded" \
    "$BIN/dagster" dev -w workspace.yaml -h 127.0.0.1 -p "$DAGSTER_PORT" --log-level warning &
pids+=($!)
"$BIN/manta" explore --host 127.0.0.1 --port "$EXPLORER_PORT" &
pids+=($!)

echo
echo "  Dagster UI:     $MANTA_DAGSTER_URL"
echo "  Manta explorer: $MANTA_EXPLORER_URL"
echo "  (Ctrl-C stops both)"
echo
# Stop both as soon as either exits, so a failed start does not leave the other running.
wait -n

#!/usr/bin/env bash
# The experiment queue: sweeps run in order, each resumable (rerun this script to continue after an interruption).
# Run it from a worktree pinned to the commit whose code should produce the numbers, e.g.
#   git worktree add --detach ../smallvit-queue <commit> && cd ../smallvit-queue && nohup results/queue.sh &
# It uses the virtual environment given by $SMALLVIT_VENV (default .venv) with this worktree's own src/ first on the
# path, so edits in another checkout never leak into runs that start later.
set -u
cd "$(dirname "$0")/.."
venv="${SMALLVIT_VENV:-.venv}"
export PYTHONPATH="$PWD/src"
for sweep in "$@"; do
    echo "== $(date -u +%FT%TZ) $sweep at $(git rev-parse --short HEAD)"
    nice -n 10 "$venv/bin/python" -m smallvit.cli sweep "$sweep" || echo "== $sweep stopped with status $?"
done

#!/usr/bin/env bash
# The experiment queue: QUEUE_FILE lists sweeps to run in order, one per line as `SWEEP.yaml [smallvit sweep options]`
# (blank lines and # comments skipped); every sweep is resumable, so rerunning this script continues after an
# interruption. Run it from a worktree pinned to the commit whose code should produce the numbers, e.g.
#   git worktree add --detach ../smallvit-queue <commit> && cd ../smallvit-queue
#   OMP_NUM_THREADS=1 nohup results/queue.sh results/queues/a.txt > ../queue-a.log &
# It uses the virtual environment given by $SMALLVIT_VENV (default .venv) with this worktree's own src/ first on the
# path, so edits in another checkout never leak into runs that start later. Runs are niced.
set -u
cd "$(dirname "$0")/.."
queue_file="$1"
venv="${SMALLVIT_VENV:-.venv}"
export PYTHONPATH="$PWD/src"
while read -r line; do
    case "$line" in "" | "#"*) continue ;; esac
    echo "== $(date -u +%FT%TZ) $line at $(git rev-parse --short HEAD), ${OMP_NUM_THREADS:-all} thread(s)"
    # shellcheck disable=SC2086  # the line is a sweep file and its options, split on spaces on purpose
    nice -n 10 "$venv/bin/python" -m smallvit.cli sweep $line || echo "== stopped with status $?"
done < "$queue_file"

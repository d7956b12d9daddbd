#!/usr/bin/env bash
# Start the experiment queues on this machine, fresh or not: a worktree pinned to COMMIT (default HEAD) beside this
# checkout, imagenette-2040 prepared from ../shared/data when the archive is there, and results/queue.sh in the
# background on every queue file of that commit (results/queues/*.txt), the cores shared evenly between them (a
# lone queue gets them all), logs beside the worktree.
# Finished runs in the worktree are skipped and interrupted ones resume, so running it again after a stop continues;
# a queue still running is not started twice.
#   python3 -m venv .venv && .venv/bin/pip install -e ".[dev]"   # once per machine
#   results/start_queues.sh [COMMIT]
set -eu
cd "$(dirname "$0")/.."
venv="${SMALLVIT_VENV:-$PWD/.venv}"
commit=$(git rev-parse --short "${1:-HEAD}")
worktree="../smallvit-queue-$commit"
[ -d "$worktree" ] || git worktree add --detach "$worktree" "$commit"
archive=../shared/data/imagenette-2040.tar.gz
if [ -f "$archive" ]; then
    "$venv/bin/smallvit" prepare imagenette-2040 --source "$archive"
fi
queues=("$worktree"/results/queues/*.txt)
threads=$(( $(nproc) / ${#queues[@]} ))
(( threads > 0 )) || threads=1
for queue in "${queues[@]}"; do
    name=$(basename "$queue" .txt)
    if pgrep -f "queue.sh results/queues/$name.txt" > /dev/null; then
        echo "queue $name is already running: not started twice"
        continue
    fi
    (cd "$worktree" && OMP_NUM_THREADS=$threads SMALLVIT_VENV="$venv" nohup results/queue.sh "results/queues/$name.txt" \
        >> "../queue-$name.log" 2>&1 &)
    echo "queue $name started at $commit in $worktree on $threads thread(s), log ../queue-$name.log"
done

#!/usr/bin/env bash
# Start the experiment queues on this machine, fresh or not: a worktree pinned to COMMIT (default HEAD) beside this
# checkout, the development datasets prepared from ../shared/data where their archives are, and results/queue.sh in
# the background on every queue file of that commit (results/queues/*.txt), the cores shared evenly between them (a
# lone queue gets them all), logs beside the worktree.
# Finished runs in the worktree are skipped and interrupted ones resume, so running it again after a stop continues;
# a queue still running is not started twice. A new worktree first takes every sweep run folder that an older queue
# worktree (../smallvit-queue-*) holds and it lacks, whole, from the newest worktree that has it, so the queues go on
# where the old ones stopped.
#   python3 -m venv .venv && .venv/bin/pip install -e ".[dev]"   # once per machine
#   results/start_queues.sh [COMMIT]
set -eu
cd "$(dirname "$0")/.."
venv="${SMALLVIT_VENV:-$PWD/.venv}"
commit=$(git rev-parse --short "${1:-HEAD}")
worktree="../smallvit-queue-$commit"
if [ ! -d "$worktree" ]; then
    git worktree add --detach "$worktree" "$commit"
    # shellcheck disable=SC2012  # worktree names are ours: no odd characters
    for old in $(ls -dt ../smallvit-queue-*/runs/sweeps 2>/dev/null); do
        for run in "$old"/*/*/seed*; do
            target="$worktree/runs/sweeps/${run#"$old"/}"
            [ -d "$run" ] && [ ! -e "$target" ] && mkdir -p "$(dirname "$target")" && cp -a "$run" "$target"
        done
    done
fi
for name in imagenette-2040 caltech101-2020 eurosat-2040; do
    archive=../shared/data/$name.tar.gz
    if [ -f "$archive" ]; then
        "$venv/bin/smallvit" prepare "$name" --source "$archive"
    fi
done
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

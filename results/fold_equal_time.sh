#!/usr/bin/env bash
# Fold the equal-time protocol's finished runs from a queue worktree into the kept studies and their overview:
#   results/fold_equal_time.sh ../smallvit-queue-<commit>
# Each study results/equal-time-X gains the worktree's finished runs of runs/sweeps/equal-time-X (a run it already
# holds counts once) and is then regenerated from its own table, so that its header names no worktree. The baselines
# of cifar10-sample and imagenette-2040 are the kept cifar10-60ep and imagenette-40ep `weak` runs (docs/results.md).
# results/equal-time-overview then gets the table across the datasets (datasets.md) and the leave-one-dataset-out
# check over the equal-time rows (leave-one-out.md).
set -eu
cd "$(dirname "$0")/.."
worktree="$1"
smallvit="${SMALLVIT:-smallvit}"
order=(weak small-data-stem small-data relvit-joint conv-stem conv-tokenizer resnet18 small-data-equal-epochs)
studies=()
for pair in cifar10:cifar10-60ep imagenette:imagenette-40ep caltech101: eurosat:; do
    name=${pair%%:*} kept=${pair#*:}
    study=results/equal-time-$name runs=$worktree/runs/sweeps/equal-time-$name
    present=" weak "
    for summary in "$runs"/*/seed*/summary.json; do
        [ -f "$summary" ] && present+="$(basename "$(dirname "$(dirname "$summary")")") "
    done
    [ -f "$study/runs.csv" ] && present+="$(cut -d, -f1 "$study/runs.csv" | tail -n +2 | tr '\n' ' ')"
    rows=$(for row in "${order[@]}"; do [[ "$present" == *" $row "* ]] && echo "$row"; done | paste -sd,)
    sources=()
    [ -f "$study/runs.csv" ] && sources+=("$study")
    [ -n "$kept" ] && sources+=("results/$kept")
    [ -d "$runs" ] && sources+=("$runs")
    "$smallvit" compare "${sources[@]}" --rows "$rows" --output "$study" > /dev/null
    "$smallvit" compare "$study" --output "$study" > /dev/null
    studies+=("$study")
done
# the candidates: every equal-time row run so far (small-data-equal-epochs answers another question)
kept=" $(for study in "${studies[@]}"; do cut -d, -f1 "$study/runs.csv" | tail -n +2; done | tr '\n' ' ')"
candidates=$(for row in "${order[@]:0:7}"; do [[ "$kept" == *" $row "* ]] && echo "$row"; done | paste -sd,)
"$smallvit" compare "${studies[@]}" --by-dataset --output results/equal-time-overview > /dev/null
"$smallvit" compare "${studies[@]}" --leave-one-out --rows "$candidates" --output results/equal-time-overview \
    > /dev/null
echo "folded ${studies[*]}; wrote results/equal-time-overview/{datasets.md,leave-one-out.md}"

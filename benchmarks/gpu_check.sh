#!/usr/bin/env bash
# The prepared GPU check: one script of at most 8 minutes on one GPU, in five sections.
#
#   env        the machine: nvidia-smi, torch / CUDA / cuDNN, torchvision, timm, smallvit and its git commit, CPUs
#   tests      the tests marked `cuda` (tests/test_cuda.py): bf16 + fused AdamW training that resumes bit-identically,
#              evaluation equal to the CPU's, the batched augmentation on the device
#   data       cifar10-jpeg prepared with `smallvit prepare cifar10-jpeg --source ARCHIVE`, both splits decoded once
#   bench      smallvit's engine vs a hand-written timm loop fed by a torchvision DataLoader (PIL, 8 workers), images/s
#              at 32 px (vit_lite patch 4, 64 tokens) and 224 px (vit_lite patch 16, 196 tokens), interleaved
#              (benchmarks/bench_engine_vs_timm.py, appended to benchmarks/results.jsonl)
#   train      vit_lite with the `supervised` recipe on full CIFAR-10-JPEG for as many epochs as fit in 4 minutes
#              (estimated from a 1-epoch timing run on a subset): images/s, validation and test top-1
#
#   bash benchmarks/gpu_check.sh > gpu_check.log     # on a GPU machine; figures in runs/gpu-check-<date>/
#   bash benchmarks/gpu_check.sh --tiny              # the same on the CPU with tiny sizes, for CI
#
# Every section runs its commands under a time limit and fails soft: a section that fails or runs out of time is
# recorded so and the next one runs. Everything printed also goes to OUT/gpu_check.log, and each section's figures
# to OUT/results.jsonl, one JSON object per section: {"section", "status": ok|failed|timeout|skipped, "seconds", ...}.
# OUT also gets the training run's summary.json, metrics.jsonl and curves.png, and the lines the benchmarks appended
# to benchmarks/results.jsonl (benchmarks-results.jsonl), so they can be carried back from a borrowed machine.
#
# Options:
#   --out DIR          where the log and figures go (default runs/gpu-check-<date>-<time>); keep it small
#   --work DIR         scratch: run folders, the sample's private data root (default: a temporary folder, removed)
#   --archive PATH     cifar10-jpeg.tar.gz (default $CIFAR10_JPEG_ARCHIVE, else ../shared/data/ beside the repository,
#                      else shared/data/ inside it); without one, the bundled cifar10-sample stands in, under a
#                      private data root, and the figures say so
#   --budget S         seconds for the whole script (default 480; with --tiny 300)
#   --train-seconds S  the training run's wall-clock budget (default 240), less when earlier sections ran long
#   --tiny             CPU, tiny sizes, the bundled sample in a private data root
#   --only LIST        run only these sections (comma-separated, e.g. train or bench,train), to redo one that failed;
#                      a later section needs cifar10-jpeg prepared, as the data section leaves it
# Environment: PYTHON (default python3), run with the checkout's src/ first on PYTHONPATH; SMALLVIT_DATA and
# SMALLVIT_CACHE (data root and decoded cache, as for smallvit itself); SMALLVIT_GIT_COMMIT (reported when the
# checkout has no .git).

set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TINY=0
OUT_DIR=""
WORK=""
ARCHIVE="${CIFAR10_JPEG_ARCHIVE:-}"
BUDGET=""
TRAIN_SECONDS=""
ONLY="env,tests,data,bench,train"
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) TINY=1 ;;
        --out) OUT_DIR="${2:?--out needs a folder}"; shift ;;
        --work) WORK="${2:?--work needs a folder}"; shift ;;
        --archive) ARCHIVE="${2:?--archive needs a path}"; shift ;;
        --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
        --train-seconds) TRAIN_SECONDS="${2:?--train-seconds needs seconds}"; shift ;;
        --only) ONLY="${2:?--only needs a list of sections}"; shift ;;
        -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$REPO" || exit 2
OUT_DIR="${OUT_DIR:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
KEEP_WORK=1
if [ -z "$WORK" ]; then
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/smallvit-gpu-check.XXXXXX")" || exit 2
    KEEP_WORK=0
fi
mkdir -p "$WORK" || exit 2
WORK="$(cd "$WORK" && pwd)"
LOG="$OUT_DIR/gpu_check.log"
RESULTS="$OUT_DIR/results.jsonl"
: >"$LOG"
: >"$RESULTS"

PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export MPLBACKEND=Agg
SV=("$PY" -m smallvit.cli)

if [ "$TINY" = 1 ]; then
    MODE="tiny (CPU, tiny sizes)"
    DEVICE=cpu
    # one thread per process: on a busy machine, spinning OpenMP threads made tiny steps 5-10 times slower
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    BUDGET="${BUDGET:-300}"
    TRAIN_SECONDS="${TRAIN_SECONDS:-60}"
    BENCH_ARGS=(--steps 2 --warmup 1 --repeats 2 --batch-size 4 --workers 2 --override model.overrides.depth=1)
    TRAIN_ARGS=(data.subset.per_class=4 data.eval_subset.per_class=2 model.overrides.depth=1 batch_size=8
        train.log_every=1 device=cpu)
    TIMING_ARGS=()
    MAX_EPOCHS=1
    BENCH_RESULTS="$WORK/bench-results.jsonl"
else
    MODE="full"
    DEVICE=cuda
    BUDGET="${BUDGET:-480}"
    TRAIN_SECONDS="${TRAIN_SECONDS:-240}"
    BENCH_ARGS=(--steps 100 --warmup 30 --repeats 3 --batch-size 128 --workers 8)
    TRAIN_ARGS=()
    TIMING_ARGS=(data.subset.total=7680)  # 60 steps of 128
    MAX_EPOCHS=1000
    BENCH_RESULTS="$REPO/benchmarks/results.jsonl"
fi
START=$(date +%s)
DEADLINE=$((START + BUDGET))
TRAIN_RESERVE=$((TRAIN_SECONDS < 150 ? TRAIN_SECONDS : 150))  # kept for `train` when earlier sections run long

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# cpu_now: CPU_NOW = CPU seconds (user + system) used so far by the processes this shell waited for. Wall time on a
# shared machine says little; CPU time says what a section costs. (`times` must run in this shell, not a subshell.)
cpu_now() {
    times >"$WORK/times"
    CPU_NOW=$(tail -n 1 "$WORK/times" |
        awk '{ split($1, u, "m"); split($2, s, "m"); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }')
}

# limited CMD...: run CMD under the current section's time limit (SIGTERM, then SIGKILL 10 s later).
limited() {
    local left=$((SECTION_END - $(date +%s)))
    if [ "$left" -le 0 ]; then
        echo "(no time left in this section for: $*)"
        return 124
    fi
    if command -v timeout >/dev/null; then
        timeout -k 10 "$left" "$@"
    else
        "$@"
    fi
}

# section NAME CAP FUNCTION: run FUNCTION (which may write its figures as a JSON object to $FIG) with at most CAP
# seconds, fewer when the script's deadline is near; append one line to results.jsonl.
section() {
    local name=$1 cap=$2 fn=$3 reserve=$TRAIN_RESERVE
    case ",$ONLY," in *",$name,"*) ;; *) return 0 ;; esac
    case ",$ONLY," in *",train,"*) [ "$name" = train ] && reserve=0 ;; *) reserve=0 ;; esac
    local left=$((DEADLINE - $(date +%s) - reserve))
    local limit=$((cap < left ? cap : left))
    FIG="$WORK/figures-$name.json"
    rm -f "$FIG"
    echo
    echo "=============== $name (limit ${limit} s, $(($(date +%s) - START)) s into the check) ==============="
    local t0 cpu0 rc status
    t0=$(now_ms)
    cpu_now
    cpu0=$CPU_NOW
    if [ "$limit" -lt 5 ]; then
        echo "skipped: the check's ${BUDGET} s budget is spent"
        printf '{"status": "skipped", "reason": "budget spent"}' >"$FIG"
        rc=0
    else
        SECTION_END=$(($(date +%s) + limit))
        "$fn"
        rc=$?
    fi
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    cpu_now
    "$PY" - "$RESULTS" "$FIG" "$name" "$status" "$rc" "$(($(now_ms) - t0))" "$cpu0" "$CPU_NOW" <<'EOF'
import json, sys

results, fig, name, status, rc, ms, cpu0, cpu1 = sys.argv[1:]
entry = {"section": name, "status": status, "rc": int(rc), "seconds": round(int(ms) / 1000, 1)}
entry["cpu_seconds"] = round(float(cpu1) - float(cpu0), 1)
try:
    with open(fig) as f:
        figures = json.load(f)
    if status != "ok":
        figures.pop("status", None)  # a failure is not overwritten by what the section wrote before it failed
    entry.update(figures)
except FileNotFoundError:
    pass
except ValueError as err:
    entry["figures_error"] = str(err)
with open(results, "a") as f:
    f.write(json.dumps(entry) + "\n")
print(f"--> {name}: {entry['status']} in {entry['seconds']} s ({entry['cpu_seconds']} CPU seconds)")
EOF
}

# ---------------------------------------------------------------------------------------------------------------
env_section() {
    echo "mode: $MODE   date: $(date -u +%Y-%m-%dT%H:%M:%SZ)   host: $(hostname)   python: $PY"
    if command -v nvidia-smi >/dev/null; then
        limited nvidia-smi
    else
        echo "nvidia-smi: not found"
    fi
    echo "nproc: $(nproc 2>/dev/null)"
    df -h /dev/shm 2>/dev/null | tail -n 1 | awk '{print "/dev/shm: " $2 " (DataLoader workers pass batches here)"}'
    local commit=""
    if commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null); then
        [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit+dirty"
    else
        commit="${SMALLVIT_GIT_COMMIT:-unknown (no .git; set SMALLVIT_GIT_COMMIT)}"
    fi
    limited "$PY" - "$FIG" "$commit" <<'EOF'
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys

fig, commit = sys.argv[1:]
info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count()}
info["cpus_usable"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
try:
    info["cpu_model"] = next(
        line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
    )
except (OSError, StopIteration):
    info["cpu_model"] = platform.processor()
for package in ("torch", "torchvision", "timm", "numpy", "pillow", "pydantic", "safetensors", "pytest"):
    try:
        info[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        info[package] = None
needed = "torch torchvision timm safetensors numpy PIL scipy yaml pydantic typer rich tensorboard matplotlib pytest"
info["missing_modules"] = [m for m in needed.split() if importlib.util.find_spec(m) is None]
import smallvit  # noqa: E402  (the checkout's, through PYTHONPATH)
import torch  # noqa: E402

info.update(smallvit=smallvit.__version__, smallvit_path=os.path.dirname(smallvit.__file__), git_commit=commit)
info.update(torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), torch_threads=torch.get_num_threads())
info["cuda_available"] = torch.cuda.is_available()
info["gpu_count"] = torch.cuda.device_count()
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    info.update(gpu_sms=props.multi_processor_count)
    info.update(gpu_capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    info["bf16_supported"] = torch.cuda.is_bf16_supported()
for key, value in info.items():
    print(f"{key:>16}: {value}")
if info["missing_modules"]:
    print(f"WARNING: cannot import {', '.join(info['missing_modules'])}: the sections that need them will fail")
with open(fig, "w") as f:
    json.dump(info, f)
EOF
}

tests_section() {
    # Only the files that mark tests `cuda` are collected, without third-party plugins (faster than collecting the
    # whole suite); `-m cuda` replaces pyproject's default `-m 'not slow and not fuzz'`. Deterministic cuBLAS for the
    # bit-identical resume.
    local files
    mapfile -t files < <(grep -rl "mark.cuda" tests --include='*.py' | sort)
    [ "${#files[@]}" -gt 0 ] || files=(tests)
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 \
        limited "$PY" -m pytest -m cuda -v -rs -p no:cacheprovider --junitxml "$WORK/junit.xml" "${files[@]}"
    local rc=$?
    "$PY" - "$WORK/junit.xml" "$FIG" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET

junit, fig = sys.argv[1:]
cases, reasons = {}, set()
for case in ET.parse(junit).iter("testcase"):
    outcome = "passed"
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
            if outcome == "skipped":
                reasons.add(child.get("message", ""))
    cases[case.get("name")] = outcome
counts = {k: sum(v == k for v in cases.values()) for k in ("passed", "failed", "error", "skipped")}
with open(fig, "w") as f:
    json.dump({"collected": len(cases), **counts, "skip_reasons": sorted(reasons), "cases": cases}, f)
EOF
    return $rc
}

write_sample_source() {
    # The bundled cifar10-sample written back as the archive's own files: per class, train/0000-0253 (the sample's
    # 204 train and 50 val images, which are training files 0000-0253 of the archive) and test/0000-0199.
    limited "$PY" - "$REPO/src/smallvit/data/sample/cifar10_sample.npz" "$1" <<'EOF'
import sys
from pathlib import Path

import numpy as np

sample, target = Path(sys.argv[1]), Path(sys.argv[2]) / "cifar10-jpeg"
with np.load(sample) as arrays:
    classes = arrays["classes"].tolist()
    counts = {}
    for split, folder in (("train", "train"), ("val", "train"), ("test", "test")):
        jpeg, offsets, labels = arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"], arrays[f"{split}_labels"]
        for i, label in enumerate(labels):
            name = classes[label]
            number = counts[folder, name] = counts.get((folder, name), -1) + 1
            path = target / folder / name / f"{number:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg[offsets[i] : offsets[i + 1]].tobytes())
print(f"wrote {sum(counts.values()) + len(counts)} JPEG files of the bundled sample to {target}")
EOF
}

use_private_data_root() {
    export SMALLVIT_DATA="$WORK/data" SMALLVIT_CACHE="$WORK/cache"
    echo "private data root: SMALLVIT_DATA=$SMALLVIT_DATA SMALLVIT_CACHE=$SMALLVIT_CACHE"
}

data_section() {
    local source="" data_source="" candidate
    if [ "$TINY" = 0 ]; then
        for candidate in "$ARCHIVE" "$REPO"/../shared/data/cifar10-jpeg.tar.gz "$REPO"/shared/data/cifar10-jpeg.tar.gz
        do
            if [ -n "$candidate" ] && [ -f "$candidate" ]; then
                source="$candidate"
                break
            fi
        done
        local root="${SMALLVIT_DATA:-${HOME:-}/.cache/smallvit/data}"
        if [ -f "$root/cifar10-jpeg/.smallvit-prepared" ]; then
            data_source="already prepared in $root: $(cat "$root/cifar10-jpeg/.smallvit-prepared")"
            echo "$data_source"
        elif [ -n "$source" ]; then
            echo "preparing cifar10-jpeg from $source"
            if limited "${SV[@]}" prepare cifar10-jpeg --source "$source"; then
                data_source="archive $source"
            else
                echo "WARNING: preparing from $source failed; the bundled sample stands in"
            fi
        else
            echo "WARNING: cifar10-jpeg.tar.gz not found (give --archive PATH); the bundled sample stands in"
        fi
    fi
    if [ -z "$data_source" ]; then
        [ "$TINY" = 1 ] || use_private_data_root
        rm -rf "$WORK/sample-source"
        write_sample_source "$WORK/sample-source" || return $?
        limited "${SV[@]}" prepare cifar10-jpeg --source "$WORK/sample-source" || return $?
        data_source="bundled cifar10-sample (2540 train, 2000 test images), not the full dataset"
    fi
    # Decode both splits once into the cache, as the benchmarks and training read them.
    limited "$PY" - "$FIG" "$data_source" <<'EOF'
import json, sys, time

from smallvit.data import data_root, load_dataset

fig, source = sys.argv[1:]
start = time.perf_counter()
train, test = load_dataset("cifar10-jpeg", "train"), load_dataset("cifar10-jpeg", "test")
seconds = time.perf_counter() - start
figures = {"data_source": source, "data_root": str(data_root()), "train_images": len(train), "test_images": len(test)}
figures.update(classes=len(train.classes), load_seconds=round(seconds, 1))
print(f"{train}\n{test}\nloaded (decoded on first use, then cached) in {seconds:.1f} s")
with open(fig, "w") as f:
    json.dump(figures, f)
EOF
}

bench_section() {
    # 32 px, then 224 px: in separate processes on the GPU, so that one size's failure keeps the other's figures;
    # in one process with --tiny, which saves a start-up of torch and timm.
    local before=0 rc=0 size
    [ -f "$BENCH_RESULTS" ] && before=$(wc -l <"$BENCH_RESULTS")
    local bench=("$PY" benchmarks/bench_engine_vs_timm.py --device "$DEVICE" "${BENCH_ARGS[@]}")
    bench+=(--results "$BENCH_RESULTS")
    if [ "$TINY" = 1 ]; then
        limited "${bench[@]}" --image-size 32 224 || rc=$?
    else
        for size in 32 224; do
            echo "--- $size px"
            limited "${bench[@]}" --image-size "$size" || rc=$?
        done
    fi
    [ -f "$BENCH_RESULTS" ] && tail -n +"$((before + 1))" "$BENCH_RESULTS" >"$WORK/bench-new.jsonl"
    if [ "$TINY" = 0 ] && [ -s "$WORK/bench-new.jsonl" ]; then
        cat "$WORK/bench-new.jsonl" >>"$OUT_DIR/benchmarks-results.jsonl"
    fi
    "$PY" - "$WORK/bench-new.jsonl" "$FIG" <<'EOF'
import json, sys

new, fig = sys.argv[1:]
try:
    entries = [json.loads(line) for line in open(new) if line.strip()]
except FileNotFoundError:
    entries = []
figures = {}
for entry in entries:
    if entry.get("benchmark") != "engine_vs_timm":
        continue
    size, rates = entry["image_size"], entry["images_per_s"]
    figures[f"smallvit_img_s_{size}"] = rates["smallvit"]
    figures[f"timm_img_s_{size}"] = rates["timm_dataloader"]
    figures[f"ratio_{size}"] = entry["ratio_smallvit_vs_timm"]
    figures[f"model_{size}"] = entry["model"]
    figures[f"segments_{size}"] = entry["segments_images_per_s"]
    figures[f"load_average_{size}"] = entry.get("load_average")
    shared = ("precision", "batch_size", "workers", "steps", "warmup", "repeats", "device")
    figures.update({key: entry[key] for key in shared})
with open(fig, "w") as f:
    json.dump(figures, f)
EOF
    return $rc
}

train_section() {
    local runs="$WORK/runs" t0 wall epochs rc
    rm -rf "$runs/timing" "$runs/main"
    echo "--- timing run: 1 epoch of the same recipe ${TIMING_ARGS[*]:-}"
    t0=$(now_ms)
    limited "${SV[@]}" train supervised dataset=cifar10-jpeg epochs=1 ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"} \
        ${TIMING_ARGS[@]+"${TIMING_ARGS[@]}"} \
        --runs-dir "$runs" --name timing --quiet || return $?
    wall=$(($(now_ms) - t0))
    local budget=$((SECTION_END - $(date +%s) - 20))
    budget=$((budget < TRAIN_SECONDS ? budget : TRAIN_SECONDS))
    "$PY" - "$runs/timing/summary.json" "$wall" "$budget" "$TINY" "$MAX_EPOCHS" "$WORK/figures-data.json" "$FIG" \
        <<'EOF' || return 1
import json, sys

summary_path, wall_ms, budget, tiny, max_epochs, data_figures, fig = sys.argv[1:]
summary = json.load(open(summary_path))
rate = summary["images_per_s"]
images = summary["provenance"]["splits"]["train"]["images"]
if tiny == "1":  # the timing run is the training run's own configuration
    full = images
else:  # the full training set: the train split less the validation images carved from it (10 % of each class)
    try:
        train_images = json.load(open(data_figures))["train_images"]
    except (OSError, KeyError):  # the data section did not run (--only): count the prepared files
        from smallvit.data import data_root

        train_images = sum(1 for _ in (data_root() / "cifar10-jpeg" / "cifar10-jpeg" / "train").glob("*/*"))
    full = round(0.9 * train_images)
overhead = int(wall_ms) / 1000 - images / rate  # start-up, data loading, evaluation, summary
epoch_s = full / rate
fit = int(0.9 * (int(budget) - overhead) / epoch_s)
epochs = min(max(fit, 1) if tiny == "1" else fit, int(max_epochs))  # --tiny always runs its one epoch
figures = {"timing_images_per_s": rate, "timing_wall_s": round(int(wall_ms) / 1000, 1)}
figures.update(overhead_s=round(overhead, 1))
figures.update(train_images=full, epoch_s_estimate=round(epoch_s, 2), budget_s=int(budget), epochs_fit=fit)
figures["epochs"] = epochs
json.dump(figures, open(fig, "w"))
print(f"timing: {rate:.0f} images/s, {overhead:.0f} s of overhead, {epoch_s:.1f} s per epoch of {full} images: "
      f"{fit} epochs fit in {budget} s, running {epochs}")
EOF
    epochs=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['epochs'])" "$FIG") || return 1
    if [ "$epochs" -lt 1 ]; then
        echo "not one epoch fits in the ${budget} s left: skipping the training run"
        "$PY" -c "import json, sys; f = json.load(open(sys.argv[1])); f['status'] = 'skipped'
json.dump(f, open(sys.argv[1], 'w'))" "$FIG"
        return 0
    fi
    echo "--- training run: supervised, dataset=cifar10-jpeg, epochs=$epochs"
    t0=$(now_ms)
    limited "${SV[@]}" train supervised dataset=cifar10-jpeg epochs="$epochs" ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"} \
        --runs-dir "$runs" --name main --quiet
    rc=$?
    wall=$(($(now_ms) - t0))
    for file in summary.json metrics.jsonl curves.png; do
        [ -f "$runs/main/$file" ] && cp "$runs/main/$file" "$OUT_DIR/train-$file"
    done
    "$PY" - "$runs/main" "$wall" "$FIG" <<'EOF'
import json, sys
from pathlib import Path

run, wall_ms, fig = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
figures = json.load(open(fig))
figures["wall_s"] = round(wall_ms / 1000, 1)
if (run / "summary.json").is_file():
    summary = json.load(open(run / "summary.json"))
    final, best = summary["final"], summary["best"]
    figures.update(images_per_s=summary["images_per_s"], train_wall_clock_s=summary["wall_clock_s"])
    figures.update(val_acc1=final.get("val/supervised/acc1"), test_acc1=final.get("test/supervised/acc1"))
    figures.update(best_val_acc1=best.get("value"), best_epoch=best.get("epoch"))
    figures.update(best_test_acc1=best.get("test", {}).get("test/supervised/acc1"))
    figures.update(device=summary["device"], precision=summary["precision"])
else:  # stopped early: what its metrics log has
    records = [json.loads(line) for line in open(run / "metrics.jsonl")] if (run / "metrics.jsonl").is_file() else []
    trains = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    figures["partial"] = True
    if trains:
        figures.update(images_per_s=trains[-1].get("train/images_per_s"), epochs_done=trains[-1].get("epoch"))
    if evals:
        figures.update(val_acc1=evals[-1].get("val/supervised/acc1"), val_epoch=evals[-1].get("epoch"))
for key in ("epochs", "images_per_s", "val_acc1", "test_acc1", "best_test_acc1", "wall_s"):
    print(f"{key:>16}: {figures.get(key)}")
json.dump(figures, open(fig, "w"))
EOF
    return $rc
}

summary_table() {
    "$PY" - "$RESULTS" <<'EOF'
import json, sys

entries = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'section':<10}{'status':<9}{'seconds':>8}{'CPU s':>7}  figures")
for e in entries:
    name = e["section"]
    if name == "env":
        text = f"{e.get('gpu', 'no GPU')}, torch {e.get('torch')} (CUDA {e.get('torch_cuda')})"
        text += f", {e.get('cpu_count')} CPUs"
    elif name == "tests":
        text = ", ".join(f"{e.get(k)} {k}" for k in ("passed", "failed", "error", "skipped"))
    elif name == "data":
        text = f"{e.get('train_images')} train / {e.get('test_images')} test images ({e.get('data_source')})"
    elif name == "bench":
        text = "; ".join(
            f"{size} px: smallvit {e.get(f'smallvit_img_s_{size}')} vs timm {e.get(f'timm_img_s_{size}')} images/s"
            f" = {e.get(f'ratio_{size}')}x"
            for size in (32, 224)
        )
    else:
        text = (f"{e.get('epochs')} epochs, {e.get('images_per_s')} images/s, val top-1 {e.get('val_acc1')}, "
                f"test top-1 {e.get('test_acc1')}")
    print(f"{name:<10}{e['status']:<9}{e['seconds']:>8}{e['cpu_seconds']:>7}  {text}")
EOF
}

main() {
    echo "smallvit GPU check: $MODE; budget ${BUDGET} s; sections $ONLY; out $OUT_DIR; work $WORK"
    [ "$TINY" = 1 ] && use_private_data_root  # never the user's data root: the sample is prepared as cifar10-jpeg
    section env 45 env_section
    if [ "$TINY" = 0 ]; then
        local cuda
        if [ -f "$WORK/figures-env.json" ]; then
            grep -q '"cuda_available": true' "$WORK/figures-env.json" && cuda=True
        else
            cuda=$("$PY" -c "import torch; print(torch.cuda.is_available())" 2>/dev/null)
        fi
        if [ "${cuda:-}" != True ]; then
            DEVICE=cpu
            echo "WARNING: no CUDA GPU visible: benchmarks and training run on the CPU (use --tiny for a quick check)"
        fi
    fi
    section tests 150 tests_section
    section data 150 data_section
    section bench 210 bench_section
    section train $((TRAIN_SECONDS + 120)) train_section
    echo
    echo "=============== summary ($(($(date +%s) - START)) s; figures in $RESULTS) ==============="
    summary_table
    local failed
    failed=$(grep -c '"status": "\(failed\|timeout\)"' "$RESULTS")
    [ "$KEEP_WORK" = 1 ] || rm -rf "$WORK"
    [ "$failed" -eq 0 ]
}

main 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"

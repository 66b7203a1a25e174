#!/usr/bin/env bash
# Start, or resume after a stop, the paper-budget runs of Burda et al.'s Table 1 (one stochastic
# layer, --schedule burda in full: 3280 passes, K = 5000 on all 10,000 test images) that
# benchmarks/full_schedule_runs.txt lists, each in the background on one thread. Run it again after
# any stop: a run with a checkpoint continues from its last finished epoch, a finished run and one
# still training are left alone. Progress: runs/full-schedule/*/history.csv.
#
#     bash benchmarks/full_schedule.sh [DATA_DIR]      # default ../shared/data
#     bash benchmarks/full_schedule.sh --save          # keep the checkpoints in the repository
#
# runs/ is not versioned, and a session may start on a fresh machine without it: --save copies each
# run's checkpoint (weights, Adam's state, random states, history; written atomically, so a copy is
# whole even while the run trains) to $KEPT, to be committed, and a finished run's metrics.json. A
# run whose kept checkpoint is further on than its checkpoint in runs/ (none on a fresh machine; an
# older one on a machine that a later session on another machine overtook) gets the kept one back
# (and its metrics.json, if it finished) and resumes from it; --save never replaces a kept checkpoint
# with an earlier one. Resuming is deterministic, so either checkpoint is on the same trajectory.
# The weight snapshots stay behind, but their scores do not: benchmarks/full_schedule_table.py keeps
# the training curve's points whose snapshots are gone.
set -euo pipefail
cd "$(dirname "$0")/.."
KEPT=benchmarks/results/table1-mnist-full-schedule/checkpoints
# the runs, in order, and each run's own flags
runs=()
declare -A flags=()
while read -r name run_flags; do
    [[ -z $name || $name == \#* ]] && continue
    runs+=("$name")
    flags[$name]=$run_flags
done <benchmarks/full_schedule_runs.txt
# the epochs that each run's checkpoint in runs/ and its kept one have trained (-1: none), read at once
checkpoints=()
for name in "${runs[@]}"; do checkpoints+=("runs/full-schedule/$name/checkpoint.pt" "$KEPT/$name.pt"); done
mapfile -t epochs < <(python -c '
import os, sys
from pyro_iwae.checkpoints import read_weights
for path in sys.argv[1:]:
    print(read_weights(path).epoch if os.path.isfile(path) else -1)' "${checkpoints[@]}")
((${#epochs[@]} == ${#checkpoints[@]})) || { echo "could not read the checkpoints' epochs" >&2; exit 1; }
if [[ ${1:-} == --save ]]; then
    mkdir -p "$KEPT"
    for i in "${!runs[@]}"; do
        name=${runs[i]} out=runs/full-schedule/${runs[i]} epoch=${epochs[2 * i]} kept_epoch=${epochs[2 * i + 1]}
        ((epoch >= 0)) || continue
        if ((epoch < kept_epoch)); then
            echo "$KEPT/$name.pt: kept as it is (epoch $kept_epoch; $out is at epoch $epoch)"
            continue
        fi
        cp "$out/checkpoint.pt" "$KEPT/$name.pt"
        echo "$KEPT/$name.pt: epoch $epoch"
        [[ -f $out/metrics.json ]] && cp "$out/metrics.json" "$KEPT/$name.metrics.json" && echo "  finished"
    done
    exit 0
fi
data_dir=${1:-../shared/data}
for i in "${!runs[@]}"; do
    name=${runs[i]} out=runs/full-schedule/${runs[i]}
    mkdir -p "$out"
    pid=$(cat "$out/pid" 2>/dev/null || true)
    if [[ -n $pid ]] && grep -qs -- "$out" "/proc/$pid/cmdline"; then
        echo "$out: still training (pid $pid)"
        continue
    fi
    if ((epochs[2 * i] < epochs[2 * i + 1])); then
        cp "$KEPT/$name.pt" "$out/checkpoint.pt"
        [[ -f $KEPT/$name.metrics.json ]] && cp "$KEPT/$name.metrics.json" "$out/metrics.json"
        echo "$out: restored from $KEPT/$name.pt (epoch ${epochs[2 * i + 1]})"
    fi
    [[ -f $out/metrics.json ]] && { echo "$out: finished"; continue; }
    resume=$([[ -f $out/checkpoint.pt ]] && echo --resume || true)
    # shellcheck disable=SC2086 # the flags are words
    OMP_NUM_THREADS=1 nohup python examples/mnist.py ${flags[$name]} \
        --schedule burda --data-dir "$data_dir" --out "$out" --snapshot-every 100 --compile --no-progress $resume \
        >>"$out/log.txt" 2>&1 &
    echo $! >"$out/pid"
    echo "$out: started (pid $!) ${resume:-afresh}"
done

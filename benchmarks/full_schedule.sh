#!/usr/bin/env bash
# Start, or resume after a stop, the paper-budget runs of Burda et al.'s Table 1 (one stochastic
# layer, --schedule burda in full: 3280 passes, K = 5000 on all 10,000 test images), each in the
# background on one thread. Run it again after any stop: a run with a checkpoint continues from its
# last finished epoch, a finished run is left alone. Progress: runs/full-schedule/*/history.csv.
#
#     bash benchmarks/full_schedule.sh [DATA_DIR]      # default ../shared/data
#     bash benchmarks/full_schedule.sh --save          # keep the checkpoints in the repository
#
# runs/ is not versioned, and a session may start on a fresh machine without it: --save copies each
# run's checkpoint (weights, Adam's state, random states, history; written atomically, so a copy is
# whole even while the run trains) to $KEPT, to be committed, and a finished run's metrics.json. A
# run without a checkpoint in runs/ gets its kept one back (and its metrics.json, if it finished) and
# resumes from it. The weight snapshots stay behind, but their scores do not:
# benchmarks/full_schedule_table.py keeps the training curve's points whose snapshots are gone.
set -euo pipefail
cd "$(dirname "$0")/.."
KEPT=benchmarks/results/table1-mnist-full-schedule/checkpoints
runs=(mnist-elbo-k1-1layer mnist-iwae-k5-1layer)
if [[ ${1:-} == --save ]]; then
    mkdir -p "$KEPT"
    for name in "${runs[@]}"; do
        out=runs/full-schedule/$name
        [[ -f $out/checkpoint.pt ]] || continue
        cp "$out/checkpoint.pt" "$KEPT/$name.pt"
        [[ -f $out/history.csv ]] && echo "$KEPT/$name.pt: epoch $(($(wc -l <"$out/history.csv") - 1))"
        [[ -f $out/metrics.json ]] && cp "$out/metrics.json" "$KEPT/$name.metrics.json" && echo "  finished"
    done
    exit 0
fi
data_dir=${1:-../shared/data}
for name in "${runs[@]}"; do
    IFS=- read -r _ objective particles _ <<<"$name"
    particles=${particles#k}
    out=runs/full-schedule/$name
    mkdir -p "$out"
    if [[ ! -f $out/checkpoint.pt && -f $KEPT/$name.pt ]]; then
        cp "$KEPT/$name.pt" "$out/checkpoint.pt"
        [[ -f $KEPT/$name.metrics.json ]] && cp "$KEPT/$name.metrics.json" "$out/metrics.json"
        echo "$out: restored from $KEPT/$name.pt"
    fi
    [[ -f $out/metrics.json ]] && { echo "$out: finished"; continue; }
    resume=$([[ -f $out/checkpoint.pt ]] && echo --resume || true)
    OMP_NUM_THREADS=1 nohup python examples/mnist.py --objective "$objective" --particles "$particles" \
        --schedule burda --data-dir "$data_dir" --out "$out" --snapshot-every 100 --compile --no-progress $resume \
        >>"$out/log.txt" 2>&1 &
    echo "$out: started (pid $!) ${resume:-afresh}"
done

#!/usr/bin/env bash
# Start, or resume after a stop, the paper-budget runs of Burda et al.'s Table 1 (one stochastic
# layer, --schedule burda in full: 3280 passes, K = 5000 on all 10,000 test images), each in the
# background on one thread. Run it again after any stop: a run with a checkpoint continues from its
# last finished epoch, a finished run is left alone. Progress: runs/full-schedule/*/history.csv.
#
#     bash benchmarks/full_schedule.sh [DATA_DIR]      # default ../shared/data
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-../shared/data}
for run in "elbo 1" "iwae 5"; do
    read -r objective particles <<<"$run"
    out=runs/full-schedule/mnist-$objective-k$particles-1layer
    [[ -f $out/metrics.json ]] && { echo "$out: finished"; continue; }
    resume=$([[ -f $out/checkpoint.pt ]] && echo --resume || true)
    mkdir -p "$out"
    OMP_NUM_THREADS=1 nohup python examples/mnist.py --objective "$objective" --particles "$particles" \
        --schedule burda --data-dir "$data_dir" --out "$out" --snapshot-every 100 --no-progress $resume \
        >>"$out/log.txt" 2>&1 &
    echo "$out: started (pid $!) ${resume:-afresh}"
done

#!/usr/bin/env bash
# IWAE against MIWAE, CIWAE and PIWAE (Rainforth et al., 2018) with the same 64 particles per image,
# at a CPU budget: EPOCHS epochs on the first TRAIN_SIZE training images, K = 5000 on the first 1000
# test images. Finished runs are skipped; the table goes to stdout.
#
#     bash benchmarks/rainforth_objectives.sh [DATA_DIR] [EPOCHS] [TRAIN_SIZE] > table.md
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-../shared/data}
epochs=${2:-3}
train_size=${3:-20000}
runs=()
for objective in "iwae --particles 64" "miwae --particles 8 --groups 8" "ciwae --particles 64 --beta 0.5" \
    "piwae --particles 8 --groups 8"; do
    out=runs/rainforth/$(echo "$objective" | tr -d '-' | tr ' ' '_')
    runs+=("$out")
    [[ -f $out/metrics.json ]] && continue
    # shellcheck disable=SC2086
    python examples/mnist.py --objective $objective --epochs "$epochs" --train-size "$train_size" \
        --test-size 1000 --data-dir "$data_dir" --out "$out" --no-plots --no-progress >&2
done
python - "${runs[@]}" <<'PY'
import json, sys
print("| objective | particles per image | test NLL (K = 5000, 1000 images) | active units | training loss, last epoch |")
print("| --- | --- | --- | --- | --- |")
for path in sys.argv[1:]:
    m = json.load(open(f"{path}/metrics.json"))
    c = m["config"]
    name = {"miwae": f"MIWAE(M = {c['groups']}, K = {c['particles']})", "piwae": f"PIWAE(M = {c['groups']}, K = {c['particles']})",
            "ciwae": f"CIWAE(beta = {c['beta']}, K = {c['particles']})", "iwae": f"IWAE(k = {c['particles']})"}[c["objective"]]
    total = c["particles"] * (c.get("groups") or 1)
    print(f"| {name} | {total} | {-m['test_log_likelihood']:.2f} ± {m['test_log_likelihood_stderr']:.2f} | {m['active_units']} | {m['final_train_loss']:.2f} |")
PY

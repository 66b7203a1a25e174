#!/usr/bin/env bash
# The GPU checks, as one command for a session that has a GPU lent (the device tool's `run`), every
# result written under $OUT: the device-dependent tests on CUDA, the evaluator on the full test set at
# K = 5000, and the training-step throughput beside the hand-written IWAE.
#
# Prepared here, in the repository root (both folders are ignored by git and travel with `carry`):
#
#     mkdir -p .data/MNIST/raw && cp ../shared/data/MNIST/raw/*-ubyte.gz .data/MNIST/raw/
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#         pyro-ppl==1.9.2 pyro-api==0.1.2
#
# then:  run(command="bash benchmarks/gpu_check.sh", carry=[".data", ".whl"], timeout_s=590)
#
# DEVICE=cpu OUT=/tmp/gpu-check QUICK=1 bash benchmarks/gpu_check.sh  tries the script here, in a minute.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu-check}
device=${DEVICE:-cuda}
quick=${QUICK:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYRO_IWAE_DATA=${PYRO_IWAE_DATA:-$PWD/.data}
if [[ -d .whl ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; python3 -c "import torch, pyro; print(torch.__version__, pyro.__version__)"; } >"$out/machine.txt" 2>&1

# 1. correct: the tests that take the device fixture, on the device
python3 -m pytest -q -p no:cacheprovider --device "$device" tests/test_training.py tests/test_devices.py \
    tests/test_compiled.py tests/test_faults.py ${quick:+-x -k "nan or reads or devices"} 2>&1 | tee "$out/pytest.txt"

# 2. measured: the evaluator on all 10,000 test images at K = 5000 (an untrained model costs what a trained one does)
python3 examples/mnist.py --device "$device" --epochs 0 --no-plots --no-progress --data-dir "$PYRO_IWAE_DATA" \
    --out "$out/evaluation" ${quick:+--test-size 100 --eval-particles 100} 2>&1 | tee "$out/evaluation.txt"

# 3. measured: training steps/s, ours (eager and compiled) beside the hand-written PyTorch IWAE
python3 benchmarks/train_throughput.py --device "$device" --objectives elbo iwae --layers 1 2 --batch-sizes 20 100 \
    --particles 1 5 50 --compile ${quick:+--layers 1 --batch-sizes 20 --particles 5 --rounds 2} 2>&1 |
    tee "$out/train_throughput.md"

"""
Every benchmark runs end to end at a toy size and prints its table (the figures themselves are
measured by hand, see benchmarks/README.md), and ``--device cuda`` without a GPU is one line.
"""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from pyro_iwae.checkpoints import save_weights
from pyro_iwae.models import VAE


def benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_train_throughput_compares_every_configuration():
    result = benchmark(
        "train_throughput.py", "--objectives", "iwae", "iwae-dreg", "--layers", "2", "--batch-sizes", "4",
        "--particles", "3", "--images", "8", "--rounds", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| iwae")]
    assert [row.split(" | ")[:4] for row in rows] == [["| iwae", "2", "4", "3"], ["| iwae-dreg", "2", "4", "3"]]


def test_eval_throughput_reports_the_fraction_of_peak_and_the_naive_ratio():
    result = benchmark(
        "eval_throughput.py", "--images", "4", "--eval-particles", "50", "--naive-images", "1", "--naive-particles", "5"
    )
    assert result.returncode == 0, result.stderr
    assert "| 2048x2048 fp32 matmul (peak) |" in result.stdout
    assert "ours / naive:" in result.stdout


def test_memory_compares_the_two_evaluator_peaks():
    result = benchmark("memory.py", "--images", "2", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    assert "evaluator K = 50000 / K = 5000: tensors 1.00" in result.stdout  # chunked: the same peak


def test_gradient_snr_writes_its_plot(data_dir, tmp_path):
    plot = tmp_path / "snr.png"
    result = benchmark(
        "gradient_snr.py", "--data-dir", str(data_dir), "--warmup-steps", "2", "--particles", "1", "4",
        "--repeats", "3", "--plot", str(plot),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("| iwae")]) == 6
    assert plot.stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("script", ["train_throughput.py", "eval_throughput.py"])
def test_cuda_without_a_gpu_is_one_line(script):
    result = benchmark(script, "--device", "cuda")
    assert result.returncode == 2
    assert "torch sees no CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr


def test_kernels_compares_each_choice_with_its_default():
    result = benchmark("kernels.py", "--repeats", "3")
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ")[0] for line in result.stdout.splitlines() if line.startswith("| ")][2:]
    assert rows[1::2] == [  # each after the stock piece it replaces
        "| Tanh (2 sigmoid(2x) - 1)",
        "| BernoulliPixels(logits).log_prob",
        "| DiagonalNormal(loc, scale), expand, log_prob",
        "| DiagonalNormalMixture(logits, loc, scale).log_prob",
        "| Adam step, fused (make_optimizer)",
    ]


def test_table2_switching_writes_both_switches_and_their_controls(data_dir, tmp_path):
    for objective, particles in (("elbo", 1), ("iwae", 5)):
        config = {"objective": objective, "particles": particles, "layers": 1}
        save_weights(tmp_path / f"{objective}.pt", VAE(), config, epoch=7)
    flags = ["--vae", tmp_path / "elbo.pt", "--iwae", tmp_path / "iwae.pt", "--epochs", 1, "--train-size", 40]
    flags += ["--test-size", 20, "--eval-particles", 5, "--data-dir", data_dir, "--runs", tmp_path / "runs"]
    result = benchmark("table2_switching.py", *map(str, [*flags, "--out", tmp_path / "table"]))
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "table" / "table.md").read_text()
    assert "| VAE, k = 1, 7 epochs |" in table and "IWAE, k = 50:" in table and "VAE: 86.76 → 84.88 |" in table
    runs = json.loads((tmp_path / "table" / "results.json").read_text())["runs"]
    keys = ("before", "switched", "control")
    configs = [(r[key]["config"]["objective"], r[key]["epochs"]) for r in runs for key in keys]
    assert configs == [("elbo", 0), ("iwae", 1), ("elbo", 1), ("iwae", 0), ("elbo", 1), ("iwae", 1)]
    assert all(r[key]["config"]["init_from"] == r["start"] for r in runs for key in keys)


def test_posterior_heat_maps_draws_the_three_models(data_dir, tmp_path):
    flags = ["--data-dir", data_dir, "--epochs", 1, "--train-size", 100, "--test-size", 10, "--eval-particles", 5]
    result = benchmark("posterior_heat_maps.py", *map(str, [*flags, "--images", 2, "--out", tmp_path, "--no-progress"]))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "posteriors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [
        line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| ") and "NLL" not in line
    ]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| VAE", "| IWAE, k = 5", "| IWAE, k = 50"]

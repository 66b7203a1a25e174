"""End to end: examples/mnist.py on a small slice of real MNIST, as a user runs it."""

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from pyro_iwae.checkpoints import load_model
from pyro_iwae.data import load_dataset
from pyro_iwae.evaluation import log_likelihood
from pyro_iwae.networks import IAFLayer
from pyro_iwae.priors import VampPrior

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("reconstructions.png", "samples.png", "latent_traversal.png", "training_curve.png")


def run_example(*flags):
    command = [sys.executable, str(ROOT / "examples" / "mnist.py"), "--no-progress", *map(str, flags)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("run")
    flags = [
        "--objective",
        "iwae",
        "--particles",
        5,
        "--epochs",
        1,
        "--train-size",
        1000,
        "--test-size",
        200,
        "--eval-particles",
        100,
        "--data-dir",
        data_dir,
        "--out",
        out,
    ]
    result = run_example(*flags)
    assert result.returncode == 0, result.stderr
    return out, flags


def test_writes_sane_metrics_and_plots(run_dir):
    out, _ = run_dir
    metrics = json.loads((out / "metrics.json").read_text())
    config = metrics["config"]
    assert config["objective"] == "iwae" and config["particles"] == 5 and config["layers"] == 1
    assert (metrics["train_size"], metrics["test_size"], config["eval_particles"]) == (1000, 200, 100)
    assert metrics["epochs"] == 1 and config["dataset"] == "mnist" and metrics["device"] == "cpu"
    # after one epoch on 1000 images: far better than the mean image (~206 nats), far worse than the paper (~85)
    assert -200 < metrics["test_log_likelihood"] < -100
    assert metrics["test_elbo"] < metrics["test_log_likelihood"]
    assert 0 < metrics["active_units"] <= 50
    assert metrics["train_seconds"] > 0 and metrics["eval_seconds"] > 0
    assert {"torch_version", "pyro_version"} <= set(metrics) and config["seed"] == 0
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name


def test_resume_refuses_a_checkpoint_of_other_flags(run_dir):
    out, flags = run_dir
    other = [*flags, "--resume"]
    other[other.index("--particles") + 1] = 7
    result = run_example(*other)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "another configuration (particles 5 there, 7 here)" in result.stderr


def test_resume_adds_epochs_and_keeps_history(run_dir):
    out, flags = run_dir
    flags = list(flags)
    first = list(csv.DictReader((out / "history.csv").open()))
    assert [row["epoch"] for row in first] == ["1"]
    flags[flags.index("--epochs") + 1] = 2
    result = run_example(*flags, "--resume", "--no-plots")
    assert result.returncode == 0, result.stderr
    second = list(csv.DictReader((out / "history.csv").open()))
    assert second[0] == first[0] and [row["epoch"] for row in second] == ["1", "2"]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_swapped_prior_and_guide_with_dreg_end_to_end(tmp_path, data_dir):
    flags = ["--objective", "iwae-dreg", "--particles", 3, "--prior", "vamp", "--guide", "iaf", "--layers", 2]
    flags += ["--epochs", 1, "--train-size", 200, "--test-size", 40, "--eval-particles", 20, "--data-dir", data_dir]
    result = run_example(*flags, "--out", tmp_path, "--no-plots")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    config = metrics["config"]
    assert (config["objective"], config["prior"], config["guide"]) == ("iwae-dreg", "vamp", "iaf")
    assert -550 < metrics["test_log_likelihood"] < -100 and metrics["test_elbo"] < metrics["test_log_likelihood"]
    model = load_model(tmp_path)
    assert isinstance(model.prior, VampPrior) and isinstance(model.encoder[0], IAFLayer)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--particles", "0"], "error: --particles must be at least 1, got 0"),
        (["--epochs", "-1"], "error: --epochs must be at least 0, got -1"),
        (["--eval-particles", "0"], "error: --eval-particles must be at least 1, got 0"),
        (["--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
        (["--lr", "0"], "error: --lr must be positive, got 0.0"),
        (["--schedule", "burda", "--epochs", "4000"], "the burda schedule has 3280 epochs; got epochs=4000 (--epochs)"),
        (["--test-size", "10"], "error: the pictures need at least 32 test images, got --test-size 10"),
        (["--objective", "vae"], "invalid choice: 'vae'"),
        (["--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["--prior", "cauchy"], "invalid choice: 'cauchy'"),
        (["--guide", "planar"], "invalid choice: 'planar'"),
    ],
)
def test_bad_flags_get_one_line(flags, message):
    result = run_example(*flags)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_user_errors_get_one_line_without_traceback(tmp_path, data_dir):
    missing = run_example("--data-dir", tmp_path / "nowhere", "--epochs", "1", "--out", tmp_path / "out")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("error: missing dataset files in") and "--data-dir" in missing.stderr
    assert not (tmp_path / "out").exists()
    no_checkpoint = run_example(
        "--data-dir", data_dir, "--train-size", 100, "--test-size", 50, "--resume", "--out", tmp_path / "fresh"
    )
    assert no_checkpoint.returncode == 1 and "Traceback" not in no_checkpoint.stderr
    assert "no checkpoint at" in no_checkpoint.stderr and "without --resume" in no_checkpoint.stderr
    assert not (tmp_path / "fresh").exists()  # no empty run directory left behind
    (tmp_path / "a-file").write_text("")
    out_is_a_file = run_example("--data-dir", data_dir, "--epochs", "1", "--out", tmp_path / "a-file")
    assert out_is_a_file.returncode == 2 and "Traceback" not in out_is_a_file.stderr
    assert "error: --out " in out_is_a_file.stderr and "a-file is a file: name a directory" in out_is_a_file.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(tmp_path, data_dir):
    result = run_example("--device", "cuda", "--data-dir", data_dir, "--train-size", 100, "--out", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no CUDA GPU" in result.stderr and "--device cpu" in result.stderr


@pytest.mark.parametrize(
    "flags, status, message",
    [
        (["--train-size", 60001], 1, "--train-size 60001 is more than the 60,000 train images of mnist"),
        (["--test-size", 10001], 1, "--test-size 10001 is more than the 10,000 test images of mnist"),
        (["--train-size", 50, "--batch-size", 100], 2, "--batch-size 100 is more than the 50 training images"),
    ],
)
def test_sizes_beyond_the_data_are_named_not_shrunk(tmp_path, data_dir, flags, status, message):
    result = run_example("--data-dir", data_dir, "--epochs", 1, "--out", tmp_path / "out", *flags)
    assert result.returncode == status and "Traceback" not in result.stderr
    assert message in result.stderr


def test_init_glorot_starts_from_glorot_weights_and_says_so(data_dir, tmp_path):
    flags = ["--epochs", 0, "--test-size", 200, "--eval-particles", 2, "--data-dir", data_dir, "--no-plots"]
    result = run_example(*flags, "--init", "glorot", "--snapshot-every", 1, "--out", tmp_path / "glorot")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "glorot" / "metrics.json").read_text())["config"]["init"] == "glorot"
    first_layer = load_model(tmp_path / "glorot" / "weights" / "epoch-0000.pt").encoder[0].hidden[0]
    # U(+-sqrt(6 / (784 + 200))) = U(+-0.078), zero biases, where nn.Linear's own are U(+-1 / sqrt(784)) = U(+-0.036)
    assert 0.07 < first_layer.weight.abs().max() <= math.sqrt(6 / 984) and torch.all(first_layer.bias == 0)


def test_init_from_trains_on_from_a_trained_model_with_another_objective(run_dir, data_dir, tmp_path):
    """Burda et al.'s Table 2: --init-from starts from a run's weights, whatever the new objective."""
    trained, _ = run_dir
    flags = ["--objective", "elbo", "--particles", 1, "--epochs", 0, "--train-size", 1000, "--test-size", 200]
    flags += ["--eval-particles", 100, "--data-dir", data_dir, "--no-plots", "--init-from", trained]
    result = run_example(*flags, "--out", tmp_path / "scored")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert metrics["config"]["init_from"] == str(trained) and metrics["epochs"] == 0
    # with no epochs to train, it scores the trained weights with seed 0, as the evaluator does by hand
    vae = load_model(trained)
    test = load_dataset("mnist", data_dir, test_size=200).test
    estimate = log_likelihood(vae.model, vae.guide, test, num_particles=100, seed=0)
    assert metrics["test_log_likelihood"] == estimate.log_likelihood.mean().item()

    other_architecture = run_example(*flags, "--layers", 2, "--out", tmp_path / "two-layers")
    assert other_architecture.returncode == 1 and "Traceback" not in other_architecture.stderr
    message = "were trained with layers 1, prior 'normal', guide 'normal', and do not fit the model to be trained ("
    assert message in other_architecture.stderr and "key(s)" in other_architecture.stderr

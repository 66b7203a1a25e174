"""
``pyro_iwae.load_model`` on run directories, checkpoints and weights files, and
``benchmarks/full_schedule_table.py`` end to end on a tiny run of real MNIST.
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import full_schedule_table
import pyro
import pytest
import torch
from conftest import ROOT
from mnist import main as train_and_evaluate

import pyro_iwae
from pyro_iwae.checkpoints import (
    CheckpointError,
    RunDirectory,
    read_history,
    read_weights,
    save_weights,
    write_history,
)
from pyro_iwae.data import binarize, load_dataset
from pyro_iwae.evaluation import active_units
from pyro_iwae.experiments.config import RunConfig, command_line
from pyro_iwae.models import ARCHITECTURES, VAE
from pyro_iwae.objectives import make_objective
from pyro_iwae.priors import MixtureOfGaussiansPrior
from pyro_iwae.training import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def images(num=40):
    """Two random binary prototypes, each pixel flipped with probability 0.05 (binary already)."""
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.rand(2, 784, generator=generator).round()
    return torch.bernoulli((0.05 + 0.9 * prototypes).repeat(num // 2, 1), generator=generator)


def test_load_model_reads_a_run_directory_its_checkpoint_and_its_snapshots(tmp_path):
    config = RunConfig(particles=2, layers=2, prior="mog").checkpointed_fields()
    torch.manual_seed(0)
    untrained = VAE(*ARCHITECTURES[2], prior="mog").state_dict()
    torch.manual_seed(0)
    vae = VAE(*ARCHITECTURES[2], prior="mog")
    run = RunDirectory(tmp_path, config, snapshot_every=1)
    train(vae, make_objective("iwae", 2), images(), [1e-2, 1e-2], dynamic_binarization=False, run=run, progress=False)
    for path in (tmp_path, tmp_path / "checkpoint.pt", tmp_path / "weights" / "epoch-0002.pt"):
        model = pyro_iwae.load_model(path)
        # built from the stored config: two stochastic layers and a mixture prior, not the default VAE
        assert isinstance(model.prior, MixtureOfGaussiansPrior) and len(model.encoder) == 2
        assert_same_weights(model.state_dict(), vae.state_dict())
    assert_same_weights(pyro_iwae.load_model(tmp_path / "weights" / "epoch-0000.pt").state_dict(), untrained)
    after_one = pyro_iwae.load_model(tmp_path / "weights" / "epoch-0001.pt").state_dict()
    assert not torch.equal(after_one["decoder_pixels.logits.weight"], vae.state_dict()["decoder_pixels.logits.weight"])
    assert [read_weights(tmp_path / "weights" / f"epoch-000{i}.pt").epoch for i in range(3)] == [0, 1, 2]
    assert read_weights(tmp_path).epoch == 2 and read_weights(tmp_path).config == config


def test_load_model_names_the_file_and_what_is_wrong(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    save_weights(tmp_path / "no-config.pt", VAE(), {}, epoch=3)
    save_weights(tmp_path / "two-layers.pt", VAE(), {"layers": 2}, epoch=3)
    cases = {
        "nowhere.pt": "no such run directory, checkpoint or weights file: .*nowhere.pt",
        "empty": "empty is a directory without a checkpoint.pt: not a run directory",
        "notes.txt": "notes.txt is not a checkpoint or weights file written by pyro_iwae",
        "other.pt": r"other.pt is neither a checkpoint .* nor a weights file .*: it holds \['weights'\]",
        "tensor.pt": "tensor.pt is neither a checkpoint .* it holds Tensor",
        "no-config.pt": "no-config.pt records no usable number of layers in its config",
        "two-layers.pt": r"the weights in .*two-layers.pt do not fit the VAE its config describes \(layers 2",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            pyro_iwae.load_model(tmp_path / name)


def test_binarize_is_fixed_by_its_seed():
    intensities = torch.full((200, 784), 0.3)
    first, second = binarize(intensities), binarize(intensities)
    assert torch.equal(first, second) and set(first.unique().tolist()) == {0.0, 1.0}
    assert first.mean().item() == pytest.approx(0.3, abs=0.01)
    assert not torch.equal(first, binarize(intensities, seed=1))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    """Two epochs of the burda schedule on 300 images, a snapshot after each, scored with K = 20 on 100 images."""
    out = tmp_path_factory.mktemp("runs") / "mnist-iwae-k5-1layer"
    config = RunConfig(
        objective="iwae", particles=5, schedule="burda", epochs=2, train_size=300, test_size=100,
        eval_particles=20, data_dir=str(data_dir), out=str(out), plots=False, progress=False, snapshot_every=1,
    )  # fmt: skip
    metrics = train_and_evaluate(config)
    return out, metrics


def test_the_loaded_model_reproduces_the_metrics_of_its_run(tiny_run, data_dir):
    out, metrics = tiny_run
    test = load_dataset("mnist", data_dir, test_size=100).test
    # examples/mnist.py scores the model right after training, with the run's seed
    for path in (out, out / "weights" / "epoch-0002.pt"):
        model = pyro_iwae.load_model(path)
        seed = metrics["config"]["seed"]
        estimate = pyro_iwae.log_likelihood(model.model, model.guide, test, num_particles=20, batch_size=100, seed=seed)
        assert estimate.log_likelihood.mean().item() == metrics["test_log_likelihood"]


def table_script(*flags):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, str(ROOT / "benchmarks" / "full_schedule_table.py"), "--no-progress", *map(str, flags)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def nll(path, images, particles):
    """What the script should find: -log p(x) with ``particles`` samples, averaged over ``images``, with seed 0."""
    model = pyro_iwae.load_model(path)
    estimate = pyro_iwae.log_likelihood(
        model.model, model.guide, images, num_particles=particles, batch_size=100, seed=0
    )
    return -estimate.log_likelihood.mean().item()


def test_table_script_end_to_end(tiny_run, data_dir, tmp_path):
    finished, metrics = tiny_run
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished, unfinished)
    (unfinished / "metrics.json").unlink()
    out = tmp_path / "table"
    flags = [finished, unfinished, "--data-dir", data_dir, "--out", out, "--curve-particles", 10]
    flags += ["--curve-images", 50, "--eval-particles", 20, "--test-images", 100, "--train-images", 100]
    result = table_script(*flags)
    assert result.returncode == 0, result.stderr

    dataset = load_dataset("mnist", data_dir)
    # the images scored are spread over each split: --curve-images 50 is every 200th of the 10,000 test images,
    # --test-images 100 every 100th, --train-images 100 every 600th of the 60,000 training images
    curve_test, test, train = dataset.test[::200], dataset.test[::100], binarize(dataset.train)[::600]
    curves = json.loads((out / "curve.json").read_text())["runs"]
    points = curves["mnist-iwae-k5-1layer"]["points"]
    assert [p["epoch"] for p in points] == [0, 1, 2]
    for p in points:
        assert p["test_nll"] == pytest.approx(nll(finished / "weights" / p["file"], curve_test, 10), rel=1e-5)
    assert points[0]["test_nll"] > points[2]["test_nll"]  # training helps
    history = read_history(finished / "history.csv")
    assert curves["mnist-iwae-k5-1layer"]["loss"] == {
        "epoch": [1, 2],
        "loss": [row["loss"] for row in history],
    }

    done, running = json.loads((out / "results.json").read_text())["runs"]
    # the finished run: its test NLL from metrics.json, its train NLL scored on fixed-binarized training images
    assert (done["status"], done["epochs"], done["planned_epochs"]) == ("finished", 2, 2)
    assert done["test_nll"] == -metrics["test_log_likelihood"] and done["active_units"] == metrics["active_units"]
    assert done["train_nll"] == pytest.approx(nll(finished, train, 20), rel=1e-5)
    assert done["gap"] == pytest.approx(done["test_nll"] - done["train_nll"])
    assert done["train_seconds"] == pytest.approx(sum(row["seconds"] for row in history))
    assert (done["paper_nll"], done["reproduction_nll"]) == (85.54, 85.18)
    assert (running["status"], running["epochs"], running["planned_epochs"]) == ("in progress", 2, 3280)
    assert running["latest_curve_point"] == {"epoch": 2, "test_nll": points[2]["test_nll"]}
    assert "test_nll" not in running
    # its active units: those of its latest snapshot
    pyro.set_rng_seed(0)
    units = active_units(pyro_iwae.load_model(unfinished / "weights" / "epoch-0002.pt").guide, test)
    assert running["latest_active_units"] == {"epoch": 2, "count": sum(int(u.sum()) for u in units.values())}

    table = (out / "table.md").read_text()
    row = (
        f"| IWAE, k = 5 (mnist-iwae-k5-1layer) | 2 | {done['test_nll']:.2f} ± {done['test_nll_stderr']:.2f} | 85.54"
        f" | 85.18 | {done['train_nll']:.2f} ± {done['train_nll_stderr']:.2f} |"
        f" {done['gap']:.2f} ± {done['gap_stderr']:.2f} | {metrics['active_units']} |"
    )
    assert row in table
    assert (
        f"| IWAE, k = 5 (unfinished) | in progress, epoch 2 of 3280 | {points[2]['test_nll']:.2f} at epoch 2"
        f" (K = 10, 50 images) | 85.54 | 85.18 | – | – | {running['latest_active_units']['count']} at epoch 2 |"
    ) in table
    assert "python benchmarks/full_schedule_table.py" in table and "pyro_iwae.load_model(" in table
    for picture in ("training_curves.png", "unit_variances.png"):
        assert (out / picture).read_bytes()[:8] == PNG_MAGIC, picture
    assert_same_weights(
        pyro_iwae.load_model(out / "weights" / "mnist-iwae-k5-1layer.pt").state_dict(),
        pyro_iwae.load_model(finished).state_dict(),
    )
    assert not (out / "weights" / "unfinished.pt").exists()

    # the README's re-scoring of a weights file, on all test images (--test-images' default); a rerun takes both
    # scores from evaluations.json
    weights_file = out / "weights" / "mnist-iwae-k5-1layer.pt"
    rescored = tmp_path / "rescored"
    for expected_test_nll in (nll(weights_file, dataset.test, 20), 321.0):
        scoring = ["--eval-particles", 20, "--train-images", 100]
        result = table_script(weights_file, "--data-dir", data_dir, "--out", rescored, *scoring)
        assert result.returncode == 0, result.stderr
        (scored,) = json.loads((rescored / "results.json").read_text())["runs"]
        assert (scored["test_images"], scored["train_images"]) == (10_000, 100)
        assert scored["test_nll"] == pytest.approx(expected_test_nll, rel=1e-5)
        assert scored["train_nll"] == pytest.approx(done["train_nll"], rel=1e-5)
        cache = json.loads((rescored / "evaluations.json").read_text())
        next(e for e in cache["evaluations"] if e["split"] == "test")["nll"] = 321.0
        (rescored / "evaluations.json").write_text(json.dumps(cache))
    # its commands: this one, no training (a weights file alone does not say how to train it again)
    commands = (rescored / "table.md").read_text().split("## Commands")[1]
    assert "Training:" not in commands and "python benchmarks/full_schedule_table.py" in commands
    assert "Training:\n\n    python examples/mnist.py " in (out / "table.md").read_text()

    # a rerun takes what it scored before from evaluations.json, scores only new weights, and --final
    # scores the unfinished run from its latest weights
    cache_path = out / "evaluations.json"
    cache = json.loads(cache_path.read_text())
    epoch_one = next(e for e in cache["evaluations"] if e["file"].endswith("epoch-0001.pt"))
    epoch_one["nll"] = 123.456
    # an entry from before the images were spread over the split (no "selection") is not taken for one after
    epoch_two = next(e for e in cache["evaluations"] if e["file"].endswith("epoch-0002.pt"))
    epoch_two["nll"] = 654.321
    del epoch_two["selection"]
    cache_path.write_text(json.dumps(cache))
    torch.manual_seed(1)
    save_weights(unfinished / "weights" / "epoch-0003.pt", VAE(), read_weights(unfinished).config, epoch=3)
    result = table_script(*flags, "--final")
    assert result.returncode == 0, result.stderr
    curves = json.loads((out / "curve.json").read_text())["runs"]
    assert curves["mnist-iwae-k5-1layer"]["points"][1]["test_nll"] == 123.456
    assert curves["mnist-iwae-k5-1layer"]["points"][2]["test_nll"] == points[2]["test_nll"]  # scored again
    new_point = curves["unfinished"]["points"][3]
    assert new_point["epoch"] == 3
    expected = nll(unfinished / "weights" / "epoch-0003.pt", curve_test, 10)
    assert new_point["test_nll"] == pytest.approx(expected, rel=1e-5)
    forced = json.loads((out / "results.json").read_text())["runs"][1]
    assert forced["status"] == "unfinished, scored (--final)" and forced["epochs"] == 2
    assert forced["test_nll"] == pytest.approx(nll(unfinished, test, 20), rel=1e-5)
    pyro.set_rng_seed(0)
    units = active_units(pyro_iwae.load_model(unfinished).guide, test)
    assert forced["active_units"] == sum(int(u.sum()) for u in units.values())
    assert (out / "weights" / "unfinished.pt").exists()
    assert f"| 2 of 3280, unfinished, scored (--final) | {forced['test_nll']:.2f} ±" in (out / "table.md").read_text()

    # --rescore scores everything again
    result = table_script(*flags, "--rescore")
    assert result.returncode == 0, result.stderr
    curves = json.loads((out / "curve.json").read_text())["runs"]
    assert curves["mnist-iwae-k5-1layer"]["points"][1]["test_nll"] == pytest.approx(points[1]["test_nll"], abs=1e-9)

    # a run resumed on a fresh machine has lost its snapshots: their points stay, up to its latest epoch
    before = curves["unfinished"]["points"]
    for epoch in (1, 3):
        (unfinished / "weights" / f"epoch-000{epoch}.pt").unlink()
    result = table_script(*flags)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "curve.json").read_text())["runs"]["unfinished"]["points"] == before[:3]
    # but not those of an earlier run under the same name, restarted afresh: its losses differ
    write_history(unfinished / "history.csv", [history[0] | {"loss": history[0]["loss"] + 1}, history[1]])
    result = table_script(*flags)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "curve.json").read_text())["runs"]["unfinished"]["points"] == [before[0], before[2]]

    # a finished run restored from its kept checkpoint and metrics.json (full_schedule.sh): its history is in there
    loss = json.loads((out / "curve.json").read_text())["runs"]["mnist-iwae-k5-1layer"]["loss"]
    (finished / "history.csv").unlink()
    result = table_script(*flags)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "curve.json").read_text())["runs"]["mnist-iwae-k5-1layer"]["loss"] == loss

    # an unfinished run restored with no snapshot at all: the active units of its checkpoint (epoch 2)
    shutil.rmtree(unfinished / "weights")
    result = table_script(*flags)
    assert result.returncode == 0, result.stderr
    restored = json.loads((out / "results.json").read_text())["runs"][1]
    assert restored["latest_active_units"] == {"epoch": 2, "count": forced["active_units"]}
    assert f"| – | – | {forced['active_units']} at epoch 2 |" in (out / "table.md").read_text()


def test_table_script_refuses_a_bad_path_in_one_line(tmp_path):
    result = table_script(tmp_path / "nowhere", "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: no such run directory, checkpoint or weights file:")
    # a clone without runs/: the table's default runs say how to get them
    result = table_script(tmp_path / "runs" / "full-schedule" / "vae", "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "bash benchmarks/full_schedule.sh` restores the runs" in result.stderr


def full_schedule_sandbox(tmp_path, runs: str):
    """
    ``benchmarks/full_schedule.sh`` in ``tmp_path``, with ``runs`` as its list of runs and a ``python``
    that records the arguments of what the script starts instead of training. Returns ``script(*args)``,
    which runs the script and returns its output, and ``started()``, the arguments it last started a run with.
    """
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "full_schedule.sh", tmp_path / "benchmarks")
    (tmp_path / "benchmarks" / "full_schedule_runs.txt").write_text(runs)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(
        f'#!/bin/sh\n[ "$1" = -c ] && exec {sys.executable} "$@"\necho "$@" >> {tmp_path}/started\n'
    )
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")

    def script(*args):
        (tmp_path / "started").unlink(missing_ok=True)
        command = ["bash", str(tmp_path / "benchmarks" / "full_schedule.sh"), *args]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def started():
        for _ in range(100):  # the runs start in the background
            if (tmp_path / "started").exists():
                return (tmp_path / "started").read_text().split()
            time.sleep(0.1)
        raise AssertionError("no run was started")

    return script, started


def test_full_schedule_keeps_its_runs_across_a_fresh_machine(tmp_path):
    """
    ``full_schedule.sh --save`` keeps the checkpoints in the tree, a tree without ``runs/`` resumes
    from them, of a kept checkpoint and one in ``runs/`` the further one wins both ways, and a run
    still training is not started twice.
    """
    script, started = full_schedule_sandbox(
        tmp_path,
        "# name flags\n"
        "mnist-elbo-k1-1layer --objective elbo --particles 1\n"
        "mnist-iwae-k5-1layer --objective iwae --particles 5\n"
        "\n"
        "mnist-elbo-k1-1layer-glorot --objective elbo --particles 1 --init glorot\n",
    )
    kept = tmp_path / "benchmarks" / "results" / "table1-mnist-full-schedule" / "checkpoints"
    runs = tmp_path / "runs" / "full-schedule"

    def checkpoint(path, epochs):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(config={}, module={}, history=[{"epoch": i + 1} for i in range(epochs)]), path)

    def epochs(path):
        return len(torch.load(path)["history"])

    glorot = "mnist-elbo-k1-1layer-glorot"
    for name, trained in (("mnist-elbo-k1-1layer", 3280), ("mnist-iwae-k5-1layer", 970), (glorot, 3280)):
        checkpoint(runs / name / "checkpoint.pt", trained)
    for name in ("mnist-elbo-k1-1layer", glorot):
        (runs / name / "metrics.json").write_text("{}")
    assert "mnist-iwae-k5-1layer.pt: epoch 970" in script("--save")
    assert sorted(path.name for path in kept.iterdir()) == [
        "mnist-elbo-k1-1layer-glorot.metrics.json",
        "mnist-elbo-k1-1layer-glorot.pt",
        "mnist-elbo-k1-1layer.metrics.json",
        "mnist-elbo-k1-1layer.pt",
        "mnist-iwae-k5-1layer.pt",
    ]
    shutil.rmtree(tmp_path / "runs")  # a fresh machine
    out = script("DATA")
    assert "mnist-elbo-k1-1layer: finished" in out and "mnist-iwae-k5-1layer: restored from" in out
    arguments = started()
    assert arguments[:5] == ["examples/mnist.py", "--objective", "iwae", "--particles", "5"]
    assert {"--resume", "--compile", "DATA"} <= set(arguments)
    assert epochs(runs / "mnist-iwae-k5-1layer" / "checkpoint.pt") == 970
    # the finished run is restored, not run again: full_schedule_table.py reads it as before
    assert epochs(runs / "mnist-elbo-k1-1layer" / "checkpoint.pt") == 3280
    assert (runs / "mnist-elbo-k1-1layer" / "metrics.json").read_text() == "{}"

    # runs/ behind the kept checkpoint (a later session went on elsewhere): --save keeps the kept one,
    # and the run resumes from it; runs/ ahead of it (this machine went on): runs/'s is kept, and resumed
    iwae = "mnist-iwae-k5-1layer"
    checkpoint(runs / iwae / "checkpoint.pt", 900)
    assert f"{iwae}.pt: kept as it is (epoch 970" in script("--save")
    assert epochs(kept / f"{iwae}.pt") == 970
    assert f"{iwae}: restored from" in script("DATA") and "--resume" in started()
    assert epochs(runs / iwae / "checkpoint.pt") == 970
    checkpoint(runs / iwae / "checkpoint.pt", 1000)
    assert "restored" not in script("DATA") and "--resume" in started()
    assert epochs(runs / iwae / "checkpoint.pt") == 1000
    assert f"{iwae}.pt: epoch 1000" in script("--save")
    assert epochs(kept / f"{iwae}.pt") == 1000

    # a run still training is left alone: not started twice, not restored over
    checkpoint(runs / iwae / "checkpoint.pt", 900)
    training = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(runs / iwae)])
    try:
        (runs / iwae / "pid").write_text(f"{training.pid}\n")
        assert f"{iwae}: still training (pid {training.pid})" in script("DATA")
        time.sleep(1)  # what the script starts runs in the background
        assert not (tmp_path / "started").exists() and epochs(runs / iwae / "checkpoint.pt") == 900
    finally:
        training.kill()

    # each run with its own flags: the VAE initialised as Burda et al.'s code does
    training.wait()
    (runs / iwae / "metrics.json").write_text("{}")  # finished: the one run to start is the other
    shutil.rmtree(runs / glorot)
    (kept / f"{glorot}.pt").unlink()
    (kept / f"{glorot}.metrics.json").unlink()
    assert f"{glorot}: started" in script("DATA")
    assert " ".join(started()).startswith("examples/mnist.py --objective elbo --particles 1 --init glorot --schedule")


def test_a_count_of_images_is_spread_over_the_split():
    """MNIST's files are ordered (its first 1000 test images are easier than the rest): every n-th, not the first."""
    images = torch.arange(10_000)
    assert torch.equal(full_schedule_table.spread(images, 1000), torch.arange(0, 10_000, 10))
    assert torch.equal(full_schedule_table.spread(images[:10], 3), torch.tensor([0, 3, 6]))
    assert torch.equal(full_schedule_table.spread(images[:10], None), images[:10])
    assert torch.equal(full_schedule_table.spread(images[:10], 20), images[:10])
    assert torch.equal(full_schedule_table.spread(images[:10], 6), torch.tensor([0, 1, 3, 5, 6, 8]))  # not the first 6


def test_a_full_schedule_run_lists_only_its_own_flags(tmp_path):
    """The flags full_schedule.sh gives every run are named once in table.md, not in a finished run's command."""
    metrics = {
        "config": {"objective": "elbo", "particles": 1, "compile": True, "snapshot_every": 100, "progress": False}
    }
    for parent, script_flags in (("full-schedule", False), ("grid", True)):
        run = full_schedule_table.Run("vae", tmp_path / parent / "vae", {"init": "glorot"}, metrics=metrics)
        command = full_schedule_table.training_command(run, "../shared/data")
        assert "--init glorot" in command and "--data-dir ../shared/data" in command
        for flag in ("--compile", "--snapshot-every 100", "--no-progress"):
            assert (flag in command) == script_flags, (parent, flag, command)


def test_the_table_names_the_flags_full_schedule_gives_every_run(tmp_path):
    """SCRIPT_FIELDS and the table's sentence on them are what full_schedule.sh adds to each run's own flags."""
    script, started = full_schedule_sandbox(tmp_path, "vae --objective elbo --particles 1 --init glorot\n")
    script("DATA")
    arguments = started()
    assert arguments[0] == "examples/mnist.py"
    args = RunConfig.add_arguments(argparse.ArgumentParser()).parse_args(arguments[1:])
    defaults = {spec.name: spec.default for spec in dataclasses.fields(RunConfig)}
    added = {name for name, value in vars(args).items() if value != defaults[name]}
    # the run's own flags; the schedule, which each run's command keeps; where the run reads and writes
    added -= {"objective", "particles", "init", "schedule", "data_dir", "out"}
    assert added == set(full_schedule_table.SCRIPT_FIELDS)
    for name in full_schedule_table.SCRIPT_FIELDS:
        flag = " ".join(command_line({name: getattr(args, name)}, always=()))
        assert f"`{flag}`" in full_schedule_table.SCRIPT_FLAGS, flag


def test_the_readme_shows_the_committed_table():
    """The README's paper-budget table is the committed table.md's, row for row."""
    table_md = ROOT / full_schedule_table.OUT / "table.md"
    rows = [line for line in table_md.read_text().splitlines() if line.startswith("|")]
    readme = (ROOT / "README.md").read_text().splitlines()
    assert rows[0] in readme, "README.md lacks the table of table.md"
    start = readme.index(rows[0])
    assert readme[start : start + len(rows)] == rows, "README.md's table differs from table.md's: copy it over"

"""
Sharing the work between processes: the evaluator's per-batch seeding, the sharding helpers of
``pyro_iwae.experiments.distributed``, and ``examples/evaluate.py`` and ``examples/reproduce_table.py``
under ``torchrun`` with 2 gloo processes against 1 process.
"""

import csv
import dataclasses
import json
import re
import socket
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from mnist import main as train_and_evaluate

from pyro_iwae.evaluation import batch_seed, log_likelihood
from pyro_iwae.experiments import distributed
from pyro_iwae.experiments import grid as grid_module
from pyro_iwae.experiments.config import RunConfig
from pyro_iwae.experiments.distributed import all_gather, balanced_shares, process_group, shard
from pyro_iwae.experiments.grid import cell_cost, grid, run_grid
from pyro_iwae.models import VAE


@pytest.fixture
def small_vae():
    torch.manual_seed(0)
    return VAE((30,), (4,)), torch.bernoulli(torch.full((23, 784), 0.3))


def test_seeded_batches_give_the_same_estimates_whichever_are_scored(small_vae):
    vae, x = small_vae  # 5 batches of 5 rows: 5, 5, 5, 5, 3
    whole = log_likelihood(vae.model, vae.guide, x, num_particles=20, batch_size=5, seed=7)
    rows = [range(5 * i, min(5 * i + 5, 23)) for i in range(5)]
    some = log_likelihood(vae.model, vae.guide, x, num_particles=20, batch_size=5, seed=7, batch_indices=[4, 1])
    assert torch.equal(some.log_likelihood, whole.log_likelihood[[*rows[4], *rows[1]]])
    assert torch.equal(some.elbo, whole.elbo[[*rows[4], *rows[1]]])
    # two processes' shards, concatenated in rank order, are the whole
    shards = [
        log_likelihood(vae.model, vae.guide, x, num_particles=20, batch_size=5, seed=7, batch_indices=shard(5, r, 2))
        for r in range(2)
    ]
    assert torch.equal(torch.cat([s.log_likelihood for s in shards]), whole.log_likelihood)
    # another seed draws other samples; the same seed with another batch size does too
    other = log_likelihood(vae.model, vae.guide, x, num_particles=20, batch_size=5, seed=8)
    assert (other.elbo - whole.elbo).abs().min() > 0
    regrouped = log_likelihood(vae.model, vae.guide, x, num_particles=20, batch_size=10, seed=7)
    assert not torch.equal(regrouped.elbo[10:], whole.elbo[10:])


def test_a_seeded_evaluation_leaves_the_callers_random_state_alone(small_vae):
    vae, x = small_vae
    torch.manual_seed(1)
    log_likelihood(vae.model, vae.guide, x, num_particles=4, batch_size=5, seed=3)
    after_seeded = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after_seeded)
    # without a seed it draws from the caller's stream, batch after batch, as before
    torch.manual_seed(1)
    unseeded = log_likelihood(vae.model, vae.guide, x, num_particles=4, batch_size=5)
    torch.manual_seed(1)
    assert torch.equal(log_likelihood(vae.model, vae.guide, x, num_particles=4, batch_size=5).elbo, unseeded.elbo)
    assert not torch.equal(torch.rand(3), after_seeded)


def test_batch_seeds_are_distinct_and_bad_arguments_are_named(small_vae):
    vae, x = small_vae
    seeds = {batch_seed(seed, index) for seed in range(20) for index in range(20)}
    assert len(seeds) == 400 and all(0 <= s < 2**32 for s in seeds)
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        log_likelihood(vae.model, vae.guide, x, num_particles=4, seed=-1)
    with pytest.raises(IndexError, match=r"batch_indices \[5\] are not among the 5 batches of 23 rows"):
        log_likelihood(vae.model, vae.guide, x, num_particles=4, batch_size=5, batch_indices=[0, 5])
    # a process with no batch (more processes than batches) scores nothing
    empty = log_likelihood(vae.model, vae.guide, x, num_particles=4, batch_size=5, seed=0, batch_indices=[])
    assert empty.log_likelihood.shape == empty.elbo.shape == (0,)


def test_shards_are_contiguous_blocks_in_rank_order():
    for num_items, num_shares in ((5, 2), (100, 3), (2, 4)):
        blocks = [shard(num_items, r, num_shares) for r in range(num_shares)]
        assert [i for block in blocks for i in block] == list(range(num_items))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert shard(7) == range(7)  # outside a process group: all of it


def test_balanced_shares_deal_the_costliest_job_to_the_least_loaded_share():
    # longest processing time first: 5 -> 0, 4 -> 1, 2 -> 1, 1 -> 0
    assert balanced_shares([1, 5, 2, 4], 2) == [0, 0, 1, 1]
    assert balanced_shares([3, 3, 3], 2) == [0, 1, 0]  # ties: the lowest rank, jobs in their order
    assert balanced_shares([1, 2], 4) == [1, 0]


def test_the_paper_grid_is_shared_within_a_few_percent():
    cells = grid(["elbo", "iwae", "iwae-stl", "iwae-dreg"], [1, 5, 50], [1, 2], [0])
    base = RunConfig(schedule="burda", plots=False)
    runs = sorted({c.trained_as for c in cells}, key=cells.index)
    costs = [
        cell_cost(dataclasses.replace(base, objective=c.objective, particles=c.particles, layers=c.layers))
        for c in runs
    ]
    for num_shares in (2, 3, 4):
        shares = balanced_shares(costs, num_shares)
        totals = [sum(c for c, s in zip(costs, shares) if s == r) for r in range(num_shares)]
        assert max(totals) < 1.05 * sum(costs) / num_shares
    # an epoch of k = 50 costs more than one of k = 5, two layers more than one
    k5, k50 = (cell_cost(dataclasses.replace(base, particles=k)) for k in (5, 50))
    assert k5 < k50 < cell_cost(dataclasses.replace(base, particles=50, layers=2))


def runs_trained_as(rank, cells, out, monkeypatch):
    """The runs that :func:`run_grid` trains as process ``rank`` of 2 (``all_gather`` brings the other's)."""
    runs = sorted({c.trained_as for c in cells}, key=cells.index)
    configs = []

    def record(config):
        configs.append(config)
        return {"config": dataclasses.asdict(config)}

    def gather(results):
        return [results, {cell: {"other rank": True} for cell in runs if cell not in results}]

    monkeypatch.setattr(grid_module, "rank", lambda: rank)
    monkeypatch.setattr(grid_module, "world_size", lambda: 2)
    monkeypatch.setattr(grid_module, "all_gather", gather)
    results = run_grid(cells, RunConfig(schedule="burda", progress=False), out, record)
    assert list(results) == cells
    return {(c.objective, c.particles, c.layers) for c in configs}


def test_each_rank_trains_its_own_share_of_the_grid(tmp_path, monkeypatch):
    cells = grid(["elbo", "iwae"], [1, 5, 50], [1, 2], [0])
    first, second = (runs_trained_as(rank, cells, tmp_path, monkeypatch) for rank in (0, 1))
    assert not first & second and len(first | second) == 10
    assert first == runs_trained_as(0, cells, tmp_path, monkeypatch)  # a rerun gives rank 0 the same cells


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_process_group_of_one_and_no_group_at_all(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with process_group(torch.device("cpu")) as device:
        assert device == torch.device("cpu") and (distributed.rank(), distributed.world_size()) == (0, 1)
        assert all_gather("mine") == ["mine"] and not distributed.is_distributed()
    environment = dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with process_group(torch.device("cpu")):
        assert distributed.is_distributed() and distributed.world_size() == 1
        assert all_gather({"x": 1}) == [{"x": 1}]
    assert not distributed.is_distributed()


def run(script, *flags, processes=None):
    """``python script`` (``processes=None``), or ``torchrun --standalone --nproc_per_node processes script``."""
    launcher = [] if processes is None else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    launcher += [] if processes is None else [str(processes)]
    command = [sys.executable, *launcher, str(ROOT / "examples" / script), "--no-progress", *map(str, flags)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    """One epoch on 200 images, scored with K = 10 on 50 test images in 5 batches of 10."""
    out = tmp_path_factory.mktemp("run")
    config = RunConfig(
        particles=2, epochs=1, train_size=200, test_size=50, eval_particles=10, eval_batch_size=10,
        data_dir=str(data_dir), out=str(out), plots=False, progress=False,
    )  # fmt: skip
    return out, train_and_evaluate(config)


def per_image(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return torch.tensor([[float(row["log_likelihood"]), float(row["elbo"])] for row in rows], dtype=torch.float64)


def test_two_processes_score_what_one_does(tiny_run, data_dir, tmp_path):
    run_dir, metrics = tiny_run
    flags = [run_dir, "--test-size", 50, "--eval-particles", 10, "--eval-batch-size", 10, "--data-dir", data_dir]
    scores = {}
    for processes in (None, 2):
        out, csv_path = tmp_path / f"{processes}.json", tmp_path / f"{processes}.csv"
        result = run("evaluate.py", *flags, "--out", out, "--per-image", csv_path, processes=processes)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count('"test_log_likelihood"') == 1  # rank 0 alone prints
        scores[processes] = json.loads(out.read_text()), per_image(csv_path)
    (one, one_per_image), (two, two_per_image) = scores[None], scores[2]
    assert (one["processes"], two["processes"]) == (1, 2) and one_per_image.shape == (50, 2)
    # the same samples: the per-image estimates agree to float rounding
    assert (one_per_image - two_per_image).abs().max() < 1e-4
    assert two["test_log_likelihood"] == pytest.approx(one["test_log_likelihood"], abs=1e-4)
    # and examples/mnist.py, scoring with the same seed and batch size, reported the same numbers
    assert one["test_log_likelihood"] == metrics["test_log_likelihood"]
    assert one["test_elbo"] == metrics["test_elbo"] and one["active_units"] == metrics["active_units"]
    assert (one["images"], one["eval_particles"], one["seed"], one["split"]) == (50, 10, 0, "test")
    assert one["config"]["particles"] == 2 and one["epoch"] == 1 and one["eval_seconds"] > 0


def test_the_evaluation_script_names_bad_input_in_one_line(tmp_path, data_dir, tiny_run):
    missing = run("evaluate.py", tmp_path / "nowhere", "--data-dir", data_dir)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("error: no such run directory, checkpoint or weights file:")
    run_dir, _ = tiny_run
    too_many = run("evaluate.py", run_dir, "--split", "train", "--test-size", 60001, "--data-dir", data_dir)
    assert too_many.returncode == 1 and "Traceback" not in too_many.stderr
    assert "--test-size 60001 is more than the 60,000 train images of mnist" in too_many.stderr


def table_without_timings(path):
    """``table.md`` without its command line and the hours it took."""
    text = re.sub(r"[\d.]+ h of training", "_ h of training", path.read_text())
    return [line for line in text.splitlines() if not line.startswith("Command:")]


def test_a_grid_over_two_processes_writes_the_table_of_one(tmp_path, data_dir):
    flags = ["--objectives", "elbo", "iwae", "--particles", 1, 2, "--layers", 1, "--epochs", 1]
    flags += ["--train-size", 200, "--test-size", 40, "--eval-particles", 10, "--data-dir", data_dir]
    for processes in (None, 2):
        result = run("reproduce_table.py", *flags, "--out", tmp_path / str(processes), processes=processes)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("# Burda et al. (2016) Table 1") == 1  # rank 0 alone writes and prints
    assert table_without_timings(tmp_path / "2" / "table.md") == table_without_timings(tmp_path / "None" / "table.md")
    one, two = (json.loads((tmp_path / p / "results.json").read_text())["runs"] for p in ("None", "2"))
    assert [r["test_log_likelihood"] for r in two] == [r["test_log_likelihood"] for r in one]
    assert len(one) == 4 and len({json.dumps(r["config"]) for r in one}) == 3  # 4 cells, 3 models

    # the same command again finds every cell finished: it only assembles the table
    finished = {path: path.stat().st_mtime_ns for path in (tmp_path / "2").glob("*/metrics.json")}
    result = run("reproduce_table.py", *flags, "--out", tmp_path / "2", processes=2)
    assert result.returncode == 0, result.stderr
    assert {path: path.stat().st_mtime_ns for path in finished} == finished
    assert table_without_timings(tmp_path / "2" / "table.md") == table_without_timings(tmp_path / "None" / "table.md")

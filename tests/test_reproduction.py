import dataclasses
import json
import subprocess
import sys

import pytest
from conftest import ROOT
from mnist import main as train_and_evaluate

from pyro_iwae.experiments import grid as grid_module
from pyro_iwae.experiments.config import RunConfig
from pyro_iwae.experiments.grid import Cell, format_table, grid, run_grid


def test_grid_has_twelve_cells_and_trains_ten_models():
    cells = grid(["elbo", "iwae"], [1, 5, 50], [1, 2], [0])
    assert len(cells) == 12
    # IWAE with k = 1 is the VAE: its cell reuses the VAE's run
    assert len({c.trained_as for c in cells}) == 10
    assert Cell("iwae", 1, 2, 0).trained_as == Cell("elbo", 1, 2, 0)


def fake_metrics(nll, active_units):
    return {"test_log_likelihood": -nll, "active_units": active_units}


def test_table_layout_and_paper_numbers():
    results = {
        Cell("elbo", 5, 1, 0): fake_metrics(90.0, 20),
        Cell("elbo", 5, 1, 1): fake_metrics(92.0, 22),
        Cell("iwae", 5, 1, 0): fake_metrics(88.5, 30),
    }
    lines = format_table(results, "mnist").splitlines()
    assert lines[0] == "| layers | k | VAE: NLL | paper | active units | IWAE: NLL | paper | active units |"
    # mean ± sample sd over seeds: 91 ± 1.41; Burda et al. Table 1: 86.47 (VAE) and 85.54 (IWAE) for k = 5
    assert lines[2] == "| 1 | 5 | 91.00 ± 1.41 | 86.47 | 21 ± 1 | 88.50 | 85.54 | 30 |"
    binarized = format_table({Cell("elbo", 50, 1, 0): fake_metrics(95.0, 9)}, "binarized-mnist")
    assert "| 1 | 50 | 95.00 | – | 9 |" in binarized  # appendix D gives no VAE number


def test_table_has_one_row_per_depth_and_k():
    results = {Cell("elbo", k, n, 0): fake_metrics(100.0 - k - n, 10 * n) for k in (1, 5) for n in (1, 2)}
    rows = format_table(results, "mnist").splitlines()[2:]
    # Burda et al. Table 1, 2 layers, VAE: 85.33 (k = 1) and 85.01 (k = 5)
    assert rows == [
        "| 1 | 1 | 98.00 | 86.76 | 10 |",
        "| 1 | 5 | 94.00 | 86.47 | 10 |",
        "| 2 | 1 | 97.00 | 85.33 | 20 |",
        "| 2 | 5 | 93.00 | 85.01 | 20 |",
    ]


def test_gradient_estimators_get_their_own_columns_and_runs():
    cells = grid(["iwae", "iwae-stl", "iwae-dreg"], [1, 5], [1], [0])
    # only IWAE k = 1 is the VAE; STL and DReG at k = 1 are other gradient estimators of the ELBO
    assert {c.trained_as.objective for c in cells if c.particles == 1} == {"elbo", "iwae-stl", "iwae-dreg"}
    results = {Cell("iwae-dreg", 5, 1, 0): fake_metrics(87.0, 40), Cell("iwae", 5, 1, 0): fake_metrics(88.0, 35)}
    lines = format_table(results, "mnist").splitlines()
    # the paper has no DReG numbers, so DReG gets no "paper" column
    assert lines[0] == "| layers | k | IWAE: NLL | paper | active units | IWAE-DReG: NLL | active units |"
    assert lines[2] == "| 1 | 5 | 88.00 | 85.54 | 35 | 87.00 | 40 |"


def test_the_previous_runs_config_fills_in_fields_added_since(tmp_path):
    """A run made before --prior and --guide existed is still a finished standard-normal, Gaussian-guide run."""
    config = RunConfig(out=str(tmp_path))
    old_config = {k: v for k, v in config.__dict__.items() if k not in ("prior", "guide")}
    (tmp_path / "metrics.json").write_text(json.dumps({"config": old_config}))
    assert grid_module._finished(tmp_path, config) is not None
    assert grid_module._finished(tmp_path, RunConfig(out=str(tmp_path), prior="vamp")) is None


@pytest.fixture
def tiny(data_dir):
    return RunConfig(
        data_dir=str(data_dir),
        epochs=1,
        train_size=200,
        test_size=50,
        eval_particles=10,
        plots=False,
        progress=False,
    )


class Crash(Exception):
    """Stands for the process dying in the middle of the grid."""


def test_an_interrupted_grid_resumes(tmp_path, tiny, monkeypatch):
    cells = grid(["elbo", "iwae"], [2], [1], [0])
    calls, crash_pending = [], [True]

    def interrupted_on_second_run(config):
        calls.append((config.objective, config.resume))
        if len(calls) == 2 and crash_pending:
            crash_pending.pop()
            raise Crash
        return train_and_evaluate(config)

    with pytest.raises(Crash):
        run_grid(cells, tiny, tmp_path, interrupted_on_second_run)
    assert (tmp_path / "elbo-k2-1layer-seed0" / "metrics.json").exists()

    calls.clear()
    results = run_grid(cells, tiny, tmp_path, interrupted_on_second_run)
    assert calls == [("iwae", False)]  # the finished VAE is skipped
    assert [m["config"]["objective"] for m in results.values()] == ["elbo", "iwae"]

    # more epochs: both resume from their checkpoints instead of starting afresh
    calls.clear()
    longer = run_grid(cells, dataclasses.replace(tiny, epochs=2), tmp_path, interrupted_on_second_run)
    assert calls == [("elbo", True), ("iwae", True)]
    assert [m["epochs"] for m in longer.values()] == [2, 2]


@pytest.mark.parametrize(
    "dataset, paper_numbers",
    [
        ("mnist", ["86.47", "85.54", "3280 epochs (9.8M updates)"]),  # 3280 passes of 3000 batches
        ("binarized-mnist", ["| 5 | ", "| – |", "87.63", "3280 epochs (8.2M updates)"]),  # appendix D: IWAE only
    ],
)
def test_the_script_writes_table_results_and_pictures(tmp_path, data_dir, dataset, paper_numbers):
    command = [
        sys.executable,
        str(ROOT / "examples" / "reproduce_table.py"),
        "--dataset",
        dataset,
        "--data-dir",
        str(data_dir),
        "--particles",
        "5",
        "--layers",
        "1",
        "--epochs",
        "1",
        "--train-size",
        "200",
        "--test-size",
        "40",
        "--eval-particles",
        "10",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "table.md").read_text()
    assert "| 5 |" in table and all(n in table for n in paper_numbers) and "Command: `python examples" in table
    assert f"on {dataset}" in table
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [(r["cell"]["objective"], r["config"]["particles"]) for r in runs] == [("elbo", 5), ("iwae", 5)]
    pictures = ("nll_vs_k.png", "training_curves.png", "reconstructions_k5_1layer.png", "traversal_k5_1layer.png")
    for name in (*pictures, "unit_variances_k5_1layer.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name


def test_each_cell_gets_the_options_of_its_own_objective(tmp_path):
    """--groups goes to the MIWAE and PIWAE cells, --beta to the CIWAE ones, neither to the others."""
    configs = []

    def record(config):
        configs.append(config)
        return {"config": dataclasses.asdict(config)}

    cells = grid(["iwae", "miwae", "ciwae", "piwae"], [5], [1], [0])
    run_grid(cells, RunConfig(progress=False), tmp_path, record, {"groups": 4, "beta": 0.25})
    options = [(c.objective, c.groups, c.beta) for c in configs]
    assert options == [("iwae", None, None), ("miwae", 4, None), ("ciwae", None, 0.25), ("piwae", 4, None)]


def test_an_iwae_grid_with_k_1_trains_the_vae_for_that_cell(tmp_path):
    """IWAE with k = 1 is the VAE: its cell is served by an elbo run even when elbo is not a column."""
    configs = []

    def record(config):
        configs.append(config)
        return {"config": dataclasses.asdict(config)}

    results = run_grid(grid(["iwae"], [1, 5], [1], [0]), RunConfig(progress=False), tmp_path, record)
    assert [(c.objective, c.particles) for c in configs] == [("elbo", 1), ("iwae", 5)]
    assert [(cell.objective, cell.particles) for cell in results] == [("iwae", 1), ("iwae", 5)]

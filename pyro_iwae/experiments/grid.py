"""
The grid of Burda et al. (2016), Table 1: objective x k x layers, trained and
scored by a function of one :class:`~pyro_iwae.experiments.config.RunConfig` (``main`` of
``examples/mnist.py``), laid out as the paper lays it out.

Each cell is one run directory. A cell whose ``metrics.json`` matches the
requested configuration is skipped, and one with a checkpoint resumes from it,
so an interrupted grid (or a grid given more epochs) continues where it stopped.
IWAE with k = 1 is the VAE objective (the same gradient on the same samples),
so that cell reuses the VAE's run, as the paper's table repeats its number.
The IWAE bound trained with the STL and DReG gradient estimators
(:mod:`pyro_iwae.objectives`) can be added as further columns.

Under ``torchrun`` (:mod:`~pyro_iwae.experiments.distributed`) every process trains and
scores a share of the cells, balanced by :func:`cell_cost`, and the metrics are gathered.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from pyro_iwae import plots
from pyro_iwae.atomic import atomic_open
from pyro_iwae.checkpoints import load_model, read_history
from pyro_iwae.data import num_images
from pyro_iwae.evaluation import ACTIVITY_THRESHOLD, unit_variances
from pyro_iwae.experiments.config import OBJECTIVE_OPTIONS, PAPER_BATCH_SIZE, RunConfig
from pyro_iwae.experiments.distributed import all_gather, balanced_shares, rank, world_size
from pyro_iwae.experiments.outputs import write_json
from pyro_iwae.objectives import OBJECTIVES, objective_options
from pyro_iwae.training import burda_learning_rates

#: test NLL in nats: {(dataset, layers, objective): {k: nll}}; Burda et al. (2016) Table 1, and appendix D
#: for the fixed binarization (which reports the one-layer IWAE only)
PAPER_NLL = {
    ("mnist", 1, "elbo"): {1: 86.76, 5: 86.47, 50: 86.35},
    ("mnist", 1, "iwae"): {1: 86.76, 5: 85.54, 50: 84.78},
    ("mnist", 2, "elbo"): {1: 85.33, 5: 85.01, 50: 84.78},
    ("mnist", 2, "iwae"): {1: 85.33, 5: 83.89, 50: 82.90},
    ("binarized-mnist", 1, "iwae"): {1: 88.71, 5: 87.63, 50: 87.10},
}
#: one colour per objective, the same in every plot of the grid
COLORS = {objective: f"C{i}" for i, objective in enumerate(OBJECTIVES)}
#: the objectives of Burda et al.'s Table 1, the grid's default
TABLE_OBJECTIVES = ("elbo", "iwae")
#: fields that may differ between the requested configuration and a finished cell
RUN_ONLY_FIELDS = ("resume", "progress", "plots", "out", "device")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One model of the grid: an objective, its k, a depth and a seed."""

    objective: str
    particles: int
    layers: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.objective}-k{self.particles}-{self.layers}layer-seed{self.seed}"

    @property
    def trained_as(self) -> Cell:
        """The cell whose run this cell's numbers come from (IWAE k=1 is the VAE)."""
        return dataclasses.replace(self, objective="elbo") if (self.objective, self.particles) == ("iwae", 1) else self


def grid(
    objectives: Sequence[str], particles: Sequence[int], layers: Sequence[int], seeds: Sequence[int]
) -> list[Cell]:
    """Every cell, in the order they are trained: cheaper ones first."""
    return [Cell(o, k, n, s) for s in seeds for n in layers for k in sorted(particles) for o in objectives]


def _finished(out: Path, config: RunConfig) -> dict | None:
    metrics_path = out / "metrics.json"
    if not metrics_path.exists():
        return None
    metrics = json.loads(metrics_path.read_text())
    wanted = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUN_ONLY_FIELDS}
    # a field added to RunConfig after the run was made has its default there
    done_config = {**dataclasses.asdict(RunConfig()), **metrics["config"]}
    done = {k: v for k, v in done_config.items() if k not in RUN_ONLY_FIELDS}
    return metrics if done == wanted else None


def cell_cost(config: RunConfig) -> float:
    """
    A rough cost of training and scoring one cell, in passes of one particle of one image through the
    networks, to share the cells out between processes: an epoch costs ``10 + k`` per training image
    (k particles per image, M k for MIWAE and PIWAE), scoring ``0.4 K`` per test image, and two stochastic
    layers 1.5 times one: fitted to the seconds per epoch and per evaluation of the README's "Cost on this
    machine". The gradient estimator, prior and guide are left out.
    """
    epochs = len(config.learning_rates())
    train_images = config.train_size or num_images(config.dataset, "train")
    test_images = config.test_size or num_images(config.dataset, "test")
    particles = config.particles * (config.groups or 1)
    training, scoring = epochs * train_images * (10 + particles), 0.4 * test_images * config.eval_particles
    return 1.5 ** (config.layers - 1) * (training + scoring)


def _cell_config(cell: Cell, base: RunConfig, run_dir: Path, objective_flags: dict) -> RunConfig:
    """The configuration of one cell's run: ``base`` with the cell's objective (and its options), k, depth and seed."""
    takes = [OBJECTIVE_OPTIONS[option] for option in objective_options(cell.objective)]
    options = {name: objective_flags.get(name) if name in takes else None for name in OBJECTIVE_OPTIONS.values()}
    return dataclasses.replace(
        base,
        **options,
        objective=cell.objective,
        particles=cell.particles,
        layers=cell.layers,
        seed=cell.seed,
        out=str(run_dir),
        resume=(run_dir / "checkpoint.pt").exists(),
    )


def run_grid(
    cells: list[Cell],
    base: RunConfig,
    out: str | Path,
    train_and_evaluate: Callable[[RunConfig], dict],
    objective_flags: dict | None = None,
) -> dict[Cell, dict]:
    """
    Train and evaluate every cell (skipping finished ones, resuming interrupted
    ones) under ``out/<cell name>/``, with an overall progress bar.

    In a process group (``torchrun``, :mod:`~pyro_iwae.experiments.distributed`), each process runs
    its share of the cells, dealt out by :func:`~pyro_iwae.experiments.distributed.balanced_shares` of
    their :func:`cell_cost` (the same cells and processes always give the same shares), and then
    waits for the others, to return every cell's metrics on every process; only rank 0 shows progress.

    :param base: the configuration shared by every cell (dataset, budget, evaluation).
    :param train_and_evaluate: trains and scores the model of one configuration, and returns its metrics.
    :param objective_flags: the objectives' options by field name (``{"groups": 8, "beta": 0.5}``): each cell
        gets those its objective takes.
    :returns: each cell's metrics.
    """
    out, objective_flags = Path(out), objective_flags or {}
    base = dataclasses.replace(base, progress=base.progress and rank() == 0)
    # in the order of the first cell each run serves (an iwae k = 1 cell is served by the elbo run)
    runs = list(dict.fromkeys(cell.trained_as for cell in cells))
    configs = [_cell_config(cell, base, out / cell.name, objective_flags) for cell in runs]
    shares = balanced_shares([cell_cost(config) for config in configs], world_size())
    mine = [(cell, config) for cell, config, share in zip(runs, configs, shares) if share == rank()]
    results = {}
    for cell, config in tqdm(mine, desc="grid", unit="model", disable=not base.progress):
        results[cell] = _finished(Path(config.out), config) or train_and_evaluate(config)
    results = {cell: metrics for share in all_gather(results) for cell, metrics in share.items()}
    return {cell: results[cell.trained_as] for cell in cells}


def _seeds(results: dict[Cell, dict], objective: str, particles: int, layers: int) -> list[dict]:
    """The metrics of one cell of the table, one per seed."""
    return [m for c, m in results.items() if (c.objective, c.particles, c.layers) == (objective, particles, layers)]


def _summary(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def format_table(results: dict[Cell, dict], dataset: str) -> str:
    """
    Markdown in the paper's layout: one row per (stochastic layers, k), for each objective our
    test NLL and active units, with the paper's NLL beside ours for the objectives of its Table 1.
    """
    cells = list(results)
    objectives = [o for o in OBJECTIVES if any(c.objective == o for c in cells)]
    header = ["layers", "k"]
    for o in objectives:
        header += [f"{OBJECTIVES[o].label}: NLL"] + ["paper"] * (o in TABLE_OBJECTIVES) + ["active units"]
    rows = []
    for n in sorted({c.layers for c in cells}):
        for k in sorted({c.particles for c in cells}):
            row = [str(n), str(k)]
            for o in objectives:
                metrics = _seeds(results, o, k, n)
                row.append(_summary([-m["test_log_likelihood"] for m in metrics]) if metrics else "")
                if o in TABLE_OBJECTIVES:
                    paper = PAPER_NLL.get((dataset, n, o), {}).get(k)
                    row.append(f"{paper:.2f}" if paper else "–")
                row.append(_summary([m["active_units"] for m in metrics], 0) if metrics else "")
            rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def caption(results: dict[Cell, dict], dataset: str, command: str) -> str:
    """The budget behind the table: epochs, updates, wall time, device, evaluation."""
    runs = {json.dumps(m["config"], sort_keys=True): m for m in results.values()}.values()
    first = next(iter(runs))
    batch_size = first["config"]["batch_size"]
    updates = first["epochs"] * -(-first["train_size"] // batch_size)
    hours = sum(m["train_seconds"] + m["eval_seconds"] for m in runs) / 3600
    seeds = sorted({c.seed for c in results})
    paper_epochs = len(burda_learning_rates())
    paper_updates = paper_epochs * -(-num_images(dataset, "train") // PAPER_BATCH_SIZE)  # all training images
    return (
        f"Test negative log-likelihood (nats, lower is better) on {dataset}, estimated with K ="
        f" {first['config']['eval_particles']} importance samples per image on the first {first['test_size']} test"
        " images"
        f" (standard error over images ≈ {statistics.mean(m['test_log_likelihood_stderr'] for m in runs):.2f}"
        f" nats). Budget per model: {first['epochs']} epochs of {first['train_size']} images"
        f" ({first['config']['schedule']} schedule, batch {batch_size}, {updates} updates); the paper"
        f" trains for {paper_epochs} epochs ({paper_updates / 1e6:.1f}M updates). {len(runs)} models, seeds {seeds},"
        f" {hours:.1f} h of training and"
        f" evaluation in all on {first['device']} (torch {first['torch_version']}, pyro {first['pyro_version']})."
        f" IWAE with k = 1 is the VAE objective, so that row repeats the VAE's model.{_estimators_note(results)}"
        " 'paper': Burda et al. (2016), Table 1 (appendix D for binarized-mnist); 'active units':"
        f" Var_x(E_q[z_u|x]) > {ACTIVITY_THRESHOLD}, summed over layers.\n\nCommand: `{command}`"
    )


def _estimators_note(results: dict[Cell, dict]) -> str:
    objectives = {c.objective for c in results}
    note = ""
    if objectives & {"iwae-stl", "iwae-dreg"}:
        note += (
            " IWAE-STL and IWAE-DReG train the IWAE bound with the sticking-the-landing (Roeder et al., 2017) and"
            " doubly reparameterized (Tucker et al., 2019) gradients for the guide; the paper has no numbers for them."
        )
    if objectives & {"miwae", "ciwae", "piwae"}:
        options = {
            (m["config"]["objective"], m["config"].get("groups"), m["config"].get("beta")) for m in results.values()
        }
        settings = ", ".join(f"{o}: M = {g}" if g else f"{o}: beta = {b}" for o, g, b in sorted(options) if g or b)
        note += (
            " MIWAE(M, k), CIWAE(beta) and PIWAE(M, k) are the objectives of Rainforth et al. (2018), k particles per"
            f" bound ({settings})."
        )
    return note


def plot_nll_vs_k(results: dict[Cell, dict], dataset: str, path: str | Path) -> None:
    """
    Test NLL against k for each objective (one colour each) and depth (1 layer: solid
    line and circles, 2 layers: dashed line and triangles); the paper's values dotted,
    with hollow markers.
    """
    figure = Figure(figsize=(6, 4.5))
    axes = figure.subplots()
    for n, linestyle, marker in ((1, "-", "o"), (2, "--", "^")):
        for objective, color in COLORS.items():
            ks = sorted({c.particles for c in results if (c.objective, c.layers) == (objective, n)})
            if not ks:
                continue
            nll = [statistics.mean(-m["test_log_likelihood"] for m in _seeds(results, objective, k, n)) for k in ks]
            label = f"{OBJECTIVES[objective].label}, {n} layer{'s' * (n > 1)}"
            axes.plot(ks, nll, linestyle=linestyle, marker=marker, color=color, label=label)
            paper = PAPER_NLL.get((dataset, n, objective), {})
            if paper:
                axes.plot(list(paper), list(paper.values()), ":", marker=marker, color=color, fillstyle="none")
    axes.plot([], [], ":", marker="o", color="grey", fillstyle="none", label="paper (3280 epochs)")
    axes.set_xscale("log")
    axes.set_xlabel("k (samples in the training objective)")
    axes.set_ylabel("test NLL (nats)")
    axes.set_title(f"{dataset}: test NLL against k")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _table_order(cell: Cell) -> tuple:
    return list(OBJECTIVES).index(cell.objective), cell.particles, cell.seed


def plot_training_curves(results: dict[Cell, dict], out: str | Path, path: str | Path) -> None:
    """
    Training loss per image against epoch for every trained model, one panel per depth;
    one colour per objective, one line style and marker per k.
    """
    layers = sorted({c.layers for c in results})
    several_seeds = len({c.seed for c in results}) > 1
    styles = dict(zip(sorted({c.particles for c in results}), ("-o", "--s", ":^", "-.D", "-v", "--P")))
    figure = Figure(figsize=(6 * len(layers), 4))
    for axes, n in zip(figure.subplots(1, len(layers), squeeze=False)[0], layers):
        for cell in sorted({c.trained_as for c in results if c.layers == n}, key=_table_order):
            history = read_history(Path(out) / cell.name / "history.csv")
            axes.plot(
                [row["epoch"] for row in history],
                [row["loss"] for row in history],
                styles.get(cell.particles, "-o"),
                color=COLORS[cell.objective],
                label=f"{OBJECTIVES[cell.objective].label} k={cell.particles}" + f" seed {cell.seed}" * several_seeds,
            )
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_xlabel("epoch")
        axes.set_ylabel("training loss (nats per image)")
        axes.set_title(f"{n} layer{'s' * (n > 1)}")
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def save_side_by_side(cells: list[Cell], test: torch.Tensor, out: str | Path) -> None:
    """
    For every depth and k in {5, 50} with both objectives: ``reconstructions_k{k}_{n}layer.png``
    (rows: test images, VAE, IWAE), ``traversal_k{k}_{n}layer.png`` (VAE left, IWAE right) and
    ``unit_variances_k{k}_{n}layer.png`` (the histograms of Burda et al.'s appendix C).
    """
    out = Path(out)
    for cell in cells:
        if cell.objective != "iwae" or cell.particles not in (5, 50):
            continue
        vae_cell = dataclasses.replace(cell, objective="elbo")
        if vae_cell not in cells:
            continue
        models = {name: load_model(out / c.name, test.device) for name, c in (("VAE", vae_cell), ("IWAE", cell))}
        stem = f"k{cell.particles}_{cell.layers}layer" + (f"_seed{cell.seed}" if cell.seed else "")
        x = test[:16]
        rows = torch.cat([x] + [plots.reconstructions(m.model, m.guide, x) for m in models.values()])
        path = out / f"reconstructions_{stem}.png"
        plots.save_image_grid(
            path, rows, x.shape[0], f"rows: test images, VAE, IWAE (k={cell.particles}, {cell.layers} layers)"
        )
        panels = [
            (
                f"{name}: {m.latent_names[0]}, most active units",
                plots.latent_traversal(m.model, m.guide, test, m.latent_names[0]),
                11,
            )
            for name, m in models.items()
        ]
        path = out / f"traversal_{stem}.png"
        plots.save_image_grids(
            path, panels, f"latent traversals, -3 to +3 sd (k={cell.particles}, {cell.layers} layers)"
        )
        variances = {name: torch.cat(list(unit_variances(m.guide, test).values())) for name, m in models.items()}
        title = f"activity of the latent units (k={cell.particles}, {cell.layers} layers)"
        plots.plot_unit_variances(variances, out / f"unit_variances_{stem}.png", title=title)


def write_results(results: dict[Cell, dict], path: str | Path) -> None:
    """``results.json``: every cell's metrics, with its cell."""
    write_json(Path(path), {"runs": [dict(cell=dataclasses.asdict(c), **m) for c, m in results.items()]})


def write_table(results: dict[Cell, dict], dataset: str, command: str, path: str | Path) -> str:
    table, budget = format_table(results, dataset), caption(results, dataset, command)
    text = f"# Burda et al. (2016) Table 1 on {dataset}\n\n{table}\n\n{budget}\n"
    with atomic_open(path, "w") as f:
        f.write(text)
    return text

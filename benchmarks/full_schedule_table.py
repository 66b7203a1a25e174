"""
Burda et al. (2016), Table 1, at the paper's budget: the one-stochastic-layer VAE (k = 1) and
IWAE (k = 5) that ``benchmarks/full_schedule.sh`` trains for 3280 epochs, with PyTorch's and with
Glorot's initial weights (``--init glorot``), scored while they train and once they finish, beside
the paper's numbers and nbip/IWAE's TensorFlow 2 reproduction.

    python benchmarks/full_schedule_table.py --data-dir ../shared/data          # full_schedule_runs.txt's runs
    python benchmarks/full_schedule_table.py RUN_DIR ... --out DIR [--final]

For every run directory it writes to ``--out``:

- ``curve.json``: the test NLL with K = ``--curve-particles`` (500) on ``--curve-images`` (1000) test
  images spread over the test set (:func:`spread`) for every weights snapshot
  (``RUN_DIR/weights/epoch-NNNN.pt``), and the training loss per epoch from ``history.csv``;
  ``training_curves.png`` plots both (the NLL twice: all of it, and from epoch 100 on). Points whose
  snapshots are gone (a run resumed on a fresh machine from the checkpoint that
  ``benchmarks/full_schedule.sh --save`` kept) stay, from the ``curve.json`` written before.
- ``unit_variances.png``: the histograms of log Var_x(E_q[z_u | x]) over the latent units of each
  run's latest weights (Burda et al.'s appendix C), whose active units an unfinished run's row shows.
- for finished runs (with ``metrics.json``; ``--final`` treats the others as finished, from their
  latest weights): the test NLL with K = ``--eval-particles`` (5000) on all test images (from
  ``metrics.json`` where there is one), the train NLL with the same K on ``--train-images`` (10,000)
  training images spread over the training set, binarized once with seed 0, the train-test gap,
  active units, epochs and training time, in ``results.json`` and ``table.md``, and the final
  weights in ``weights/<run>.pt`` (:func:`pyro_iwae.checkpoints.save_weights`'s format).

Every evaluation draws batch ``i`` of its images from a seed made of 0 and ``i``
(``log_likelihood(..., seed=0)``, as ``examples/mnist.py`` and ``examples/evaluate.py`` score), so it is
deterministic, and is cached in ``evaluations.json`` under the digest of the weights it scored and the
settings: a rerun only scores new snapshots (``--rescore`` scores everything again, after a change to the
evaluator; entries from before the per-batch seeding or the spread images lack those settings, and are
scored again).
A weights file may stand in for a run directory; it is scored as a finished model, so

    python benchmarks/full_schedule_table.py benchmarks/results/table1-mnist-full-schedule/weights/*.pt \\
        --data-dir ../shared/data --out /tmp/rescored

re-scores the committed weights and prints their table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from pyro_iwae import keep_freed_memory, log_likelihood
from pyro_iwae.atomic import atomic_open
from pyro_iwae.checkpoints import (
    ADDED_FIELD_DEFAULTS,
    ARCHITECTURE_FIELDS,
    CheckpointError,
    StoredWeights,
    read_history,
    read_weights,
    save_weights,
)
from pyro_iwae.data import binarize, load_dataset
from pyro_iwae.evaluation import ACTIVITY_THRESHOLD, active_units, unit_variances
from pyro_iwae.experiments.cli import at_least, one_line_errors
from pyro_iwae.experiments.config import DEVICES, command_line, resolve_device
from pyro_iwae.experiments.grid import PAPER_NLL
from pyro_iwae.experiments.outputs import write_json
from pyro_iwae.models import DEFAULT_GUIDE, DEFAULT_PRIOR
from pyro_iwae.networks import DEFAULT_INITIALIZATION
from pyro_iwae.objectives import OBJECTIVES
from pyro_iwae.plots import plot_unit_variances
from pyro_iwae.training import burda_learning_rates

#: the run directories that ``benchmarks/full_schedule.sh`` trains, as ``full_schedule_runs.txt`` lists them
RUNS = tuple(
    f"runs/full-schedule/{line.split()[0]}"
    for line in (Path(__file__).parent / "full_schedule_runs.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
)
OUT = "benchmarks/results/table1-mnist-full-schedule"
#: test NLL in nats of https://github.com/nbip/IWAE (TensorFlow 2, 3280 epochs, K = 5000), from its README:
#: {(dataset, layers, objective): {k: nll}}
REPRODUCTION_NLL = {
    ("mnist", 1, "elbo"): {1: 86.35, 5: 86.10, 50: 86.06},
    ("mnist", 1, "iwae"): {1: 86.35, 5: 85.18, 50: 84.59},
    ("mnist", 2, "elbo"): {1: 84.83, 5: 84.08, 50: 83.89},
    ("mnist", 2, "iwae"): {1: 84.83, 5: 83.48, 50: 82.82},
}
REPRODUCTION = "nbip/IWAE (TF2)"
#: the train-test gap of Burda et al.'s models, in nats, as the issue that asked for this table quotes it (the
#: paper's text, which we could not read here, is not checked for it)
PAPER_GAP = "0.6–0.8"
#: the training curve's second panel starts at this epoch, where the curves near the paper's numbers
ZOOM_FROM_EPOCH = 100
#: how a count of images is taken from a split (:func:`spread`); recorded with every evaluation and setting
SELECTION = "spread"
#: batch i of every evaluation draws from a seed made of this and i (``log_likelihood(..., seed=SEED)``)
SEED = 0
#: the fields that ``benchmarks/full_schedule.sh`` sets for every run: :data:`SCRIPT_FLAGS` says so once
#: in the table, not in each run's command
SCRIPT_FIELDS = ("compile", "snapshot_every", "progress")
#: table.md's sentence on the flags of :data:`SCRIPT_FIELDS`, after the script's command line
SCRIPT_FLAGS = (
    "which runs each of these in the background on one thread (`OMP_NUM_THREADS=1`) with `--snapshot-every 100`"
    " (the weights at least every 100 epochs, for the training curve), `--compile` (the same numbers to float"
    " rounding, faster) and `--no-progress`, and resumes them after a stop:"
)
#: the status of a run that ``--final`` scores before it has finished
FORCED = "unfinished, scored (--final)"


@dataclass
class Run:
    """One row of the table: a run directory, or a weights file scored as a finished model."""

    name: str
    path: Path
    #: the training configuration stored with the weights
    config: dict
    #: ``history.csv``'s rows; empty for a weights file
    history: list[dict] = field(default_factory=list)
    #: ``metrics.json``, once the run has finished
    metrics: dict | None = None
    #: ``weights/epoch-NNNN.pt``, by epoch
    snapshots: list[Path] = field(default_factory=list)
    #: the final weights (read once, so that a run still training cannot change them under us)
    final: StoredWeights | None = None
    #: the latest weights, its checkpoint's (read with :attr:`final`, once)
    latest: StoredWeights | None = None
    #: its name in the table and the plot: :attr:`label`, and the run's name where two runs share a label
    display: str = ""

    @property
    def is_weights_file(self) -> bool:
        return self.path.is_file()

    @property
    def status(self) -> str:
        """``"finished"``, ``"in progress"``, or ``"unfinished, scored (--final)"``."""
        if self.final is None:
            return "in progress"
        return "finished" if self.metrics is not None or self.is_weights_file else FORCED

    @property
    def planned_epochs(self) -> int | None:
        """The length of its schedule where that is known: 3280 for the burda schedule."""
        if self.metrics is not None:
            return self.metrics["epochs"]
        return len(burda_learning_rates()) if self.config.get("schedule") == "burda" else None

    @property
    def label(self) -> str:
        """``"IWAE, k = 5"``, with the layers, prior, guide and initialisation where they are not the paper's."""
        c = {**ARCHITECTURE_FIELDS, **ADDED_FIELD_DEFAULTS, **self.config}
        name = OBJECTIVES[c["objective"]].label if c["objective"] in OBJECTIVES else c["objective"]
        label = f"{name}, k = {c['particles']}"
        label += f", {c['layers']} layers" * (c["layers"] != 1)
        label += f", {c['prior']} prior" * (c["prior"] != DEFAULT_PRIOR)
        label += f", {c['guide']} guide" * (c["guide"] != DEFAULT_GUIDE)
        return label + f", {c['init']} init" * (c["init"] != DEFAULT_INITIALIZATION)

    def reference(self, table: dict) -> float | None:
        """This model's number in ``table``: :data:`~pyro_iwae.experiments.grid.PAPER_NLL`, :data:`REPRODUCTION_NLL`."""
        c = {**ARCHITECTURE_FIELDS, **self.config}
        plain = (c["prior"], c["guide"]) == (DEFAULT_PRIOR, DEFAULT_GUIDE)
        key = (c.get("dataset", "mnist"), c["layers"], c["objective"])
        return table.get(key, {}).get(c["particles"]) if plain else None


def read_run(path: Path, final: bool) -> Run:
    """
    A run directory (``checkpoint.pt``, ``history.csv``, ``weights/``, ``metrics.json``) or a weights file.

    :param final: read its latest weights as the final ones even if it has no ``metrics.json``.
    """
    if is_full_schedule(path) and not path.exists():
        raise CheckpointError(
            f"no run directory {path}: `bash benchmarks/full_schedule.sh` restores the runs there from their kept"
            f" checkpoints (and trains the unfinished ones on); to score only the committed weights, pass them:"
            f" {OUT}/weights/*.pt"
        )
    stored = read_weights(path)
    if path.is_file():
        return Run(path.stem, path, stored.config, final=stored, latest=stored)
    metrics_path = path / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    # a run restored from a kept checkpoint (benchmarks/full_schedule.sh) has its history only there
    history = read_history(path / "history.csv") if (path / "history.csv").exists() else stored.history
    snapshots = sorted((path / "weights").glob("epoch-*.pt"))
    finished = metrics is not None or final
    return Run(path.name, path, stored.config, history, metrics, snapshots, stored if finished else None, stored)


def weights_digest(module: dict) -> str:
    """SHA-256 of a state dict's names and tensors: the same weights give the same digest from any file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class EvaluationCache:
    """
    ``evaluations.json``: one entry per evaluation, found again by the digest of the weights and
    the settings (split, particles, images, batch size, device, seed), and saved after each new one.
    """

    KEY = ("digest", "split", "particles", "images", "selection", "batch_size", "device", "seed")

    def __init__(self, path: Path, fresh: bool = False) -> None:
        """
        :param fresh: forget what ``path`` holds (its entries are replaced as they are scored again).
            Entries written before a field of :attr:`KEY` existed are dropped: nothing would find them.
        """
        self.path = path
        entries = json.loads(path.read_text())["evaluations"] if path.exists() else []
        self.entries: list[dict] = [e for e in entries if all(name in e for name in self.KEY)]
        self.fresh = fresh

    def get(self, spec: dict) -> dict | None:
        if self.fresh:
            return None
        key = tuple(spec[name] for name in self.KEY)
        return next((e for e in self.entries if tuple(e.get(name) for name in self.KEY) == key), None)

    def put(self, spec: dict, result: dict) -> None:
        key = tuple(spec[name] for name in self.KEY)
        self.entries = [e for e in self.entries if tuple(e.get(name) for name in self.KEY) != key]
        self.entries.append({**spec, **result})
        write_json(self.path, {"evaluations": self.entries})


@dataclass
class Task:
    """One evaluation: ``split`` images scored with ``particles`` samples by the weights in ``source``."""

    run: Run
    kind: str  # "curve" or "final"
    source: Path
    epoch: int
    spec: dict
    #: the weights, where they were read already (the final ones)
    stored: StoredWeights | None = None


class Data:
    """Each dataset's binary test images and fixed-binarized training images, loaded once."""

    def __init__(self, data_dir: str | None, device: torch.device) -> None:
        self.data_dir, self.device, self.cache = data_dir, device, {}

    def images(self, dataset: str, split: str, count: int | None) -> torch.Tensor:
        """``count`` images of ``split`` (:func:`spread`; all if None); training images binarized once with seed 0."""
        if dataset not in self.cache:
            data = load_dataset(dataset, self.data_dir)
            train = binarize(data.train) if data.dynamic_binarization else data.train
            self.cache[dataset] = {"train": train, "test": data.test}
        return spread(self.cache[dataset][split], count).to(self.device)


def spread(images: torch.Tensor, count: int | None) -> torch.Tensor:
    """
    ``count`` of ``[num_images, ...]`` ``images`` spread evenly over them: those at ``floor(i num_images /
    count)`` for ``i < count`` (every 10th of 10,000 for 1000; all if ``count`` is None). Not the first
    ``count``: MNIST's files are not in a random order, and its first 1000 test images score over a nat
    better than the whole test set (the README's paper-budget section has the figures).
    """
    num_images = images.shape[0]
    if count is None or count >= num_images:
        return images
    return images[torch.arange(count) * num_images // count]


def evaluate(
    stored: StoredWeights, images: torch.Tensor, particles: int, batch_size: int, units: bool, progress: bool
) -> dict:
    """The NLL and ELBO of ``images`` under the stored model with seed :data:`SEED`; if ``units``, its active units."""
    vae = stored.model(images.device)
    pyro.clear_param_store()
    start = time.perf_counter()
    estimate = log_likelihood(
        vae.model, vae.guide, images, num_particles=particles, batch_size=batch_size, seed=SEED, progress=progress
    )
    seconds = time.perf_counter() - start
    values = estimate.log_likelihood
    pyro.set_rng_seed(SEED)
    active = active_units(vae.guide, images) if units else {}
    return dict(
        nll=-values.mean().item(),
        nll_stderr=values.std().item() / math.sqrt(values.numel()) if values.numel() > 1 else 0.0,
        elbo=estimate.elbo.mean().item(),
        active_units=sum(int(layer.sum()) for layer in active.values()) if units else None,
        seconds=seconds,
        machine=describe_machine(images.device),
    )


def describe_machine(device: torch.device) -> str:
    """The CPU model and core count, or the GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        cpu = None
    return f"{cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def plan(runs: list[Run], args: argparse.Namespace, device: torch.device) -> list[Task]:
    """Every evaluation the outputs need: one per snapshot for the curve, two per finished run."""
    tasks = []
    for run in runs:
        for path in run.snapshots:
            stored = read_weights(path)
            spec = dict(split="test", particles=args.curve_particles, images=args.curve_images)
            tasks.append(Task(run, "curve", path, stored.epoch, _spec(stored, spec, args, device)))
        if run.final is not None:
            splits = {"train": args.train_images} | ({} if run.metrics else {"test": args.test_images})
            for split, images in splits.items():
                spec = dict(split=split, particles=args.eval_particles, images=images)
                spec = _spec(run.final, spec, args, device)
                tasks.append(Task(run, "final", run.final.path, run.final.epoch, spec, stored=run.final))
    return tasks


def _spec(stored: StoredWeights, spec: dict, args: argparse.Namespace, device: torch.device) -> dict:
    digest = weights_digest(stored.module)
    return dict(digest=digest, selection=SELECTION, batch_size=args.batch_size, device=device.type, seed=SEED, **spec)


def run_tasks(tasks: list[Task], cache: EvaluationCache, data: Data, progress: bool) -> None:
    """Score every task that ``cache`` does not hold yet, with a progress bar, and cache it."""
    todo = [task for task in tasks if cache.get(task.spec) is None]
    for task in tqdm(todo, desc=f"scoring ({len(tasks) - len(todo)} cached)", unit="evaluation", disable=not progress):
        stored = task.stored or read_weights(task.source)
        images = data.images(stored.config.get("dataset", "mnist"), task.spec["split"], task.spec["images"])
        final = task.kind == "final"
        units = final and task.spec["split"] == "test"
        result = evaluate(stored, images, task.spec["particles"], task.spec["batch_size"], units, progress and final)
        result["scored_images"] = images.shape[0]  # the spec's images stay the key: None means all
        cache.put(task.spec, dict(run=task.run.name, file=str(task.source), epoch=task.epoch, **result))


def curve(run: Run, tasks: list[Task], cache: EvaluationCache, previous: dict | None = None) -> dict:
    """
    ``curve.json``'s entry for one run: the test NLL per snapshot and the loss per epoch.

    :param previous: the run's entry in the ``curve.json`` written before; its points whose
        snapshots are gone are kept (see :func:`kept_points`).
    """
    points = []
    for task in (t for t in tasks if t.run is run and t.kind == "curve"):
        entry = cache.get(task.spec)
        points.append(
            dict(
                epoch=task.epoch,
                test_nll=entry["nll"],
                test_nll_stderr=entry["nll_stderr"],
                test_elbo=entry["elbo"],
                file=task.source.name,
            )
        )
    points += kept_points(run, previous, {point["epoch"] for point in points})
    return dict(
        label=run.display,
        objective=run.config["objective"],
        particles=run.config["particles"],
        layers=run.config["layers"],
        paper_nll=run.reference(PAPER_NLL),
        points=sorted(points, key=lambda point: point["epoch"]),
        loss=dict(epoch=[row["epoch"] for row in run.history], loss=[row["loss"] for row in run.history]),
    )


def kept_points(run: Run, previous: dict | None, scored_epochs: set[int]) -> list[dict]:
    """
    The points of ``previous`` (the run's entry in the ``curve.json`` written before) for epochs
    without a snapshot now, up to the run's latest epoch: the snapshots of a run that resumed, on a
    fresh machine, from the checkpoint ``benchmarks/full_schedule.sh --save`` kept. Only if
    ``previous`` is this run's curve, not that of an earlier run that was restarted afresh: its
    losses must equal ``history.csv``'s on every epoch the two share.
    """
    if previous is None:
        return []
    losses, previous_losses = [row["loss"] for row in run.history], previous["loss"]["loss"]
    shared = min(len(losses), len(previous_losses))
    if shared == 0 or losses[:shared] != previous_losses[:shared]:
        return []
    return [p for p in previous["points"] if p["epoch"] not in scored_epochs and p["epoch"] <= len(losses)]


def result(
    run: Run,
    tasks: list[Task],
    cache: EvaluationCache,
    curve_points: list[dict],
    latest_variances: tuple[int, torch.Tensor] | None,
) -> dict:
    """
    ``results.json``'s entry for one run: its final numbers if it has finished, else its progress
    (with the active units of its last snapshot, from ``latest_variances``: :func:`latest_unit_variances`).
    """
    record = dict(
        run=run.name,
        source=str(run.path),
        label=run.display,
        **{key: run.config.get(key) for key in ("objective", "particles", "layers", "prior", "guide", "dataset")},
        status=run.status,
        epochs=run.final.epoch if run.final is not None else len(run.history),
        planned_epochs=run.planned_epochs,
        train_seconds=sum(row["seconds"] for row in run.history) if run.history else None,
        paper_nll=run.reference(PAPER_NLL),
        reproduction_nll=run.reference(REPRODUCTION_NLL),
        latest_curve_point={key: curve_points[-1][key] for key in ("epoch", "test_nll")} if curve_points else None,
    )
    if record["status"] == "in progress":
        if latest_variances is not None:
            epoch, variances = latest_variances
            record["latest_active_units"] = dict(epoch=epoch, count=int((variances > ACTIVITY_THRESHOLD).sum()))
        return record
    final = {t.spec["split"]: cache.get(t.spec) for t in tasks if t.run is run and t.kind == "final"}
    if run.metrics is not None:
        m = run.metrics
        test = dict(
            nll=-m["test_log_likelihood"],
            nll_stderr=m["test_log_likelihood_stderr"],
            particles=m["config"]["eval_particles"],
            scored_images=m["test_size"],
            active_units=m["active_units"],
            source=f"`{run.path / 'metrics.json'}` (the evaluator examples/mnist.py runs after training)",
        )
        record["train_seconds"] = m["train_seconds"]
        record["training_device"] = m["device"]
    else:
        test = dict(final["test"], source=f"the latest weights (epoch {run.final.epoch}), scored here")
    train = final["train"]
    record.update(
        test_nll=test["nll"],
        test_nll_stderr=test["nll_stderr"],
        test_particles=test["particles"],
        test_images=test["scored_images"],
        test_source=test["source"],
        active_units=test["active_units"],
        train_nll=train["nll"],
        train_nll_stderr=train["nll_stderr"],
        train_particles=train["particles"],
        train_images=train["scored_images"],
        gap=test["nll"] - train["nll"],
        gap_stderr=math.hypot(test["nll_stderr"], train["nll_stderr"]),
        machine=train["machine"],
    )
    return record


def save_final_weights(runs: list[Run], out: Path) -> dict[str, Path]:
    """Each finished run's final weights as ``out/weights/<run>.pt``; weights files given as runs are left alone."""
    saved = {}
    for run in runs:
        if run.final is None or run.is_weights_file:
            continue
        path = out / "weights" / f"{run.name}.pt"
        save_weights(path, run.final.model(), run.final.config, run.final.epoch)
        saved[run.name] = path
    return saved


def is_full_schedule(path: Path) -> bool:
    """Whether ``path`` is a run directory of ``benchmarks/full_schedule.sh`` (``runs/full-schedule/<run>``)."""
    return path.parent.name == "full-schedule"


def training_command(run: Run, data_dir: str | None) -> str:
    """
    The ``examples/mnist.py`` command that trains ``run``: its config's flags that are not the defaults,
    less :data:`SCRIPT_FIELDS` for a run of ``benchmarks/full_schedule.sh`` (the table names them once).
    """
    config = {"data_dir": data_dir, **run.config, **(run.metrics["config"] if run.metrics is not None else {})}
    if is_full_schedule(run.path):
        config = {name: value for name, value in config.items() if name not in SCRIPT_FIELDS}
    return "python examples/mnist.py " + shlex.join(command_line({**config, "out": str(run.path)}))


def plot_curves(curves: dict[str, dict], settings: dict, path: Path) -> None:
    """
    Left: the test NLL of every snapshot against the epoch (log axis, so epoch 0 is left out), the
    paper's numbers dashed; middle: the same from epoch :data:`ZOOM_FROM_EPOCH` to the paper's last (or the
    runs' last), where the curves approach the paper's numbers; right: the training loss per epoch.
    """
    figure = Figure(figsize=(16, 4.5))
    nll_axes, zoom_axes, loss_axes = figure.subplots(1, 3)
    drawn = set()  # the paper's numbers drawn so far: one line each, in the colour of the first run with it
    for index, run in enumerate(curves.values()):
        color = f"C{index}"
        for axes, first_epoch in ((nll_axes, 1), (zoom_axes, ZOOM_FROM_EPOCH)):
            points = [p for p in run["points"] if p["epoch"] >= first_epoch]
            epochs, nll = [p["epoch"] for p in points], [p["test_nll"] for p in points]
            axes.plot(epochs, nll, "o-", color=color, markersize=3, label=run["label"])
            if run["paper_nll"] is not None and (axes, run["paper_nll"]) not in drawn:
                drawn.add((axes, run["paper_nll"]))
                paper = f"{run['label']}: Burda et al., {run['paper_nll']:.2f}"
                axes.axhline(run["paper_nll"], color=color, linestyle="--", linewidth=1, label=paper)
        loss = run["loss"]
        loss_axes.plot(loss["epoch"], loss["loss"], color=color, linewidth=1, label=run["label"])
    nll_axes.set_title(
        f"test NLL, K = {settings['curve_particles']}, {settings['curve_images']} test images spread over the set",
        fontsize=10,
    )
    zoom_axes.set_title(f"the same from epoch {ZOOM_FROM_EPOCH} on, to the paper's last", fontsize=10)
    last_epoch = max(p["epoch"] for run in curves.values() for p in run["points"])
    zoom_axes.set_xlim(0.9 * ZOOM_FROM_EPOCH, 1.1 * max(len(burda_learning_rates()), last_epoch))
    for axes in (nll_axes, zoom_axes):
        axes.set_ylabel("test NLL (nats)")
    loss_axes.set_title("training loss per epoch (−ELBO for the VAE, −L_k for IWAE)", fontsize=10)
    loss_axes.set_ylabel("training loss (nats per image)")
    for axes in (nll_axes, zoom_axes, loss_axes):
        axes.set_xscale("log")
        axes.set_xlabel("epoch")
        axes.grid(True, which="both", alpha=0.3)
        if axes.has_data():
            axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _nll(value: float | None, stderr: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" + (f" ± {stderr:.2f}" if stderr is not None else "")


def format_table(records: list[dict], settings: dict) -> str:
    """The markdown table: one row per run, finished or in progress."""
    header = ["model", "epochs", "test NLL", "Burda et al.", REPRODUCTION, "train NLL", "train–test gap"]
    header += ["active units", "training time"]
    rows = []
    for r in records:
        hours = f"{r['train_seconds'] / 3600:.1f} h" if r["train_seconds"] is not None else "–"
        references = [_nll(r["paper_nll"]), _nll(r["reproduction_nll"])]
        planned = f" of {r['planned_epochs']}" if r["planned_epochs"] else ""
        if r["status"] != "in progress":
            epochs = str(r["epochs"]) if r["status"] == "finished" else f"{r['epochs']}{planned}, {FORCED}"
            row = [r["label"], epochs, _nll(r["test_nll"], r["test_nll_stderr"]), *references]
            row += [_nll(r["train_nll"], r["train_nll_stderr"]), _nll(r["gap"], r["gap_stderr"])]
            row += [str(r["active_units"]), hours]
        else:
            point = r["latest_curve_point"]
            latest = (
                f"{point['test_nll']:.2f} at epoch {point['epoch']} (K = {settings['curve_particles']},"
                f" {settings['curve_images']} images)"
                if point
                else "–"
            )
            units = r.get("latest_active_units")
            units = f"{units['count']} at epoch {units['epoch']}" if units else "–"
            row = [r["label"], f"in progress, epoch {r['epochs']}{planned}", latest, *references, "–", "–", units]
            row.append(f"{hours} so far")
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _models(records: list[dict]) -> str:
    """``"MNIST, one stochastic layer"``, or whatever the runs are."""
    datasets = ", ".join(sorted({"MNIST" if r["dataset"] == "mnist" else r["dataset"] for r in records}))
    layers = sorted({r["layers"] for r in records})
    return datasets + (", one stochastic layer" if layers == [1] else f", {' and '.join(map(str, layers))} layers")


def write_table(records: list[dict], settings: dict, commands: dict, weights: dict[str, Path], path: Path) -> str:
    """``table.md``: the table, what each number is, the commands, and how to load the weights."""
    notes = []
    for r in records:
        if r["status"] == "in progress":
            continue
        notes.append(
            f"- {r['label']} (`{r['run']}`): test NLL with K = {r['test_particles']} on {r['test_images']} test"
            f" images, from {r['test_source']}; train NLL with K = {r['train_particles']} on"
            f" {r['train_images']} training images spread over the training set. Scored on {r['machine']}."
        )
    text = [
        f"# Burda et al. (2016), Table 1, at the paper's budget: {_models(records)}",
        "",
        format_table(records, settings),
        "",
        "Negative log-likelihoods in nats (lower is better), ± the standard error over images. Test NLL:"
        " importance sampling (`pyro_iwae.log_likelihood`) with K samples per image on the test images, binarized"
        " once with seed 0 (K and the images for each run below); the ± is mostly the images' spread, not Monte"
        " Carlo error. Train NLL: the same estimator on training images binarized once with seed 0"
        " (`pyro_iwae.data.binarize`);"
        f" the train–test gap is test NLL − train NLL ({PAPER_GAP} nats for Burda et al.'s models, as quoted to"
        " us: not checked against the paper). Active units:"
        f" Var_x(E_q[z_u|x]) > {ACTIVITY_THRESHOLD} on the test images, for the final weights (an unfinished run:"
        " its latest snapshot, else its checkpoint, at the epoch named). Training time: the sum of"
        " `history.csv`'s epoch times."
        f" Every evaluation here draws batch i of its images from a seed made of {SEED} and i"
        f" (`log_likelihood(..., seed={SEED})`). 'Burda et al.': Table 1 of the paper"
        f" (3280 epochs); '{REPRODUCTION}': the TensorFlow 2 reproduction at https://github.com/nbip/IWAE (README,"
        " K = 5000). An unfinished run shows its latest point of the training curve (`training_curves.png`,"
        f" `curve.json`: K = {settings['curve_particles']} on {settings['curve_images']} test images): a cheaper"
        " estimate than the finished runs' (± about 0.8 nats over images, and K = 500 reads a few tenths above"
        " K = 5000). Where fewer images than a split's are scored, they are spread evenly over it (every n-th"
        " from the first): MNIST's first 1000 test images score over a nat better than the whole test set.",
    ]
    if notes:
        text += ["", *notes]
    text += ["", "## Commands", ""]
    if commands["training"]:  # weights files alone were scored: their training is not run from here
        text += ["Training:", ""]
        if any(is_full_schedule(Path(r["source"])) for r in records):
            text += ["    bash benchmarks/full_schedule.sh ../shared/data", "", SCRIPT_FLAGS, ""]
        text += [f"    {command}" for command in commands["training"].values()]
        text += [""]
    text += ["This table:", "", f"    {commands['table']}"]
    if weights:
        example = next(iter(weights.values()))
        text += [
            "",
            "## The weights",
            "",
            "`weights/<run>.pt` holds each finished model's parameters with its training config and epoch"
            " (`pyro_iwae.checkpoints.save_weights`). Load one and score it:",
            "",
            "```python",
            "import pyro_iwae",
            "",
            f'model = pyro_iwae.load_model("{example}")',
            'test = pyro_iwae.load_dataset("mnist", "../shared/data").test',
            "estimate = pyro_iwae.log_likelihood(model.model, model.guide, test, num_particles="
            f"{settings['eval_particles']}, batch_size={settings['batch_size']}, seed={SEED})",
            'print("test NLL", -estimate.log_likelihood.mean().item())',
            "```",
            "",
            "or re-score them all and print this table again with one command:",
            "",
            f"    python benchmarks/full_schedule_table.py {' '.join(map(str, weights.values()))} \\",
            "        --data-dir ../shared/data --out /tmp/rescored",
        ]
    text = "\n".join(text) + "\n"
    with atomic_open(path, "w") as f:
        f.write(text)
    return text


def latest_unit_variances(runs: list[Run], data: Data, num_images: int | None) -> dict[str, tuple[int, torch.Tensor]]:
    """
    Var_x(E_q[z_u | x]) of every latent unit (:func:`pyro_iwae.evaluation.unit_variances`, the layers'
    units one after the other) for each run's latest weights (the final ones, else its last snapshot, else
    its checkpoint: a run restored on a fresh machine has no snapshots yet), over ``num_images`` test images
    (:func:`spread`): ``{run name: (epoch, [units] variances)}``.
    """
    variances = {}
    for run in runs:
        stored = run.final or (read_weights(run.snapshots[-1]) if run.snapshots else run.latest)
        test = data.images(run.config.get("dataset", "mnist"), "test", num_images)
        per_layer = unit_variances(stored.model(data.device).guide, test)
        variances[run.name] = stored.epoch, torch.cat(list(per_layer.values()))
    return variances


def plot_unit_activity(
    runs: list[Run], variances: dict[str, tuple[int, torch.Tensor]], num_images: int | None, path: Path
) -> None:
    """
    The histograms of Burda et al.'s appendix C (:func:`pyro_iwae.plots.plot_unit_variances`) of the
    ``variances`` of :func:`latest_unit_variances` over ``num_images`` test images, one per run.
    """
    histograms = {}
    for run in runs:
        if run.name in variances:
            epoch, latest = variances[run.name]
            histograms[f"{run.display}, epoch {epoch}"] = latest
    if histograms:
        images = "all" if num_images is None else str(num_images)
        plot_unit_variances(histograms, path, title=f"activity of the latent units on {images} test images")


def main(args: argparse.Namespace) -> str:
    device = resolve_device(args.device)
    out = Path(args.out)
    runs = [read_run(Path(path), args.final) for path in args.runs]
    out.mkdir(parents=True, exist_ok=True)
    cache = EvaluationCache(out / "evaluations.json", fresh=args.rescore)
    tasks = plan(runs, args, device)
    data = Data(args.data_dir, device)
    run_tasks(tasks, cache, data, not args.no_progress)
    cache.fresh = False

    settings = {key: getattr(args, key) for key in ("curve_particles", "curve_images", "eval_particles")}
    settings |= {key: getattr(args, key) for key in ("test_images", "train_images", "batch_size")}
    settings |= {"selection": SELECTION, "seed": SEED}
    labels = [run.label for run in runs]
    for run in runs:  # tell runs of the same model apart
        run.display = run.label if labels.count(run.label) == 1 else f"{run.label} ({run.name})"
    curve_path = out / "curve.json"
    written = json.loads(curve_path.read_text()) if curve_path.exists() else {}
    previous = written["runs"] if written.get("settings") == settings else {}
    curves = {run.name: curve(run, tasks, cache, previous.get(run.name)) for run in runs}
    write_json(curve_path, {"settings": settings, "runs": curves})
    if any(c["points"] or c["loss"]["epoch"] for c in curves.values()):
        plot_curves(curves, settings, out / "training_curves.png")
    variances = latest_unit_variances(runs, data, args.test_images)
    plot_unit_activity(runs, variances, args.test_images, out / "unit_variances.png")

    records = [result(run, tasks, cache, curves[run.name]["points"], variances.get(run.name)) for run in runs]
    weights = save_final_weights(runs, out)
    for record in records:
        if record["run"] in weights:
            record["weights"] = str(weights[record["run"]])
    commands = dict(
        table="python benchmarks/full_schedule_table.py " + shlex.join(sys.argv[1:]),
        training={run.name: training_command(run, args.data_dir) for run in runs if not run.is_weights_file},
    )
    write_json(
        out / "results.json",
        dict(
            runs=records,
            settings=settings,
            commands=commands,
            machine=describe_machine(device),
            torch_version=torch.__version__,
            pyro_version=pyro.__version__,
        ),
    )
    table = write_table(records, settings, commands, weights, out / "table.md")
    print(table)
    return table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "runs",
        nargs="*",
        default=list(RUNS),
        help="run directories of examples/mnist.py, or weights files (default: %(default)s)",
    )
    p.add_argument("--out", default=OUT, help="where the table, curves and weights go (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="directory in torchvision's layout; default $PYRO_IWAE_DATA")
    p.add_argument("--curve-particles", type=at_least(1), default=500, help="K for the curve (default: %(default)s)")
    p.add_argument(
        "--curve-images",
        type=at_least(1),
        default=1000,
        help="N test images for the curve, spread over the test set (default: %(default)s)",
    )
    p.add_argument(
        "--eval-particles", type=at_least(1), default=5000, help="K for the final scores (default: %(default)s)"
    )
    p.add_argument(
        "--test-images",
        type=at_least(1),
        default=None,
        help="N test images for the final test NLL, spread over the test set (default: all)",
    )
    p.add_argument(
        "--train-images",
        type=at_least(1),
        default=10000,
        help="N training images for the train NLL, spread over the training set (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=at_least(1), default=100, help="images per evaluation pass (default: %(default)s)"
    )
    p.add_argument(
        "--final",
        action="store_true",
        help="score runs without metrics.json as finished, from their latest weights (checkpoint.pt)",
    )
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score everything again instead of reusing evaluations.json (after a change to the evaluator)",
    )
    p.add_argument("--device", choices=DEVICES, default="auto", help="(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    return p


if __name__ == "__main__":
    keep_freed_memory()
    p = parser()
    with one_line_errors(p):
        main(p.parse_args())

"""
One experiment end to end: train a VAE or IWAE, score it with the importance-
sampling evaluator, and write its metrics, history, checkpoint and pictures.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyro
import torch

from pyro_iwae import plots
from pyro_iwae.allocator import keep_freed_memory
from pyro_iwae.atomic import atomic_open
from pyro_iwae.data import load_dataset
from pyro_iwae.evaluation import active_units, log_likelihood
from pyro_iwae.models import ARCHITECTURES, GUIDES, PRIORS, VAE
from pyro_iwae.objectives import make_objective
from pyro_iwae.training import CheckpointError, learning_rates, train

#: fields that a checkpoint must share with the run that resumes it
TRAINING_FIELDS = (
    "objective",
    "particles",
    "layers",
    "prior",
    "guide",
    "dataset",
    "schedule",
    "batch_size",
    "lr",
    "train_size",
    "seed",
)


@dataclass
class ExperimentConfig:
    """Everything a run depends on; the flags of ``examples/mnist.py``."""

    objective: str = "iwae"
    particles: int = 1
    layers: int = 1
    prior: str = "normal"
    guide: str = "normal"
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int | None = None
    schedule: str = "constant"
    batch_size: int = 20
    lr: float = 1e-3
    eval_particles: int = 5000
    eval_batch_size: int = 100
    train_size: int | None = None
    test_size: int | None = None
    device: str = "auto"
    seed: int = 0
    out: str = "runs/default"
    resume: bool = False
    plots: bool = True
    progress: bool = True
    validate: bool = False
    snapshot_every: int | None = None

    def training_config(self) -> dict:
        return {name: getattr(self, name) for name in TRAINING_FIELDS}


class ConfigError(ValueError):
    """An experiment configuration that cannot run."""


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA where available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto")
    return torch.device(device)


def write_json(path: Path, obj: dict) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)


HISTORY_FIELDS = {"epoch": int, "lr": float, "loss": float, "seconds": float}


def write_history(path: Path, history: list[dict]) -> None:
    """``history.csv``: one row per epoch, the fields of :data:`HISTORY_FIELDS`."""
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(HISTORY_FIELDS))
        writer.writeheader()
        writer.writerows(history)


def read_history(path: Path) -> list[dict]:
    """The rows :func:`write_history` wrote, with their types."""
    with open(path, newline="") as f:
        return [{name: HISTORY_FIELDS[name](value) for name, value in row.items()} for row in csv.DictReader(f)]


def run(config: ExperimentConfig) -> dict:
    """
    Train, evaluate and write ``metrics.json``, ``history.csv``,
    ``checkpoint.pt`` and (unless ``config.plots`` is False) the pictures to ``config.out``.

    :returns: the metrics.
    """
    if config.layers not in ARCHITECTURES:
        raise ConfigError(f"--layers must be one of {sorted(ARCHITECTURES)}, got {config.layers}")
    if config.eval_particles < 1:
        raise ConfigError(f"--eval-particles must be at least 1, got {config.eval_particles}")
    if config.plots and config.test_size is not None and config.test_size < 32:
        raise ConfigError(
            f"the pictures need at least 32 test images, got --test-size {config.test_size}: "
            "raise it or pass --no-plots"
        )
    if config.prior not in PRIORS:
        raise ConfigError(f"--prior must be one of {', '.join(PRIORS)}, got {config.prior!r}")
    if config.guide not in GUIDES:
        raise ConfigError(f"--guide must be one of {', '.join(GUIDES)}, got {config.guide!r}")
    try:
        rates = learning_rates(config.schedule, config.lr, config.epochs)
        objective = make_objective(config.objective, config.particles)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset, config.data_dir, config.train_size, config.test_size)
    if config.batch_size > dataset.train.shape[0]:
        raise ConfigError(
            f"--batch-size {config.batch_size} is more than the {dataset.train.shape[0]} training images:"
            " lower it, or raise --train-size"
        )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()  # every step and evaluation pass reuses the last one's memory
    pyro.enable_validation(config.validate)
    pyro.clear_param_store()
    torch.manual_seed(config.seed)
    vae = VAE(
        *ARCHITECTURES[config.layers], mean_pixel=dataset.train.mean(0), prior=config.prior, guide=config.guide
    ).to(device)
    history = train(
        vae,
        vae.model,
        vae.guide,
        objective,
        dataset.train,
        rates,
        batch_size=config.batch_size,
        dynamic_binarization=dataset.dynamic_binarization,
        seed=config.seed,
        checkpoint_path=out / "checkpoint.pt",
        config=config.training_config(),
        resume=config.resume,
        progress=config.progress,
        on_epoch_end=lambda history: write_history(out / "history.csv", history),
        snapshot_every=config.snapshot_every,
    )

    test = dataset.test.to(device)
    start = time.perf_counter()
    estimate = log_likelihood(
        vae.model,
        vae.guide,
        test,
        num_particles=config.eval_particles,
        batch_size=config.eval_batch_size,
        progress=config.progress,
    )
    eval_seconds = time.perf_counter() - start
    active = active_units(vae.guide, test)
    metrics = dict(
        objective=config.objective,
        particles=config.particles,
        layers=config.layers,
        prior=config.prior,
        guide=config.guide,
        dataset=config.dataset,
        epochs=len(history),
        schedule=config.schedule,
        batch_size=config.batch_size,
        train_size=dataset.train.shape[0],
        test_size=test.shape[0],
        eval_particles=config.eval_particles,
        test_log_likelihood=estimate.log_likelihood.mean().item(),
        test_log_likelihood_stderr=(estimate.log_likelihood.std() / test.shape[0] ** 0.5).item(),
        test_elbo=estimate.elbo.mean().item(),
        active_units=sum(int(units.sum()) for units in active.values()),
        active_units_per_layer={name: int(units.sum()) for name, units in active.items()},
        final_train_loss=history[-1]["loss"] if history else None,
        train_seconds=sum(row["seconds"] for row in history),
        eval_seconds=eval_seconds,
        device=str(device),
        seed=config.seed,
        torch_version=torch.__version__,
        pyro_version=pyro.__version__,
        config=dataclasses.asdict(config),
    )
    write_json(out / "metrics.json", metrics)
    if config.plots:
        label = (
            f"{config.objective} k={config.particles}, {config.layers} layer(s),"
            f" {config.prior} prior, {config.guide} guide"
        )
        save_plots(vae, test, history, out, label)
    return metrics


class StoredWeights(NamedTuple):
    """What :func:`read_weights` found in a file."""

    #: the file read (a run directory's ``checkpoint.pt``)
    path: Path
    #: the training configuration (:meth:`ExperimentConfig.training_config`)
    config: dict
    #: the epochs trained
    epoch: int
    #: the :class:`VAE`'s state dict
    module: dict

    def model(self, device: torch.device | str = "cpu") -> VAE:
        """
        The :class:`VAE` that ``config`` describes (layers, prior, guide), with these weights.

        :raises CheckpointError: if the config has no number of layers, or the weights do not fit.
        """
        layers, prior, guide = (self.config.get(key, default) for key, default in LOADED_FIELDS.items())
        if layers not in ARCHITECTURES:
            raise CheckpointError(
                f"{self.path} records no usable number of layers in its config ({layers!r}): it was not written"
                " by examples/mnist.py; build the VAE yourself and load_state_dict(...['module'])"
            )
        try:
            vae = VAE(*ARCHITECTURES[layers], prior=prior, guide=guide)
            vae.load_state_dict(self.module)
        except (RuntimeError, ValueError) as error:
            raise CheckpointError(
                f"the weights in {self.path} do not fit the VAE its config describes (layers {layers}, prior"
                f" {prior!r}, guide {guide!r}): {error}"
            ) from error
        return vae.to(device)


#: the fields of a training config that shape the :class:`VAE`, and their defaults for older checkpoints
LOADED_FIELDS = {"layers": None, "prior": "normal", "guide": "normal"}


def read_weights(path: str | os.PathLike, device: torch.device | str = "cpu") -> StoredWeights:
    """
    The weights stored at ``path``: a run directory written by :func:`run` (its ``checkpoint.pt``),
    a checkpoint written by :func:`~pyro_iwae.training.train`, or a weights file written by
    :func:`~pyro_iwae.training.save_weights` (the ``weights/epoch-NNNN.pt`` snapshots).

    :raises CheckpointError: if there is no such file, or it is none of these.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "checkpoint.pt").is_file():
            raise CheckpointError(f"{path} is a directory without a checkpoint.pt: not a run directory")
        path = path / "checkpoint.pt"
    elif not path.is_file():
        raise CheckpointError(f"no such run directory, checkpoint or weights file: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # torch.load raises whatever its unpickler or zip reader does
        raise CheckpointError(
            f"{path} is not a checkpoint or weights file written by pyro_iwae ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(state, dict) or not {"config", "module"} <= state.keys() or not isinstance(state["config"], dict):
        found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is neither a checkpoint (keys config, module, optimizer, history, ...) nor a weights file"
            f" (keys config, epoch, module): it holds {found}"
        )
    epoch = state["epoch"] if "epoch" in state else len(state.get("history", []))
    return StoredWeights(path, state["config"], epoch, state["module"])


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> VAE:
    """
    The trained :class:`VAE` stored at ``path``: a run directory written by :func:`run` (its
    ``checkpoint.pt``), a checkpoint, or a weights file written by :func:`~pyro_iwae.training.save_weights`,
    built from the configuration stored with the weights (layers, prior, guide)::

        model = load_model("runs/mnist-iwae-k5-1layer/weights/epoch-0100.pt")
        log_likelihood(model.model, model.guide, images, num_particles=5000)

    :raises CheckpointError: if there is no such file, it is none of these, or its weights do not fit
        the VAE its configuration describes.
    """
    return read_weights(path, device).model(device)


def save_plots(vae: VAE, test: torch.Tensor, history: list[dict], out: Path, label: str) -> None:
    """``reconstructions.png``, ``samples.png``, ``latent_traversal.png`` and ``training_curve.png``."""
    x = test[:32]
    # rows: 16 test images, their reconstructions, the next 16, their reconstructions
    recon = plots.reconstructions(vae.model, vae.guide, x)
    rows = torch.stack([x.reshape(2, 16, -1), recon.reshape(2, 16, -1)], 1).reshape(-1, x.shape[1])
    plots.save_image_grid(out / "reconstructions.png", rows, 16, f"test images (odd rows), reconstructions: {label}")
    plots.save_image_grid(out / "samples.png", plots.samples(vae.model, 64, device=test.device), 8, f"samples: {label}")
    traversal = plots.latent_traversal(vae.model, vae.guide, test, vae.latent_names[0])
    plots.save_image_grid(
        out / "latent_traversal.png", traversal, 11, f"{vae.latent_names[0]}: most active units, -3 to +3 sd: {label}"
    )
    if history:
        plots.plot_training_curve(history, out / "training_curve.png", label)

"""
What a training run keeps on disk, written atomically so that a stop at any moment
loses at most the epoch in progress:

- ``checkpoint.pt``: everything :func:`~pyro_iwae.training.train` needs to go on as if
  it had not stopped (weights, optimiser state, random number generators, history), and
  the configuration it was trained with, which a resume must match;
- ``history.csv``: one row per finished epoch;
- ``weights/epoch-NNNN.pt``: the weights alone after chosen epochs (:func:`save_weights`),
  a few MB each, to score the approach to the final model later.

:func:`load_model` reads any of these back as a :class:`~pyro_iwae.models.VAE`.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import pyro.util
import torch
from torch import nn

from pyro_iwae.atomic import atomic_open
from pyro_iwae.models import ARCHITECTURES, DEFAULT_GUIDE, DEFAULT_PRIOR, VAE

#: the columns of ``history.csv``, and their types
HISTORY_FIELDS = {"epoch": int, "lr": float, "loss": float, "seconds": float}
#: the fields of a training configuration that shape the :class:`VAE`, and their defaults for older checkpoints
ARCHITECTURE_FIELDS = {"layers": None, "prior": DEFAULT_PRIOR, "guide": DEFAULT_GUIDE}
#: fields added to the training configuration after checkpoints were written without them, and the value
#: those checkpoints were trained with where it was not None (fields added with a default of None read as
#: None where they are missing): before ``--init`` every model started from ``nn.Linear``'s own weights,
#: whatever ``--init``'s default becomes
ADDED_FIELD_DEFAULTS = {"init": "pytorch"}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to another configuration."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_open(path) as f:
        torch.save(state, f)


def save_weights(path: str | os.PathLike, module: nn.Module, config: dict, epoch: int) -> None:
    """
    The module's state dict alone (no optimiser state: a few MB), with the ``config``
    it was trained with and its ``epoch``, written atomically to ``path``.
    """
    save_checkpoint(path, dict(config=config, epoch=epoch, module=module.state_dict()))


def is_snapshot_epoch(epoch: int, every: int) -> bool:
    """
    Epochs 0 to 9, then every 10th to 90, every 100th to 900, and so on, but at least every
    ``every`` epochs: about 9 per decade, evenly spread on a log scale, for a training curve.
    """
    return epoch == 0 or epoch % min(every, 10 ** int(math.log10(epoch))) == 0


def write_history(path: str | os.PathLike, history: list[dict]) -> None:
    """``history.csv``: one row per epoch, the fields of :data:`HISTORY_FIELDS`."""
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(HISTORY_FIELDS))
        writer.writeheader()
        writer.writerows(history)


def read_history(path: str | os.PathLike) -> list[dict]:
    """The rows :func:`write_history` wrote, with their types."""
    with open(path, newline="") as f:
        return [{name: HISTORY_FIELDS[name](value) for name, value in row.items()} for row in csv.DictReader(f)]


class RunDirectory:
    """
    The files of one training run in ``path``: its checkpoint, history and weight snapshots.

    :param config: what the run depends on (JSON-like values); the checkpoint records it and
        :meth:`restore` refuses a checkpoint whose configuration differs.
    :param snapshot_every: keep the weights after the epochs that :func:`is_snapshot_epoch` picks and
        after the last one, in ``weights/`` (default: no snapshots).
    """

    def __init__(self, path: str | os.PathLike, config: dict, snapshot_every: int | None = None) -> None:
        self.path = Path(path)
        self.config = config
        self.snapshot_every = snapshot_every

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def save(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_generator: torch.Generator,
        history: list[dict],
        num_epochs: int,
    ) -> None:
        """
        After an epoch: the checkpoint, a snapshot of the weights if this epoch is one
        (``num_epochs`` is the length of the whole schedule), then ``history.csv``.
        """
        device = _device_of(module)
        state = dict(
            config=self.config,
            module=module.state_dict(),
            optimizer=optimizer.state_dict(),
            device=device.type,
            data_generator=data_generator.get_state(),
            rng=pyro.util.get_rng_state(),
            device_rng=_device_rng_state(device),
            history=history,
        )
        save_checkpoint(self.checkpoint_path, state)
        epoch = len(history)
        if self.snapshot_every is not None and (is_snapshot_epoch(epoch, self.snapshot_every) or epoch == num_epochs):
            self.save_snapshot(module, epoch)
        write_history(self.path / "history.csv", history)

    def save_snapshot(self, module: nn.Module, epoch: int) -> None:
        """``weights/epoch-NNNN.pt``, if this run keeps snapshots."""
        if self.snapshot_every is not None:
            save_weights(self.path / "weights" / f"epoch-{epoch:04d}.pt", module, self.config, epoch)

    def restore(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, data_generator: torch.Generator
    ) -> list[dict]:
        """
        Load the checkpoint into ``module``, ``optimizer``, ``data_generator`` and the random
        number generators that Pyro draws from. A checkpoint written on another kind of device
        (a CPU run going on on a GPU) loads too, with a warning: the weights and Adam's state
        carry over, but the random number streams cannot (a GPU's generators are not a CPU's),
        so they start afresh from ``data_generator``'s seed plus the epochs done, and the run no
        longer reproduces one that stayed on its device.

        :returns: the history of the epochs it holds.
        :raises CheckpointError: if there is none, or it was written with another configuration.
        """
        if not self.checkpoint_path.exists():
            raise CheckpointError(
                f"no checkpoint at {self.checkpoint_path} to resume from: start afresh instead"
                " (resume=False, without --resume)"
            )
        state = _load(self.checkpoint_path, "cpu")
        stored = {**ADDED_FIELD_DEFAULTS, **state["config"]}
        differences = [
            f"{key} {stored.get(key)!r} there, {value!r} here"
            for key, value in self.config.items()
            if not _same_value(stored.get(key), value)
        ]
        if differences:
            raise CheckpointError(
                f"the checkpoint {self.checkpoint_path} was written by another configuration"
                f" ({'; '.join(differences)}): resume with the same configuration, or write to another directory"
            )
        module.load_state_dict(state["module"])  # both copy to the parameters' device
        optimizer.load_state_dict(state["optimizer"])
        device = _device_of(module)
        written_on = state.get("device", "cpu")  # older checkpoints hold the CPU's generators only
        if written_on == device.type:
            data_generator.set_state(state["data_generator"])
            pyro.util.set_rng_state(state["rng"])
            if state.get("device_rng") is not None:
                torch.get_device_module(device).set_rng_state(state["device_rng"], device)
        else:  # fresh streams, from the seed and the epoch (the seed alone would repeat epoch 1's draws)
            fresh_seed = data_generator.initial_seed() + len(state["history"])
            pyro.set_rng_seed(fresh_seed)
            data_generator.manual_seed(fresh_seed)
            warnings.warn(
                f"{self.checkpoint_path} was written on a {written_on} device and training goes on on a"
                f" {device.type} device: the weights and the optimiser's state carry over, but the random"
                " number generators start afresh from the seed and the epoch, so the run will not reproduce one"
                f" that stayed on {written_on}",
                stacklevel=2,
            )
        return state["history"]


def _same_value(stored: object, value: object) -> bool:
    """Whether a checkpoint's configuration value is a run's: a path (``--init-from``) in any spelling."""
    if isinstance(stored, str) and isinstance(value, str):
        return os.path.normpath(stored) == os.path.normpath(value)
    return stored == value


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The state of the generator Pyro draws from on ``device`` if not the CPU (whose is in Pyro's own)."""
    return None if device.type == "cpu" else torch.get_device_module(device).get_rng_state(device)


class StoredWeights(NamedTuple):
    """What :func:`read_weights` found in a file."""

    #: the file read: a checkpoint (a run directory's ``checkpoint.pt``) or a weights file
    path: Path
    #: the training configuration it was written with
    config: dict
    #: the epochs trained
    epoch: int
    #: the :class:`VAE`'s state dict
    module: dict
    #: a checkpoint's rows of ``history.csv``, one per epoch (empty for a weights file)
    history: list[dict]

    def model(self, device: torch.device | str = "cpu") -> VAE:
        """
        The :class:`VAE` that ``config`` describes (layers, prior, guide), with these weights.

        :raises CheckpointError: if the config has no number of layers, or the weights do not fit.
        """
        layers, prior, guide = (self.config.get(key, default) for key, default in ARCHITECTURE_FIELDS.items())
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


def read_weights(path: str | os.PathLike, device: torch.device | str = "cpu") -> StoredWeights:
    """
    The weights stored at ``path``: a run directory (its ``checkpoint.pt``), a checkpoint,
    or a weights file written by :func:`save_weights` (the ``weights/epoch-NNNN.pt`` snapshots).

    :raises CheckpointError: if there is no such file, or it is none of these.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "checkpoint.pt").is_file():
            raise CheckpointError(f"{path} is a directory without a checkpoint.pt: not a run directory")
        path = path / "checkpoint.pt"
    elif not path.is_file():
        raise CheckpointError(f"no such run directory, checkpoint or weights file: {path}")
    state = _load(path, device)
    if not isinstance(state, dict) or not {"config", "module"} <= state.keys() or not isinstance(state["config"], dict):
        found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is neither a checkpoint (keys config, module, optimizer, history, ...) nor a weights file"
            f" (keys config, epoch, module): it holds {found}"
        )
    epoch = state["epoch"] if "epoch" in state else len(state.get("history", []))
    return StoredWeights(path, state["config"], epoch, state["module"], state.get("history", []))


def _load(path: Path, device: torch.device | str) -> object:
    """:func:`torch.load`, whose failures (whatever its unpickler or zip reader raises) name the file."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a checkpoint or weights file written by pyro_iwae, or it is damaged"
            f" ({type(error).__name__}: {error})"
        ) from error


def initialize_from(module: nn.Module, path: str | os.PathLike) -> StoredWeights:
    """
    Load into ``module`` the weights stored at ``path`` (anything :func:`read_weights` reads),
    to train them on, perhaps with another objective (Burda et al., 2016, Table 2).

    :returns: what was read: the weights' training configuration and epochs.
    :raises CheckpointError: if there are no such weights, or they do not fit ``module`` (another
        number of layers, prior or guide).
    """
    stored = read_weights(path, _device_of(module))
    try:
        module.load_state_dict(stored.module)
    except RuntimeError as error:
        trained = ", ".join(
            f"{key} {stored.config.get(key, default)!r}" for key, default in ARCHITECTURE_FIELDS.items()
        )
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]  # the first missing, unexpected or misshapen weights
        raise CheckpointError(
            f"the weights in {stored.path} were trained with {trained}, and do not fit the model to be trained"
            f" ({detail[:300]}): give it the same layers, prior and guide"
        ) from error
    return stored


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> VAE:
    """
    The trained :class:`VAE` stored at ``path``: a run directory (its ``checkpoint.pt``),
    a checkpoint, or a weights file written by :func:`save_weights`, built from the
    configuration stored with the weights (layers, prior, guide)::

        vae = load_model("runs/mnist-iwae-k5-1layer/weights/epoch-0100.pt")
        log_likelihood(vae.model, vae.guide, images, num_particles=5000)

    :raises CheckpointError: if there is no such file, it is none of these, or its weights do not fit
        the VAE its configuration describes.
    """
    return read_weights(path, device).model(device)

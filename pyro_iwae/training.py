"""
Stochastic optimisation of a Pyro objective, with the schedule of Burda et al.
(2016) and resumable, atomically written checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pyro
import pyro.util
import torch
from pyro.infer import ELBO
from torch import nn
from tqdm.auto import tqdm

from pyro_iwae.atomic import atomic_open
from pyro_iwae.data import batches
from pyro_iwae.importance import check_data_plate, importance_traces

SCHEDULES = ("constant", "burda")
#: Adam settings of Burda et al. (2016), section 5.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-4


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss)."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing or belongs to another configuration."""


def burda_learning_rates(lr: float = 1e-3, num_stages: int = 8) -> list[float]:
    """
    One learning rate per epoch: ``3**i`` epochs at ``lr * 10**(-i/7)`` for
    ``i = 0 .. num_stages - 1`` (Burda et al., 2016, section 5: 3280 epochs).
    """
    return [lr * 10 ** (-i / 7) for i in range(num_stages) for _ in range(3**i)]


def learning_rates(schedule: str, lr: float, epochs: int | None) -> list[float]:
    """
    One learning rate per epoch.

    :param schedule: ``"constant"`` (``epochs`` epochs at ``lr``) or ``"burda"``
        (:func:`burda_learning_rates`, truncated to its first ``epochs`` epochs if given).
    """
    if epochs is not None and epochs < 0:
        raise ValueError(f"epochs must be at least 0, got {epochs}")
    if schedule == "burda":
        rates = burda_learning_rates(lr)
        if epochs is not None and epochs > len(rates):
            raise ValueError(f"the burda schedule has {len(rates)} epochs; got --epochs {epochs}")
        return rates[:epochs]
    if schedule == "constant":
        if epochs is None:
            raise ValueError("the constant schedule needs a number of epochs")
        return [lr] * epochs
    raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")


def make_optimizer(parameters: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
    """
    Adam with the settings of Burda et al. (2016), in PyTorch's fused implementation:
    one kernel for every parameter, 2.6 times faster than the default implementation
    on the CPU (0.27 against 0.68 ms a step for the one-layer model, ``python benchmarks/kernels.py``).
    """
    return torch.optim.Adam(parameters, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_open(path) as f:
        torch.save(state, f)


def is_snapshot_epoch(epoch: int, every: int) -> bool:
    """
    Epochs 0 to 9, then every 10th to 90, every 100th to 900, and so on, but at least every
    ``every`` epochs: about 9 per decade, evenly spread on a log scale, for a training curve.
    """
    return epoch == 0 or epoch % min(every, 10 ** int(math.log10(epoch))) == 0


def save_weights(path: str | os.PathLike, module: nn.Module, config: dict, epoch: int) -> None:
    """
    The module's state dict alone (no optimiser state: a few MB), with the ``config``
    it was trained with and its ``epoch``, written atomically to ``path``.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, dict(config=config, epoch=epoch, module=module.state_dict()))


def load_checkpoint(path: str | os.PathLike, config: dict, map_location: torch.device | str = "cpu") -> dict:
    """
    Load a checkpoint written by :func:`train` and check it was written with the same ``config``.

    :raises CheckpointError: if there is none, or its configuration differs.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path} to resume from: run without --resume to start afresh")
    state = torch.load(path, map_location=map_location, weights_only=False)
    differences = [
        f"{key} {state['config'].get(key)!r} there, {value!r} here"
        for key, value in config.items()
        if state["config"].get(key) != value
    ]
    if differences:
        raise CheckpointError(
            f"the checkpoint {path} was written by another configuration ({'; '.join(differences)}):"
            " resume with the same flags, or write to another --out"
        )
    return state


def train(
    module: nn.Module,
    model: Callable,
    guide: Callable,
    objective: ELBO,
    images: torch.Tensor,
    learning_rates: list[float],
    batch_size: int = 20,
    dynamic_binarization: bool = True,
    seed: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    config: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[list[dict]], None] | None = None,
    snapshot_every: int | None = None,
) -> list[dict]:
    """
    Minimise ``objective`` with Adam (Burda et al.'s settings), one epoch per
    entry of ``learning_rates``, and write a checkpoint after every epoch.

    :param module: holds every parameter of ``model`` and ``guide``.
    :param images: ``[num_images, ...]`` training images on the CPU, intensities
        in [0, 1] (binarized per batch when ``dynamic_binarization``).
    :param config: what the run depends on; a checkpoint records it and
        ``resume`` refuses a checkpoint whose ``config`` differs.
    :param resume: continue from ``checkpoint_path`` with its parameters,
        optimiser state, history and random number generator states.
    :param on_epoch_end: called with the history after each epoch (and its checkpoint).
    :param snapshot_every: also keep the weights after the epochs that :func:`is_snapshot_epoch`
        picks and after the last, as ``weights/epoch-NNNN.pt`` beside the checkpoint (:func:`save_weights`),
        to score the approach to the final model later.
    :returns: the history, one ``{"epoch", "lr", "loss", "seconds"}`` dict per
        epoch, ``loss`` being the objective's loss per image.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if images.numel() and not (images.min() >= 0 and images.max() <= 1):
        raise ValueError(
            f"training images must be intensities in [0, 1] for the Bernoulli likelihood, got values in"
            f" [{images.min().item():g}, {images.max().item():g}]: divide 8-bit images by 255"
        )
    device = next(module.parameters()).device
    optimizer = make_optimizer(module.parameters(), lr=learning_rates[0] if learning_rates else 0.0)
    # refuse, before training, a model whose bound or log-likelihood cannot be formed per data point
    check_data_plate(*importance_traces(model, guide, images[:batch_size].to(device)))
    data_generator = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    if resume:
        state = load_checkpoint(checkpoint_path, config or {}, map_location=device)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        data_generator.set_state(state["data_generator"])
        pyro.util.set_rng_state(state["rng"])
        history = state["history"]
    else:
        pyro.set_rng_seed(seed)

    snapshots = None if snapshot_every is None or checkpoint_path is None else Path(checkpoint_path).parent / "weights"
    if snapshots is not None and not history:
        save_weights(snapshots / "epoch-0000.pt", module, config or {}, epoch=0)
    num_steps = math.ceil(images.shape[0] / batch_size)
    for epoch in tqdm(range(len(history), len(learning_rates)), desc="training", unit="epoch", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = learning_rates[epoch]
        start, total_loss = time.perf_counter(), 0.0
        epoch_batches = batches(images, batch_size, data_generator, dynamic_binarization)
        bar = tqdm(epoch_batches, total=num_steps, desc=f"epoch {epoch + 1}", leave=False, disable=not progress)
        for step, x in enumerate(bar):
            optimizer.zero_grad(set_to_none=True)
            loss = objective.loss_and_grads(model, guide, x.to(device))
            if not math.isfinite(loss):
                raise TrainingError(
                    f"the loss is {loss} at epoch {epoch + 1}, step {step + 1}; the last good checkpoint"
                    f" ({checkpoint_path}, after epoch {epoch}) is kept. Lower --lr (or use --schedule burda)"
                    " and train afresh, or --resume to retry from that checkpoint."
                )
            optimizer.step()
            total_loss += loss
        history.append(
            dict(
                epoch=epoch + 1,
                lr=learning_rates[epoch],
                loss=total_loss / images.shape[0],
                seconds=time.perf_counter() - start,
            )
        )
        if checkpoint_path is not None:
            state = dict(
                config=config or {},
                module=module.state_dict(),
                optimizer=optimizer.state_dict(),
                data_generator=data_generator.get_state(),
                rng=pyro.util.get_rng_state(),
                history=history,
            )
            save_checkpoint(checkpoint_path, state)
        if snapshots is not None and (is_snapshot_epoch(epoch + 1, snapshot_every) or epoch + 1 == len(learning_rates)):
            save_weights(snapshots / f"epoch-{epoch + 1:04d}.pt", module, config or {}, epoch=epoch + 1)
        if on_epoch_end is not None:
            on_epoch_end(history)
    return history

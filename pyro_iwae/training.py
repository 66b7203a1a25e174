"""
Stochastic optimisation of a Pyro objective: the learning-rate schedules of Burda et al.
(2016) and the training loop, which keeps a resumable checkpoint after every epoch
(:mod:`pyro_iwae.checkpoints`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import pyro
import torch
from pyro.infer import ELBO
from torch import nn
from tqdm.auto import tqdm

from pyro_iwae.checkpoints import CheckpointError, RunDirectory
from pyro_iwae.data import batches
from pyro_iwae.importance import check_data_plate, importance_traces
from pyro_iwae.validation import positive_integer

#: Adam settings of Burda et al. (2016), section 5.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-4
#: training steps between two reads of the loss by the host (each waits for a GPU to catch up)
CHECK_EVERY = 100


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss)."""


def constant_learning_rates(lr: float, epochs: int | None) -> list[float]:
    """``epochs`` epochs at ``lr``."""
    if epochs is None:
        raise ValueError("the constant schedule needs a number of epochs")
    return [lr] * epochs


def burda_learning_rates(lr: float = 1e-3, epochs: int | None = None) -> list[float]:
    """
    ``3**i`` epochs at ``lr * 10**(-i/7)`` for ``i = 0 .. 7`` (Burda et al., 2016, section 5:
    3280 epochs), truncated to the first ``epochs`` if given.
    """
    rates = [lr * 10 ** (-i / 7) for i in range(8) for _ in range(3**i)]
    if epochs is not None and epochs > len(rates):
        raise ValueError(f"the burda schedule has {len(rates)} epochs; got epochs={epochs} (--epochs)")
    return rates[:epochs]


#: ``name -> (lr, epochs) -> one learning rate per epoch``
SCHEDULES: dict[str, Callable[[float, int | None], list[float]]] = {
    "constant": constant_learning_rates,
    "burda": burda_learning_rates,
}


def make_optimizer(parameters: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the settings of Burda et al. (2016), in PyTorch's fused implementation (one kernel)."""
    return torch.optim.Adam(parameters, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)


def train(
    vae: nn.Module,
    objective: ELBO,
    images: torch.Tensor,
    learning_rates: list[float],
    batch_size: int = 20,
    dynamic_binarization: bool = True,
    seed: int = 0,
    run: RunDirectory | None = None,
    resume: bool = False,
    progress: bool = True,
) -> list[dict]:
    """
    Minimise ``objective`` for ``vae.model`` and ``vae.guide`` with Adam (Burda et al.'s
    settings), one epoch per entry of ``learning_rates``::

        history = train(vae, IWAE_ELBO(num_particles=5), images, burda_learning_rates())

    :param vae: a module holding every parameter of its ``model`` and ``guide`` methods.
    :param images: ``[num_images, ...]`` training images, intensities in [0, 1], moved to
        the parameters' device and binarized there per batch when ``dynamic_binarization``.
    :param run: where to write a checkpoint and the history after every epoch.
    :param resume: continue from ``run``'s checkpoint with its parameters, optimiser
        state, history and random number generator states.
    :returns: the history, one ``{"epoch", "lr", "loss", "seconds"}`` dict per
        epoch, ``loss`` being the objective's loss per image.
    """
    _check_images(images, batch_size)
    if resume and run is None:
        raise ValueError("resume=True needs the run=RunDirectory(...) to resume from")
    if not resume and run is not None and run.checkpoint_path.exists():  # never train over finished epochs
        raise CheckpointError(
            f"{run.path} holds a checkpoint already: continue that run with --resume (resume=True), or write to"
            " another directory"
        )
    images = images.to(next(vae.parameters()).device)  # shuffled and binarized there, batch by batch
    optimizer = make_optimizer(vae.parameters(), lr=learning_rates[0] if learning_rates else 0.0)
    # refuse, before training, a model whose bound or log-likelihood cannot be formed per data point
    check_data_plate(*importance_traces(vae.model, vae.guide, images[:batch_size]))
    data_generator = torch.Generator(images.device).manual_seed(seed)
    pyro.set_rng_seed(seed)
    if resume:  # the random number generators as they were, unless the run moves to another kind of device
        history = run.restore(vae, optimizer, data_generator)
        if len(history) > len(learning_rates):
            raise CheckpointError(
                f"{run.checkpoint_path} holds {len(history)} epochs, more than the {len(learning_rates)} asked for:"
                f" resume with --epochs {len(history)} or more (learning_rates at least that long)"
            )
    else:
        history = []
        if run is not None:
            run.save_snapshot(vae, epoch=0)
    for epoch in tqdm(range(len(history), len(learning_rates)), desc="training", unit="epoch", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = learning_rates[epoch]
        start = time.perf_counter()
        epoch_batches = batches(images, batch_size, data_generator, dynamic_binarization)
        bar = tqdm(
            epoch_batches,
            total=-(-images.shape[0] // batch_size),
            desc=f"epoch {epoch + 1}",
            leave=False,
            disable=not progress,
        )
        try:
            loss = train_epoch(vae, objective, optimizer, bar).item()
        except TrainingError as error:
            kept = "no checkpoint was written"
            if run is not None and epoch > 0:
                kept = f"the checkpoint after epoch {epoch} ({run.checkpoint_path}) is kept"
            raise TrainingError(f"at epoch {epoch + 1}, {error}; {kept}. A lower learning rate may help.") from error
        history.append(
            dict(
                epoch=epoch + 1,
                lr=learning_rates[epoch],
                loss=loss / images.shape[0],
                seconds=time.perf_counter() - start,
            )
        )
        if run is not None:
            run.save(vae, optimizer, data_generator, history, num_epochs=len(learning_rates))
    return history


def train_epoch(
    vae: nn.Module,
    objective: ELBO,
    optimizer: torch.optim.Optimizer,
    epoch_batches: Iterable[torch.Tensor],
    check_every: int = CHECK_EVERY,
) -> torch.Tensor:
    """
    One :func:`train_step` per batch, reading nothing back to the host but one number every
    ``check_every`` steps and at the end: the losses add up on the device, and their sum so far
    must be finite.

    :returns: the sum of the batches' losses, a 0-dim float64 tensor on the parameters' device.
    :raises TrainingError: at the first check after a non-finite loss (whose step left the
        parameters as they were).
    """
    total_loss = torch.zeros((), dtype=torch.float64, device=next(vae.parameters()).device)
    step = checked = 0
    for step, x in enumerate(epoch_batches, start=1):
        total_loss += train_step(vae, objective, optimizer, x)
        if step % check_every == 0:
            _check_finite(total_loss, checked, step)
            checked = step
    if step > checked:
        _check_finite(total_loss, checked, step)
    return total_loss


def train_step(vae: nn.Module, objective: ELBO, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    """
    One Adam step on ``objective`` for ``vae.model`` and ``vae.guide``: Pyro's ``SVI.step``, with
    the optimiser's parameters fixed (``vae.parameters()``) rather than gathered from the trace,
    and without a host synchronization. A non-finite loss leaves the parameters and Adam's state
    as they were: the fused optimiser reads the flag ``found_inf`` on the device and skips the
    update (as it does for :class:`torch.amp.GradScaler`).

    :param optimizer: a fused optimiser (:func:`make_optimizer`'s); others do not read ``found_inf``.
    :returns: the loss, a 0-dim tensor on ``x``'s device.
    """
    optimizer.zero_grad(set_to_none=True)
    if hasattr(objective, "backward"):  # the objectives of pyro_iwae.objectives
        loss = objective.backward(vae.model, vae.guide, x)
    else:  # any Pyro ELBO: its loss_and_grads returns a float, read from the device
        loss = torch.tensor(objective.loss_and_grads(vae.model, vae.guide, x), dtype=torch.float64, device=x.device)
    optimizer.found_inf = loss.isfinite().logical_not().float()
    optimizer.step()
    return loss


def _check_finite(total_loss: torch.Tensor, first: int, last: int) -> None:
    """Raise a :class:`TrainingError` if ``total_loss``, the sum of the losses up to step ``last``, is not finite."""
    if not math.isfinite(total_loss):
        raise TrainingError(
            f"a loss of steps {first + 1} to {last} is not finite ({total_loss.item()}) and did not reach the"
            " parameters"
        )


def _check_images(images: torch.Tensor, batch_size: int) -> None:
    positive_integer("batch_size", batch_size)
    if batch_size > images.shape[0]:
        raise ValueError(
            f"batch_size {batch_size} is more than the {images.shape[0]} training images: lower it, or train on"
            " more images"
        )
    if images.numel() and not (images.min() >= 0 and images.max() <= 1):
        raise ValueError(
            f"training images must be intensities in [0, 1] for the Bernoulli likelihood, got values in"
            f" [{images.min().item():g}, {images.max().item():g}]: divide 8-bit images by 255"
        )

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

from pyro_iwae.checkpoints import RunDirectory
from pyro_iwae.data import batches
from pyro_iwae.importance import check_data_plate, importance_traces

#: Adam settings of Burda et al. (2016), section 5.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-4


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
        raise ValueError(f"the burda schedule has {len(rates)} epochs; got --epochs {epochs}")
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
    :param images: ``[num_images, ...]`` training images on the CPU, intensities
        in [0, 1] (binarized per batch when ``dynamic_binarization``).
    :param run: where to write a checkpoint and the history after every epoch.
    :param resume: continue from ``run``'s checkpoint with its parameters, optimiser
        state, history and random number generator states.
    :returns: the history, one ``{"epoch", "lr", "loss", "seconds"}`` dict per
        epoch, ``loss`` being the objective's loss per image.
    """
    _check_images(images, batch_size)
    if resume and run is None:
        raise ValueError("resume=True needs the run=RunDirectory(...) to resume from")
    device = next(vae.parameters()).device
    optimizer = make_optimizer(vae.parameters(), lr=learning_rates[0] if learning_rates else 0.0)
    # refuse, before training, a model whose bound or log-likelihood cannot be formed per data point
    check_data_plate(*importance_traces(vae.model, vae.guide, images[:batch_size].to(device)))
    data_generator = torch.Generator().manual_seed(seed)
    if resume:
        history = run.restore(vae, optimizer, data_generator)
    else:
        history = []
        pyro.set_rng_seed(seed)
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
            loss = train_epoch(vae, objective, optimizer, bar, device)
        except TrainingError as error:
            kept = "no checkpoint was written"
            if run is not None and epoch > 0:
                kept = f"the checkpoint after epoch {epoch} ({run.checkpoint_path}) is kept"
            raise TrainingError(f"at epoch {epoch + 1}, {error}; {kept}") from error
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
    device: torch.device,
) -> float:
    """
    One Adam step on ``objective`` per batch: Pyro's ``SVI.step``, with the optimiser's
    parameters fixed (``vae.parameters()``) rather than gathered from the trace.

    :returns: the sum of the batches' losses.
    :raises TrainingError: at the first non-finite loss, before it reaches the parameters.
    """
    total_loss = 0.0
    for step, x in enumerate(epoch_batches):
        optimizer.zero_grad(set_to_none=True)
        loss = objective.loss_and_grads(vae.model, vae.guide, x.to(device))
        if not math.isfinite(loss):
            raise TrainingError(
                f"step {step + 1}: the loss is {loss}, so the parameters were not updated; a lower learning rate"
                " may help"
            )
        optimizer.step()
        total_loss += loss
    return total_loss


def _check_images(images: torch.Tensor, batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
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

"""
Pictures of a trained model, made with numpy and matplotlib (no torchvision).

All image functions take flattened 28x28 images, ``[num_images, 784]``, and
read the observation site ``"x"`` of the model through Pyro handlers, so they
work for any model whose likelihood has a ``.mean``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyro_iwae.evaluation import ACTIVITY_THRESHOLD, posterior_means
from pyro_iwae.importance import importance_traces

SIDE = 28


def image_grid(images: torch.Tensor, num_columns: int, padding: int = 2) -> np.ndarray:
    """
    Tile ``[num_images, 784]`` images into one ``[height, width]`` array, row by row,
    with ``padding`` pixels of faint ink between them.
    """
    images = images.detach().cpu().reshape(-1, SIDE, SIDE).numpy()
    num_rows = -(-images.shape[0] // num_columns)
    cell = SIDE + padding
    grid = np.full((num_rows * cell + padding, num_columns * cell + padding), 0.15, dtype=np.float32)
    for index, image in enumerate(images):
        row, column = divmod(index, num_columns)
        grid[
            padding + row * cell : padding + row * cell + SIDE, padding + column * cell : padding + column * cell + SIDE
        ] = image
    return grid


def save_image_grids(path: str | os.PathLike, panels: list[tuple[str, torch.Tensor, int]], title: str = "") -> None:
    """
    Write :func:`image_grid` s side by side to ``path``, ink (pixel value 1) dark on white.

    :param panels: ``(title, [num_images, 784] images, num_columns)`` for each grid, left to right.
    """
    grids = [(panel_title, image_grid(images, num_columns)) for panel_title, images, num_columns in panels]
    width = sum(grid.shape[1] for _, grid in grids) / 40 + 0.2 * (len(grids) - 1)
    height = max(grid.shape[0] for _, grid in grids) / 40 + 0.4 + (0.3 if title else 0)
    figure = Figure(figsize=(width, height))
    for axes, (panel_title, grid) in zip(figure.subplots(1, len(grids), squeeze=False)[0], grids):
        axes.imshow(1 - grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes.set_axis_off()
        axes.set_title(panel_title, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=100, bbox_inches="tight")


def save_image_grid(path: str | os.PathLike, images: torch.Tensor, num_columns: int, title: str = "") -> None:
    """Write one :func:`image_grid` of ``images`` to ``path``."""
    save_image_grids(path, [(title, images, num_columns)])


@torch.inference_mode()
def reconstructions(model: Callable, guide: Callable, x: torch.Tensor) -> torch.Tensor:
    """
    ``E[x' | z]`` for one ``z ~ q(z | x)`` per image.

    :param x: ``[num_images, 784]``.
    :returns: ``[num_images, 784]`` pixel probabilities.
    """
    model_trace, _ = importance_traces(model, guide, x)
    return model_trace.nodes["x"]["fn"].mean


@torch.inference_mode()
def samples(model: Callable, num_images: int, x_dim: int = 784, device: torch.device | str = "cpu") -> torch.Tensor:
    """
    ``E[x | z]`` for ``z`` drawn from the prior (the model run without its observation).

    :returns: ``[num_images, x_dim]`` pixel probabilities.
    """
    placeholder = torch.zeros(num_images, x_dim, device=device)
    return poutine.trace(poutine.uncondition(model)).get_trace(placeholder).nodes["x"]["fn"].mean


@torch.inference_mode()
def latent_traversal(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    site: str,
    num_units: int = 8,
    num_steps: int = 11,
) -> torch.Tensor:
    """
    Vary one unit of latent ``site`` at a time, from -3 to +3 standard deviations
    (over ``data``) of its posterior mean, the other units held at their average
    posterior mean, for the ``num_units`` most active units.

    :returns: ``[num_units * num_steps, 784]`` pixel probabilities, one row per unit.
    """
    means = posterior_means(guide, data)[site]  # [num_data, latent_dim]
    center, spread = means.mean(0), means.std(0)
    units = spread.argsort(descending=True)[:num_units]
    offsets = torch.linspace(-3, 3, num_steps, device=data.device)
    z = center.repeat(units.numel() * num_steps, 1)
    rows = torch.arange(units.numel(), device=data.device).repeat_interleave(num_steps)
    z[torch.arange(z.shape[0]), units[rows]] += offsets.repeat(units.numel()) * spread[units[rows]]
    conditioned = poutine.condition(poutine.uncondition(model), data={site: z})
    return poutine.trace(conditioned).get_trace(data.new_zeros(z.shape[0], data.shape[1])).nodes["x"]["fn"].mean


def plot_training_curve(history: list[dict], path: str | os.PathLike, label: str = "") -> None:
    """Plot the training loss per image (nats) against the epoch, with the learning rate."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(6, 4))
    loss_axes = figure.subplots()
    loss_axes.plot(epochs, [row["loss"] for row in history], marker="o" if len(epochs) < 30 else None, label=label)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss (nats per image)")
    lr_axes = loss_axes.twinx()
    lr_axes.plot(epochs, [row["lr"] for row in history], color="grey", linestyle=":", label="learning rate")
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_yscale("log")
    if len(epochs) > 20:
        loss_axes.set_xscale("log")
    loss_axes.set_title(label or "training curve")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plot_unit_variances(
    variances: dict[str, torch.Tensor], path: str | os.PathLike, threshold: float = ACTIVITY_THRESHOLD, title: str = ""
) -> None:
    """
    Histograms of ``log10 Var_x(E_q[z_u | x])`` over the latent units ``u`` of each model
    (Burda et al., 2016, appendix C): a unit is either clearly active or clearly inactive,
    far from the ``threshold`` (dotted) that counts the active ones.

    :param variances: ``{model label: [num_units] variances}`` (:func:`~pyro_iwae.evaluation.unit_variances`,
        the layers concatenated).
    """
    logs = {label: v.detach().cpu().clamp_min(1e-12).log10().numpy() for label, v in variances.items()}
    low, high = min(x.min() for x in logs.values()), max(x.max() for x in logs.values())
    bins = np.linspace(min(low, np.log10(threshold)) - 0.25, max(high, 0.0) + 0.25, 40)
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for label, x in logs.items():
        active = int((x > np.log10(threshold)).sum())
        axes.hist(x, bins=bins, alpha=0.5, label=f"{label}: {active} of {x.size} active")
    axes.axvline(np.log10(threshold), color="grey", linestyle=":")
    axes.set_xlabel("log10 Var_x(E_q[z_u | x])")
    axes.set_ylabel("latent units")
    axes.set_title(title or "activity of the latent units")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


@torch.inference_mode()
def log_densities_on_grid(
    model: Callable, guide: Callable, x: torch.Tensor, site: str, grid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    ``log p(x, z)`` and ``log q(z | x)`` at every point ``z`` of ``grid``, for one data point ``x``:
    normalized over a fine enough grid, the first is the true posterior ``p(z | x)`` (Burda et al.,
    2016, appendix C), the second the guide's. The model's only latent must be ``site``.

    :param x: ``[1, ...]``, one data point.
    :param grid: ``[G, latent_dim]`` values of ``site``.
    :returns: two ``[G]`` tensors.
    """
    xs = x.expand(grid.shape[0], *x.shape[1:])
    densities = []
    for fn in (model, guide):
        trace = prune_subsample_sites(poutine.trace(poutine.condition(fn, data={site: grid})).get_trace(xs))
        trace.compute_log_prob()
        latents = [n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
        if latents:
            raise ValueError(f"the posterior of {site!r} alone needs it to be the only latent, but {latents} are too")
        sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
        densities.append(sum(s["log_prob"] for s in sites))
    return densities[0], densities[1]


def plot_posteriors(
    models: dict[str, tuple[Callable, Callable]],
    images: torch.Tensor,
    site: str,
    path: str | os.PathLike,
    extent: float = 3.0,
    resolution: int = 80,
) -> None:
    """
    For each model two rows of heat maps over its 2-D latent ``site`` on ``[-extent, extent]^2``: the
    true posterior ``p(z | x)`` and the guide's ``q(z | x)``, one column per image (Burda et al., 2016,
    appendix C, whose figure shows IWAE's guide covering more of a non-Gaussian posterior).

    :param models: ``{label: (model, guide)}``.
    :param images: ``[num_images, ...]``.
    """
    axis = torch.linspace(-extent, extent, resolution, device=images.device)
    grid = torch.cartesian_prod(axis, axis)  # [resolution^2, 2], the second coordinate fastest
    rows = [(label, kind) for label in models for kind in ("p(z | x)", "q(z | x)")]
    figure = Figure(figsize=(1.6 * images.shape[0], 1.6 * len(rows)))
    axes = figure.subplots(len(rows), images.shape[0], squeeze=False)
    for column, x in enumerate(images):
        for row, (label, kind) in enumerate(rows):
            model, guide = models[label]
            log_p, log_q = log_densities_on_grid(model, guide, x[None], site, grid)
            density = (log_p if kind.startswith("p") else log_q).softmax(0).reshape(resolution, resolution)
            ax = axes[row, column]
            ax.imshow(
                density.T.cpu().numpy(), origin="lower", extent=(-extent, extent, -extent, extent), cmap="viridis"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(f"{label}\n{kind}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)

"""What a run writes besides its checkpoint: ``metrics.json`` and the pictures."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pyro
import torch

from pyro_iwae import plots
from pyro_iwae.atomic import atomic_open
from pyro_iwae.evaluation import ImportanceEstimate
from pyro_iwae.experiments.config import PICTURE_IMAGES, RunConfig
from pyro_iwae.models import VAE


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """``json.dump`` to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)


def run_metrics(
    config: RunConfig,
    history: list[dict],
    estimate: ImportanceEstimate,
    active_units: dict[str, torch.Tensor],
    train_size: int,
    eval_seconds: float,
    device: torch.device,
) -> dict:
    """
    The contents of ``metrics.json``: the test log-likelihood (mean of the per-image
    estimates, and its standard error over images), the ELBO from the same samples, the
    active units (:func:`~pyro_iwae.evaluation.active_units`), the budget, and the ``config``.
    """
    log_likelihood, test_size = estimate.log_likelihood, estimate.log_likelihood.shape[0]
    return dict(
        test_log_likelihood=log_likelihood.mean().item(),
        test_log_likelihood_stderr=(log_likelihood.std() / test_size**0.5).item(),
        test_elbo=estimate.elbo.mean().item(),
        active_units=sum(int(units.sum()) for units in active_units.values()),
        active_units_per_layer={name: int(units.sum()) for name, units in active_units.items()},
        epochs=len(history),
        train_size=train_size,
        test_size=test_size,
        final_train_loss=history[-1]["loss"] if history else None,
        train_seconds=sum(row["seconds"] for row in history),
        eval_seconds=eval_seconds,
        device=str(device),
        torch_version=torch.__version__,
        pyro_version=pyro.__version__,
        config=dataclasses.asdict(config),
    )


def save_plots(vae: VAE, test: torch.Tensor, history: list[dict], out: str | os.PathLike, label: str) -> None:
    """``reconstructions.png``, ``samples.png``, ``latent_traversal.png`` and ``training_curve.png``."""
    out, x = Path(out), test[:PICTURE_IMAGES]
    # rows: 16 test images, their reconstructions, the next 16, their reconstructions
    recon = plots.reconstructions(vae.model, vae.guide, x)
    rows = torch.stack([x.reshape(2, 16, -1), recon.reshape(2, 16, -1)], 1).reshape(-1, x.shape[1])
    plots.save_image_grid(out / "reconstructions.png", rows, 16, f"test images (odd rows), reconstructions: {label}")
    plots.save_image_grid(out / "samples.png", plots.samples(vae.model, 64, device=test.device), 8, f"samples: {label}")
    site = vae.latent_names[0]
    traversal = plots.latent_traversal(vae.model, vae.guide, test, site)
    plots.save_image_grid(
        out / "latent_traversal.png", traversal, 11, f"{site}: most active units, -3 to +3 sd: {label}"
    )
    if history:
        plots.plot_training_curve(history, out / "training_curve.png", label)

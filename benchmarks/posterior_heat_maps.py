"""
Burda et al. (2016), appendix C: for models with a two-dimensional latent space, the true
posterior ``p(z | x)`` (``p(x, z)`` normalized on a grid) beside the guide's ``q(z | x)`` for a few
test images, for a VAE, an IWAE with k = 5 and one with k = 50. The paper's picture: the IWAE's
guide spreads over more of a posterior that is not Gaussian.

    python benchmarks/posterior_heat_maps.py --data-dir ../shared/data --epochs 5 --train-size 10000

Writes ``posteriors.png`` and ``table.md`` (each model's test NLL) to ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pyro

from pyro_iwae.data import load_dataset
from pyro_iwae.evaluation import log_likelihood
from pyro_iwae.experiments.cli import at_least, one_line_errors
from pyro_iwae.fast import keep_freed_memory
from pyro_iwae.models import VAE
from pyro_iwae.objectives import make_objective
from pyro_iwae.plots import plot_posteriors
from pyro_iwae.training import train

#: the models of the paper's figure: (label, objective, k)
MODELS = (("VAE", "elbo", 1), ("IWAE, k = 5", "iwae", 5), ("IWAE, k = 50", "iwae", 50))


def main(args: argparse.Namespace) -> str:
    mnist = load_dataset("mnist", args.data_dir, args.train_size, args.test_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models, rows = {}, []
    for label, objective, particles in MODELS:
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        # Burda et al.'s one-layer network with a 2-D latent space: x-200-200-z2
        vae = VAE(hidden_dims=(200,), latent_dims=(2,), mean_pixel=mnist.train.mean(0))
        objective_fn = make_objective(objective, particles)
        train(vae, objective_fn, mnist.train, [args.lr] * args.epochs, progress=not args.no_progress)
        pyro.set_rng_seed(args.seed)
        estimate = log_likelihood(vae.model, vae.guide, mnist.test, num_particles=args.eval_particles)
        rows.append(f"| {label} | {-estimate.log_likelihood.mean().item():.2f} |")
        models[label] = (vae.model, vae.guide)
    plot_posteriors(models, mnist.test[: args.images], "z1", out / "posteriors.png")
    table = "\n".join(
        [
            "# Burda et al. (2016), appendix C: posteriors of a 2-D latent space",
            "",
            "![posteriors](posteriors.png)",
            "",
            f"| model | test NLL (K = {args.eval_particles}, first {args.test_size} test images) |",
            "| --- | --- |",
            *rows,
            "",
            f"Each model: x-200-200-z2, tanh, {args.epochs} epochs of Adam at lr {args.lr} on the first"
            f" {args.train_size} dynamically binarized MNIST training images, batch 20, seed {args.seed}."
            f" Columns: the first {args.images} test images; rows: for each model, p(z | x) and q(z | x) on"
            " [-3, 3]^2. Command: `python benchmarks/posterior_heat_maps.py " + shlex.join(sys.argv[1:]) + "`",
            "",
        ]
    )
    (out / "table.md").write_text(table)
    return table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="directory in torchvision's layout; default $PYRO_IWAE_DATA")
    p.add_argument("--epochs", type=at_least(1), default=5, help="(default: %(default)s)")
    p.add_argument("--train-size", type=at_least(20), default=10_000, help="(default: %(default)s)")
    p.add_argument("--test-size", type=at_least(1), default=1000, help="images scored (default: %(default)s)")
    p.add_argument("--eval-particles", type=at_least(1), default=1000, help="(default: %(default)s)")
    p.add_argument("--images", type=at_least(1), default=6, help="images in the picture (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--out", default="runs/posteriors", help="(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true")
    return p


if __name__ == "__main__":
    keep_freed_memory()
    pyro.enable_validation(False)
    p = parser()
    with one_line_errors(p):
        print(main(p.parse_args()))

"""
Train a VAE (``--objective elbo``) or an IWAE (``--objective iwae``) on binarized
MNIST as in Burda, Grosse & Salakhutdinov (2016), "Importance Weighted
Autoencoders", and report the test log-likelihood estimated with
``--eval-particles`` importance samples per image.

    python examples/mnist.py --objective iwae --particles 10
    python examples/mnist.py --objective iwae-dreg --particles 10 --prior vamp --guide iaf
"""

from __future__ import annotations

import argparse
import json

from pyro_iwae.cli import add_experiment_arguments, at_least, experiment_config, run_main
from pyro_iwae.experiment import run
from pyro_iwae.models import ARCHITECTURES, GUIDES, PRIORS
from pyro_iwae.objectives import OBJECTIVES


def main(args: argparse.Namespace) -> dict:
    config = experiment_config(
        args,
        objective=args.objective,
        particles=args.particles,
        layers=args.layers,
        prior=args.prior,
        guide=args.guide,
        seed=args.seed,
        out=args.out or default_out(args),
        resume=args.resume,
        plots=not args.no_plots,
        validate=args.validate,
        snapshot_every=args.snapshot_every,
    )
    metrics = run(config)
    summary = {key: metrics[key] for key in ("test_log_likelihood", "test_elbo", "active_units", "train_seconds")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {config.out}/")
    return metrics


def default_out(args: argparse.Namespace) -> str:
    """``runs/<dataset>-<objective>-k<particles>-<layers>layer``, then ``-<prior>-prior`` and
    ``-<guide>-guide`` where they are not the default."""
    out = f"runs/{args.dataset}-{args.objective}-k{args.particles}-{args.layers}layer"
    if args.prior != "normal":
        out += f"-{args.prior}-prior"
    if args.guide != "normal":
        out += f"-{args.guide}-guide"
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="iwae",
        help="elbo: the VAE bound (Trace_ELBO); iwae: the k-sample importance weighted bound "
        "(RenyiELBO, alpha=0); iwae-stl, iwae-dreg: the same bound with the sticking-the-landing or the "
        "doubly reparameterized gradient for the guide (default: %(default)s)",
    )
    p.add_argument(
        "--particles",
        "-k",
        type=at_least(1),
        default=5,
        help="samples k per data point in the training objective (default: %(default)s)",
    )
    p.add_argument(
        "--layers",
        type=int,
        choices=sorted(ARCHITECTURES),
        default=1,
        help="stochastic layers: 1 (x-200-200-z50) or 2 (x-200-200-h100-100-100-h50) (default: %(default)s)",
    )
    p.add_argument(
        "--prior",
        choices=PRIORS,
        default="normal",
        help="prior over the top latent layer: N(0, I), a learned diagonal Gaussian, a mixture of 10 "
        "Gaussians, or the VampPrior with 500 pseudo-inputs (default: %(default)s)",
    )
    p.add_argument(
        "--guide",
        choices=list(GUIDES),
        default="normal",
        help="guide for each stochastic layer: a diagonal Gaussian, or one followed by 2 inverse "
        "autoregressive flows (default: %(default)s)",
    )
    add_experiment_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default: runs/<dataset>-<objective>-k<particles>-<layers>layer[-<prior>-prior]"
        "[-<guide>-guide])",
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument(
        "--snapshot-every",
        type=at_least(1),
        default=None,
        help="keep the weights in OUT/weights/ after epochs 0-9, 10-90 in tens, ..., at least every N epochs,"
        " and the last, for a training curve (default: off)",
    )
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG pictures")
    p.add_argument(
        "--validate",
        action="store_true",
        help="turn on Pyro's distribution validation (slower; off by default for speed)",
    )
    return p


if __name__ == "__main__":
    run_main(main, parser())

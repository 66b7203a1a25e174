"""
Train a VAE (``--objective elbo``) or an IWAE (``--objective iwae``) on binarized
MNIST as in Burda, Grosse & Salakhutdinov (2016), "Importance Weighted
Autoencoders", and report the test log-likelihood estimated with
``--eval-particles`` importance samples per image.

    python examples/mnist.py --objective iwae --particles 10
"""

from __future__ import annotations

import argparse
import json

from pyro_iwae.cli import add_experiment_arguments, at_least, experiment_config, run_main
from pyro_iwae.experiment import run
from pyro_iwae.models import ARCHITECTURES
from pyro_iwae.objectives import OBJECTIVES


def main(args: argparse.Namespace) -> dict:
    config = experiment_config(
        args,
        objective=args.objective,
        particles=args.particles,
        layers=args.layers,
        seed=args.seed,
        out=args.out or f"runs/{args.dataset}-{args.objective}-k{args.particles}-{args.layers}layer",
        resume=args.resume,
        plots=not args.no_plots,
        validate=args.validate,
    )
    metrics = run(config)
    summary = {key: metrics[key] for key in ("test_log_likelihood", "test_elbo", "active_units", "train_seconds")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {config.out}/")
    return metrics


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="iwae",
        help="elbo: the VAE bound (Trace_ELBO); iwae: the k-sample importance weighted bound "
        "(RenyiELBO, alpha=0) (default: %(default)s)",
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
    add_experiment_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument(
        "--out", default=None, help="output directory (default: runs/<dataset>-<objective>-k<particles>-<layers>layer)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG pictures")
    p.add_argument(
        "--validate",
        action="store_true",
        help="turn on Pyro's distribution validation (slower; off by default for speed)",
    )
    return p


if __name__ == "__main__":
    run_main(main, parser())

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

from pyro_iwae.cli import at_least, positive_float, run_main
from pyro_iwae.data import DATA_DIR_ENV, DATASETS
from pyro_iwae.experiment import ExperimentConfig, run
from pyro_iwae.models import ARCHITECTURES
from pyro_iwae.objectives import OBJECTIVES
from pyro_iwae.training import SCHEDULES


def main(args: argparse.Namespace) -> dict:
    config = ExperimentConfig(
        objective=args.objective,
        particles=args.particles,
        layers=args.layers,
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs=10 if args.epochs is None and args.schedule == "constant" else args.epochs,
        schedule=args.schedule,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_particles=args.eval_particles,
        eval_batch_size=args.eval_batch_size,
        train_size=args.train_size,
        test_size=args.test_size,
        device=args.device,
        seed=args.seed,
        out=args.out or f"runs/{args.dataset}-{args.objective}-k{args.particles}-{args.layers}layer",
        resume=args.resume,
        plots=not args.no_plots,
        progress=not args.no_progress,
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
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="mnist",
        help="mnist and fashion-mnist are binarized dynamically; binarized-mnist is the fixed "
        "binarization of Larochelle & Murray (default: %(default)s)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"directory in torchvision's layout (MNIST/raw/...); default ${DATA_DIR_ENV}, else ./data",
    )
    p.add_argument(
        "--epochs",
        type=at_least(0),
        default=None,
        help="passes over the training set (default: 10 with --schedule constant, all 3280 with "
        "--schedule burda; with burda, a number truncates the schedule)",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="constant",
        help="constant: --lr throughout; burda: lr*10^(-i/7) for 3^i epochs, i=0..7 (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=at_least(1), default=20, help="images per step, 20 as in the paper (default: %(default)s)"
    )
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument(
        "--eval-particles",
        type=at_least(1),
        default=5000,
        help="importance samples K per test image for log p(x) (default: %(default)s)",
    )
    p.add_argument(
        "--eval-batch-size",
        type=at_least(1),
        default=100,
        help="test images per evaluation pass (default: %(default)s)",
    )
    p.add_argument(
        "--train-size", type=at_least(1), default=None, help="use the first N training images (default: all)"
    )
    p.add_argument("--test-size", type=at_least(1), default=None, help="use the first N test images (default: all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument(
        "--out", default=None, help="output directory (default: runs/<dataset>-<objective>-k<particles>-<layers>layer)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG pictures")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    p.add_argument(
        "--validate",
        action="store_true",
        help="turn on Pyro's distribution validation (slower; off by default for speed)",
    )
    return p


if __name__ == "__main__":
    run_main(main, parser())

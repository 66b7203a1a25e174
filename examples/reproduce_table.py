"""
Reproduce Table 1 of Burda, Grosse & Salakhutdinov (2016): VAE and IWAE with
k = 1, 5, 50 samples and 1 or 2 stochastic layers, each scored by its test
log-likelihood with K = 5000 importance samples, beside the paper's numbers.

    python examples/reproduce_table.py --data-dir ../shared/data --epochs 3 --schedule burda

An interrupted grid resumes: finished models are skipped, a model with a
checkpoint continues from it.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from pyro_iwae.cli import at_least, positive_float, run_main
from pyro_iwae.data import DATASETS, load_dataset
from pyro_iwae.experiment import ExperimentConfig, resolve_device
from pyro_iwae.objectives import OBJECTIVES
from pyro_iwae.reproduction import (
    grid,
    plot_nll_vs_k,
    plot_training_curves,
    run_grid,
    save_side_by_side,
    write_results,
    write_table,
)


def main(args: argparse.Namespace) -> str:
    base = ExperimentConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs=args.epochs,
        schedule=args.schedule,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_particles=args.eval_particles,
        eval_batch_size=args.eval_batch_size,
        train_size=args.train_size,
        test_size=args.test_size,
        device=args.device,
        plots=False,
        progress=not args.no_progress,
    )
    cells = grid(args.objectives, args.particles, args.layers, args.seeds)
    results = run_grid(cells, base, args.out)

    command = "python examples/reproduce_table.py " + shlex.join(sys.argv[1:])
    write_results(results, f"{args.out}/results.json")
    table = write_table(results, args.dataset, command, f"{args.out}/table.md")
    plot_nll_vs_k(results, args.dataset, f"{args.out}/nll_vs_k.png")
    plot_training_curves(results, args.out, f"{args.out}/training_curves.png")
    test = load_dataset(args.dataset, args.data_dir, test_size=args.test_size).test
    save_side_by_side(cells, test.to(resolve_device(args.device)), args.out)
    print(table)
    return table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    p.add_argument("--particles", nargs="+", type=at_least(1), default=[1, 5, 50], help="values of k")
    p.add_argument("--layers", nargs="+", type=int, choices=(1, 2), default=[1, 2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one model per seed; the table shows mean ± sd")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--data-dir", default=None, help="as for examples/mnist.py")
    p.add_argument(
        "--epochs",
        type=at_least(0),
        default=None,
        help="epochs per model (default: 3280 with --schedule burda, which it truncates)",
    )
    p.add_argument("--schedule", choices=("constant", "burda"), default="burda")
    p.add_argument("--batch-size", type=at_least(1), default=20)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--eval-particles", type=at_least(1), default=5000)
    p.add_argument("--eval-batch-size", type=at_least(1), default=100)
    p.add_argument("--train-size", type=at_least(1), default=None)
    p.add_argument("--test-size", type=at_least(16), default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--out", default="runs/table", help="one sub-directory per model, and the table (default: %(default)s)"
    )
    p.add_argument("--no-progress", action="store_true")
    return p


if __name__ == "__main__":
    run_main(main, parser())

"""
Reproduce Table 1 of Burda, Grosse & Salakhutdinov (2016): VAE and IWAE with
k = 1, 5, 50 samples and 1 or 2 stochastic layers, each scored by its test
log-likelihood with K = 5000 importance samples, beside the paper's numbers.

    python examples/reproduce_table.py --data-dir ../shared/data --schedule burda --epochs 5 --test-size 2000

With ``--objectives elbo iwae iwae-stl iwae-dreg`` the table gains columns for the
IWAE bound trained with the STL and DReG gradient estimators; with ``miwae --groups M``,
``ciwae --beta B`` or ``piwae --groups M``, for the objectives of Rainforth et al. (2018).

An interrupted grid resumes: finished models are skipped, a model with a
checkpoint continues from it.

Under torchrun, each process trains and scores a share of the models, balanced by their
estimated cost, and rank 0 writes the table once all are done:

    torchrun --standalone --nproc_per_node 2 examples/reproduce_table.py --data-dir ../shared/data ...
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys

from mnist import main as train_and_evaluate  # this directory's examples/mnist.py

from pyro_iwae.data import load_dataset
from pyro_iwae.experiments.cli import at_least, one_line_errors
from pyro_iwae.experiments.config import OBJECTIVE_OPTIONS, RunConfig, resolve_device
from pyro_iwae.experiments.distributed import process_group, rank
from pyro_iwae.experiments.grid import (
    TABLE_OBJECTIVES,
    grid,
    plot_nll_vs_k,
    plot_training_curves,
    run_grid,
    save_side_by_side,
    write_results,
    write_table,
)
from pyro_iwae.fast import keep_freed_memory
from pyro_iwae.models import ARCHITECTURES
from pyro_iwae.objectives import OBJECTIVES

#: the flags of examples/mnist.py that every cell of the grid shares
SHARED_FIELDS = (
    "dataset",
    "data_dir",
    "epochs",
    "schedule",
    "batch_size",
    "lr",
    "eval_particles",
    "eval_batch_size",
    "train_size",
    "test_size",
    "device",
    "progress",
)
#: how long a process that has finished its share of the grid waits for the others: the processes
#: meet only once, at the end, after hours or days of training; when a process fails, torchrun stops
#: the others on its machine (and a rerun resumes), so the wait needs no shorter limit
WAIT_FOR_THE_OTHERS = datetime.timedelta(days=365)


def main(args: argparse.Namespace) -> str | None:
    """Train and score the grid (this process's share of it, under torchrun); rank 0 writes and returns the table."""
    base = RunConfig.from_args(args, SHARED_FIELDS, plots=False)
    cells = grid(args.objectives, args.particles, args.layers, args.seeds)
    objective_flags = {name: getattr(args, name) for name in OBJECTIVE_OPTIONS.values()}
    results = run_grid(cells, base, args.out, train_and_evaluate, objective_flags)
    if rank() != 0:
        return None

    command = "python examples/reproduce_table.py " + shlex.join(sys.argv[1:])
    write_results(results, f"{args.out}/results.json")
    table = write_table(results, args.dataset, command, f"{args.out}/table.md")
    plot_nll_vs_k(results, args.dataset, f"{args.out}/nll_vs_k.png")
    plot_training_curves(results, args.out, f"{args.out}/training_curves.png")
    test = load_dataset(args.dataset, args.data_dir, test_size=args.test_size).test
    save_side_by_side(cells, test.to(resolve_device(args.device)), args.out)
    return table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--objectives",
        nargs="+",
        choices=list(OBJECTIVES),
        default=list(TABLE_OBJECTIVES),
        help="columns of the table; add iwae-stl iwae-dreg for the gradient estimators (default: %(default)s)",
    )
    p.add_argument("--particles", nargs="+", type=at_least(1), default=[1, 5, 50], help="values of k")
    p.add_argument("--layers", nargs="+", type=int, choices=sorted(ARCHITECTURES), default=[1, 2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one model per seed; the table shows mean ± sd")
    RunConfig.add_arguments(p, (*OBJECTIVE_OPTIONS.values(), *SHARED_FIELDS), schedule="burda")
    p.add_argument(
        "--out", default="runs/table", help="one sub-directory per model, and the table (default: %(default)s)"
    )
    return p


if __name__ == "__main__":
    keep_freed_memory()  # every step and evaluation pass reuses the last one's memory
    p = parser()
    with one_line_errors(p, "interrupted: the finished models and epochs are kept; run the command again to continue"):
        args = p.parse_args()
        # the processes exchange only their cells' metrics, so gloo serves GPUs too
        with process_group(resolve_device(args.device), backend="gloo", timeout=WAIT_FOR_THE_OTHERS):
            table = main(args)
    if table is not None:
        print(table)

"""
Peak memory of the evaluator at K = 5000 and K = 50000 on the same images (chunking should keep it
flat), and of training at k = 50, each measured in a fresh process as the growth of its peak
resident set size over what it held before the measured work.

    python benchmarks/memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import pyro
import torch

from pyro_iwae.evaluation import log_likelihood
from pyro_iwae.models import VAE
from pyro_iwae.objectives import make_objective


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(args: argparse.Namespace) -> None:
    """Run one measured job and print its peak growth in MiB as JSON."""
    pyro.enable_validation(False)
    torch.manual_seed(0)
    vae = VAE()
    x = torch.bernoulli(torch.full((args.images, 784), 0.13))
    # touch everything once at a small size, so that the baseline includes the libraries' own buffers
    log_likelihood(vae.model, vae.guide, x[:2], num_particles=2)
    baseline = peak_mib()
    if args.job == "eval":
        log_likelihood(vae.model, vae.guide, x, args.particles)
    else:
        elbo, optimizer = make_objective("iwae", args.particles), torch.optim.Adam(vae.parameters())
        for batch in x.split(args.batch_size):
            optimizer.zero_grad()
            elbo.loss_and_grads(vae.model, vae.guide, batch)
            optimizer.step()
    print(json.dumps({"peak_growth_mib": peak_mib() - baseline}))


def measure(*flags: str) -> float:
    command = [sys.executable, __file__, "--child", *flags]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)["peak_growth_mib"]


def main(args: argparse.Namespace) -> None:
    images = str(args.images)
    evaluations = {k: measure("--job", "eval", "--particles", str(k), "--images", images) for k in (5000, 50000)}
    print(f"| job ({args.images} images) | peak memory growth (MiB) |")
    print("| --- | --- |")
    for k, mib in evaluations.items():
        print(f"| evaluator, K = {k} | {mib:.0f} |")
    for batch_size in (20, 100):
        mib = measure("--job", "train", "--particles", "50", "--batch-size", str(batch_size), "--images", images)
        print(f"| training, IWAE k = 50, batch {batch_size} | {mib:.0f} |")
    print(f"evaluator K = 50000 / K = 5000: {evaluations[50000] / evaluations[5000]:.2f}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--job", choices=("eval", "train"), help=argparse.SUPPRESS)
    p.add_argument("--particles", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=20, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    arguments = parser().parse_args()
    child(arguments) if arguments.child else main(arguments)

"""
Peak memory of the evaluator at K = 5000 and K = 50000 on the same images (chunking should keep it
flat), and of training at k = 50, measured two ways:

- tensors: the most bytes of tensor storage alive at once, counted exactly by a
  ``TorchDispatchMode`` that sees every storage an operation makes and when it is freed;
  the same on every run;
- resident set: the growth of the process's peak resident set (``VmHWM``, reset before the
  work) over what it held before the measured work, in a fresh process (the median of
  ``--repeats``), glibc told to keep freed memory as ``examples/mnist.py`` does. It also holds
  the allocator's free space and the libraries' own buffers.

    python benchmarks/memory.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import weakref

import pyro
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pyro_iwae.evaluation import log_likelihood
from pyro_iwae.fast import keep_freed_memory
from pyro_iwae.models import VAE
from pyro_iwae.objectives import make_objective
from pyro_iwae.training import make_optimizer

MIB = 2**20


class TensorMemory(TorchDispatchMode):
    """Counts the bytes of the tensor storages that operations inside it make, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.tracked: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and id(storage := tensor.untyped_storage()) not in self.tracked:
                self.tracked.add(id(storage))
                self.live += storage.nbytes()
                weakref.finalize(storage, self._free, id(storage), storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out

    def _free(self, key: int, nbytes: int) -> None:
        self.tracked.discard(key)
        self.live -= nbytes


def job(kind: str, particles: int, images: int, batch_size: int) -> None:
    """The measured work, on a fixed model and fixed images."""
    torch.manual_seed(0)
    vae = VAE()
    x = torch.bernoulli(torch.full((images, 784), 0.13))
    if kind == "eval":
        log_likelihood(vae.model, vae.guide, x, num_particles=particles)
        return
    elbo, optimizer = make_objective("iwae", particles), make_optimizer(vae.parameters(), lr=1e-3)
    for batch in x.split(batch_size):
        optimizer.zero_grad()
        elbo.loss_and_grads(vae.model, vae.guide, batch)
        optimizer.step()


def resident_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from ``/proc/self/status`` (Linux)."""
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith(field + ":"))
    return int(kib) / 1024


def child(args: argparse.Namespace) -> None:
    """Run one job in this fresh process and print the growth of its peak resident set, in MiB, as JSON."""
    pyro.enable_validation(False)
    keep_freed_memory()
    job("eval", 2, 2, 2)  # touch everything once at a small size: the baseline holds the libraries' own buffers
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the peak (VmHWM) to what the process holds now
    baseline = resident_mib("VmRSS")
    job(args.job, args.particles, args.images, args.batch_size)
    print(json.dumps({"rss_growth_mib": resident_mib("VmHWM") - baseline}))


def measure(kind: str, particles: int, images: int, batch_size: int, repeats: int) -> tuple[float, float]:
    """``(tensor peak, median resident-set growth)`` in MiB."""
    with TensorMemory() as memory:
        job(kind, particles, images, batch_size)
    flags = ["--job", kind, "--particles", str(particles), "--images", str(images), "--batch-size", str(batch_size)]
    command = [sys.executable, __file__, "--child", *flags]
    rss = [json.loads(subprocess.run(command, check=True, capture_output=True).stdout) for _ in range(repeats)]
    return memory.peak / MIB, statistics.median(r["rss_growth_mib"] for r in rss)


def main(args: argparse.Namespace) -> dict:
    pyro.enable_validation(False)
    jobs = {
        "evaluator, K = 5000": ("eval", 5000, 20),
        "evaluator, K = 50000": ("eval", 50000, 20),
        "training, IWAE k = 50, batch 20": ("train", 50, 20),
        "training, IWAE k = 50, batch 100": ("train", 50, 100),
    }
    print(
        f"| job ({args.images} images) | tensors at peak (MiB) | resident set growth (MiB, median of {args.repeats}) |"
    )
    print("| --- | --- | --- |")
    results = {}
    for name, (kind, particles, batch_size) in jobs.items():
        results[name] = measure(kind, particles, args.images, batch_size, args.repeats)
        print(f"| {name} | {results[name][0]:.1f} | {results[name][1]:.0f} |", flush=True)
    small, large = results["evaluator, K = 5000"], results["evaluator, K = 50000"]
    print(f"evaluator K = 50000 / K = 5000: tensors {large[0] / small[0]:.2f}, resident set {large[1] / small[1]:.2f}")
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per resident-set figure")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--job", choices=("eval", "train"), help=argparse.SUPPRESS)
    p.add_argument("--particles", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=20, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    arguments = parser().parse_args()
    child(arguments) if arguments.child else main(arguments)

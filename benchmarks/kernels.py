"""
The stand-ins of :mod:`pyro_iwae.fast` and the fused optimiser, each timed side by side
with the stock piece it replaces (median of ``--repeats`` calls, interleaved, glibc told to
keep freed memory as ``examples/mnist.py`` does), at the shapes of one evaluator pass
(100 images x 100 particles):

- :class:`~pyro_iwae.fast.Tanh`, ``2 sigmoid(2x) - 1``, against ``torch.tanh`` on a
  ``[10000, 200]`` tensor (one hidden layer), forward only;
- :class:`~pyro_iwae.fast.BernoulliPixels` against ``Bernoulli(logits=l).to_event(1)``:
  ``log_prob`` of ``[100, 100, 784]`` logits;
- :class:`~pyro_iwae.fast.DiagonalNormal` against ``Normal(loc, scale).to_event(1)``: a
  guide's ``[100, 50]`` parameters expanded to 100 particles, as Pyro's plates do, and
  ``log_prob`` of ``[100, 100, 50]`` samples;
- :class:`~pyro_iwae.fast.DiagonalNormalMixture` against ``MixtureSameFamily`` of
  ``Normal(loc, scale).to_event(1)``: a VampPrior's 500 components in 50 dimensions, ``log_prob``
  of ``[10, 100, 50]`` samples (a tenth of a pass: the stock piece forms ``[1000, 500, 50]``);
- :func:`pyro_iwae.training.make_optimizer`, fused Adam, against ``torch.optim.Adam``'s
  default implementation, one step of the one-layer model's parameters.

    python benchmarks/kernels.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pyro.distributions as dist
import torch

from pyro_iwae.experiments.cli import at_least
from pyro_iwae.fast import BernoulliPixels, DiagonalNormal, DiagonalNormalMixture, Tanh, keep_freed_memory
from pyro_iwae.models import VAE
from pyro_iwae.training import ADAM_BETAS, ADAM_EPS, make_optimizer


def median_ms(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each call in milliseconds, the calls interleaved after one warm-up each."""
    seconds = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(s) for name, s in seconds.items()}


def adam_step(optimizer: torch.optim.Adam) -> Callable[[], None]:
    """One step of ``optimizer`` on gradients set once."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = torch.randn_like(parameter)
    return optimizer.step


def main(args: argparse.Namespace) -> dict[str, float]:
    keep_freed_memory()
    torch.manual_seed(0)
    hidden, tanh = torch.randn(10_000, 200), Tanh()
    logits, pixels = torch.randn(100, 100, 784), torch.randint(0, 2, (100, 100, 784)).float()
    loc, scale, z = torch.randn(100, 50), torch.rand(100, 50) + 0.5, torch.randn(100, 100, 50)
    mixture_logits, mixture_loc, mixture_scale = torch.zeros(500), torch.randn(500, 50), torch.rand(500, 50) + 0.05
    mixture_z = torch.randn(10, 100, 50)
    default_vae, fused_vae = VAE(), VAE()
    default_adam = torch.optim.Adam(default_vae.parameters(), lr=1e-3, betas=ADAM_BETAS, eps=ADAM_EPS)
    # pairs: the stock piece, then ours
    calls = {
        "torch.tanh, [10000, 200]": lambda: torch.tanh(hidden),
        "Tanh (2 sigmoid(2x) - 1)": lambda: tanh(hidden),
        "Bernoulli(logits).to_event(1).log_prob, [100, 100, 784]": lambda: (
            dist.Bernoulli(logits=logits).to_event(1).log_prob(pixels)
        ),
        "BernoulliPixels(logits).log_prob": lambda: BernoulliPixels(logits).log_prob(pixels),
        "Normal(loc, scale).to_event(1), expand, log_prob, [100, 100, 50]": lambda: (
            dist.Normal(loc, scale).to_event(1).expand([100, 100]).log_prob(z)
        ),
        "DiagonalNormal(loc, scale), expand, log_prob": lambda: (
            DiagonalNormal(loc, scale).expand([100, 100]).log_prob(z)
        ),
        "MixtureSameFamily(Normal.to_event(1)), 500 components, log_prob, [10, 100, 50]": lambda: (
            dist.MixtureSameFamily(
                dist.Categorical(logits=mixture_logits), dist.Normal(mixture_loc, mixture_scale).to_event(1)
            ).log_prob(mixture_z)
        ),
        "DiagonalNormalMixture(logits, loc, scale).log_prob": lambda: DiagonalNormalMixture(
            mixture_logits, mixture_loc, mixture_scale
        ).log_prob(mixture_z),
        "Adam step, default": adam_step(default_adam),
        "Adam step, fused (make_optimizer)": adam_step(make_optimizer(fused_vae.parameters(), lr=1e-3)),
    }
    with torch.no_grad():
        ms = median_ms(calls, args.repeats)
    print(f"median of {args.repeats}, {torch.get_num_threads()} threads")
    print("| | ms | default / ours |")
    print("| --- | --- | --- |")
    names = list(ms)
    for default, ours in zip(names[::2], names[1::2]):
        print(f"| {default} | {ms[default]:.3f} | |")
        print(f"| {ours} | {ms[ours]:.3f} | {ms[default] / ms[ours]:.1f} |")
    return ms


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=at_least(1), default=200, help="timed calls of each (default: %(default)s)")
    return p


if __name__ == "__main__":
    main(parser().parse_args())

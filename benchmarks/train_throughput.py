"""
Training throughput: one Adam step of our Pyro objectives (``RenyiELBO`` / ``Trace_ELBO``,
vectorized particles) against the hand-written PyTorch IWAE a user would otherwise write,
with the same networks, weights, optimizer (:func:`pyro_iwae.training.make_optimizer`) and
batches, measured side by side in one process, with glibc told to keep freed memory
(:func:`pyro_iwae.fast.keep_freed_memory`) as ``examples/mnist.py`` does.

    python benchmarks/train_throughput.py

Prints a markdown table: images/s and particles/s for each, and the ratio ours / hand-written:
its median over interleaved rounds, with the quartiles as the spread.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics

import pyro
import torch
import torch.nn.functional as F
from timing import add_device_argument, clock
from torch.distributions import Normal

from pyro_iwae.experiments.cli import at_least
from pyro_iwae.fast import keep_freed_memory
from pyro_iwae.models import ARCHITECTURES, VAE
from pyro_iwae.objectives import OBJECTIVES, make_objective
from pyro_iwae.training import make_optimizer


def hand_written_loss(vae: VAE, x: torch.Tensor, num_particles: int, objective: str) -> torch.Tensor:
    """
    The baseline: encode once, draw ``num_particles`` samples per image by broadcasting,
    decode, and take ``-sum_i log (1/k) sum_l w_il`` (iwae) or ``-sum_i mean_l log w_il`` (elbo).
    """
    log_weights, below = 0.0, x
    latents = []
    for layer in vae.encoder:
        loc, scale = layer.loc_scale(below)
        z = loc + scale * torch.randn((num_particles,) + loc.shape[-2:], device=loc.device)  # [k, B, dim]
        log_weights = log_weights - Normal(loc, scale, validate_args=False).log_prob(z).sum(-1)
        latents.append(z)
        below = z
    log_weights = log_weights + Normal(0.0, 1.0, validate_args=False).log_prob(latents[-1]).sum(-1)
    for lower, upper, layer in zip(latents[:-1], latents[1:], vae.decoder_latents):
        loc, scale = layer.loc_scale(upper)
        log_weights = log_weights + Normal(loc, scale, validate_args=False).log_prob(lower).sum(-1)
    logits = vae.decoder_pixels(latents[0]).logits
    log_weights = log_weights - F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(
        -1
    )
    if objective == "iwae":
        return -(torch.logsumexp(log_weights, 0) - math.log(num_particles)).sum()
    return -log_weights.mean(0).sum()


def time_steps(step, batches: list[torch.Tensor]) -> float:
    start = clock(batches[0].device)
    for x in batches:
        step(x)
    return clock(batches[0].device) - start


def measure(
    objective: str, layers: int, batch_size: int, num_particles: int, steps: int, rounds: int, device: torch.device
) -> dict:
    torch.manual_seed(0)
    ours = VAE(*ARCHITECTURES[layers]).to(device)
    theirs = copy.deepcopy(ours)
    our_optimizer = make_optimizer(ours.parameters(), lr=1e-3)
    their_optimizer = make_optimizer(theirs.parameters(), lr=1e-3)
    elbo = make_objective(objective, num_particles)

    def our_step(x):
        our_optimizer.zero_grad(set_to_none=True)
        elbo.loss_and_grads(ours.model, ours.guide, x)
        our_optimizer.step()

    def their_step(x):
        their_optimizer.zero_grad(set_to_none=True)
        hand_written_loss(theirs, x, num_particles, "elbo" if objective == "elbo" else "iwae").backward()
        their_optimizer.step()

    batches = [torch.bernoulli(torch.full((batch_size, 784), 0.13, device=device)) for _ in range(steps)]
    time_steps(our_step, batches[:3]), time_steps(their_step, batches[:3])  # warm up
    ours_seconds, theirs_seconds = [], []
    for i in range(rounds):  # interleaved, each first in every other round, so that both see the same machine
        order = [(ours_seconds, our_step), (theirs_seconds, their_step)]
        for seconds, step in order if i % 2 == 0 else reversed(order):
            seconds.append(time_steps(step, batches))
    images = batch_size * steps * rounds
    ratios = [theirs / ours for ours, theirs in zip(ours_seconds, theirs_seconds)]
    return dict(
        objective=objective,
        layers=layers,
        batch_size=batch_size,
        particles=num_particles,
        ours=images / sum(ours_seconds),
        theirs=images / sum(theirs_seconds),
        ratio=statistics.median(ratios),
        ratio_quartiles=statistics.quantiles(ratios, n=4)[::2],
    )


def main(args: argparse.Namespace) -> list[dict]:
    pyro.enable_validation(False)
    keep_freed_memory()
    rows = []
    print(
        "| objective | layers | batch | k | ours img/s | hand-written img/s | ours particles/s"
        " | ratio ours / hand (median) | quartiles |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for objective in args.objectives:
        for layers in args.layers:
            for batch_size in args.batch_sizes:
                for k in args.particles:
                    steps = max(3, args.images // (batch_size * max(1, k // 5)))
                    r = measure(objective, layers, batch_size, k, steps, args.rounds, args.device)
                    rows.append(r)
                    print(
                        f"| {objective} | {layers} | {batch_size} | {k} | {r['ours']:.0f} | {r['theirs']:.0f} |"
                        f" {r['ours'] * k:.0f} | {r['ratio']:.2f} | {r['ratio_quartiles'][0]:.2f}"
                        f" to {r['ratio_quartiles'][1]:.2f} |",
                        flush=True,
                    )
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--objectives",
        nargs="+",
        choices=OBJECTIVES,
        default=["iwae", "elbo"],
        help="iwae-stl and iwae-dreg are compared with the hand-written IWAE (default: %(default)s)",
    )
    add_device_argument(p)
    p.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[20, 100])
    p.add_argument("--particles", nargs="+", type=int, default=[1, 5, 50])
    p.add_argument("--images", type=int, default=500, help="images per timed round at k <= 5 (fewer at larger k)")
    p.add_argument(
        "--rounds", type=at_least(2), default=20, help="interleaved rounds (>= 2); the ratio is their median"
    )
    return p


if __name__ == "__main__":
    main(parser().parse_args())

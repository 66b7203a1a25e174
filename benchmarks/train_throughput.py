"""
Training throughput: one Adam step of our Pyro objectives (``IWAE_ELBO`` / ``VAE_ELBO``,
vectorized particles) against the hand-written PyTorch IWAE a user would otherwise write,
with the same networks, weights, optimizer (:func:`pyro_iwae.training.make_optimizer`) and
batches, measured side by side in one process, with glibc told to keep freed memory
(:func:`pyro_iwae.fast.keep_freed_memory`) as ``examples/mnist.py`` does. With ``--compile``,
two more steps join the rounds: ours compiled (:mod:`pyro_iwae.compiled`, ``--compile`` of
``examples/mnist.py``) and the hand-written loss under ``torch.compile``.

    python benchmarks/train_throughput.py [--compile]

Prints a markdown table: images/s and particles/s for each, and the ratios ours / hand-written
(and, with ``--compile``, ours compiled / hand-written and ours compiled / hand-written compiled):
their medians over interleaved rounds, with the quartiles as the spread.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import statistics
from collections.abc import Callable

import pyro
import torch
import torch.nn.functional as F
from timing import add_device_argument, clock
from torch.distributions import Normal

from pyro_iwae.compiled import COMPILABLE, compile_objective
from pyro_iwae.experiments.cli import at_least
from pyro_iwae.fast import keep_freed_memory
from pyro_iwae.models import ARCHITECTURES, VAE
from pyro_iwae.objectives import OBJECTIVES, make_objective
from pyro_iwae.training import make_optimizer, train_step


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
    objective: str,
    layers: int,
    batch_size: int,
    num_particles: int,
    steps: int,
    rounds: int,
    device: torch.device,
    compiled: bool = False,
) -> dict:
    """Images/s of each step, and the ratios of :data:`RATIOS` (median and quartiles over the rounds)."""
    torch.manual_seed(0)
    ours = VAE(*ARCHITECTURES[layers]).to(device)
    elbo = make_objective(objective, num_particles)
    bound = "elbo" if objective == "elbo" else "iwae"
    steps_by_name = {
        "ours": training_step(ours, elbo),
        "hand-written": hand_written_step(copy.deepcopy(ours), num_particles, bound, compiled=False),
    }
    if compiled and type(elbo) in COMPILABLE:
        ours_compiled = copy.deepcopy(ours)
        compiled_elbo = compile_objective(make_objective(objective, num_particles), ours_compiled)
        steps_by_name["ours compiled"] = training_step(ours_compiled, compiled_elbo)
        steps_by_name["hand-written compiled"] = hand_written_step(
            copy.deepcopy(ours), num_particles, bound, compiled=True
        )

    batches = [torch.bernoulli(torch.full((batch_size, 784), 0.13, device=device)) for _ in range(steps)]
    for step in steps_by_name.values():  # warm up (and compile)
        time_steps(step, batches[:3])
    seconds = {name: [] for name in steps_by_name}
    order = list(steps_by_name)
    for i in range(rounds):  # interleaved, in turn first, so that all see the same machine
        for name in order[i % len(order) :] + order[: i % len(order)]:
            seconds[name].append(time_steps(steps_by_name[name], batches))
    images = batch_size * steps * rounds
    row = dict(objective=objective, layers=layers, batch_size=batch_size, particles=num_particles)
    for name, times in seconds.items():
        row[name] = images / sum(times)
    for numerator, denominator in RATIOS:
        if numerator in seconds and denominator in seconds:
            ratios = [theirs / ours for ours, theirs in zip(seconds[numerator], seconds[denominator])]
            row[f"{numerator} / {denominator}"] = (statistics.median(ratios), statistics.quantiles(ratios, n=4)[::2])
    return row


#: ``(numerator, denominator)``: the speed ratios reported, each measured round by round
RATIOS = (
    ("ours", "hand-written"),
    ("ours compiled", "hand-written"),
    ("ours compiled", "hand-written compiled"),
)


def training_step(vae: VAE, objective) -> Callable[[torch.Tensor], torch.Tensor]:
    """The step that :func:`pyro_iwae.training.train` takes: ``objective``'s gradients, then Adam's update."""
    optimizer = make_optimizer(vae.parameters(), lr=1e-3)
    return functools.partial(train_step, vae, objective, optimizer)


def adam_step(vae: VAE, loss_and_grads: Callable[[torch.Tensor], None]) -> Callable[[torch.Tensor], None]:
    """One Adam step of ``vae``'s parameters on the gradients ``loss_and_grads(x)`` leaves."""
    optimizer = make_optimizer(vae.parameters(), lr=1e-3)

    def step(x: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_and_grads(x)
        optimizer.step()

    return step


def hand_written_step(vae: VAE, num_particles: int, bound: str, compiled: bool) -> Callable[[torch.Tensor], None]:
    """One Adam step on :func:`hand_written_loss`, under ``torch.compile`` (its defaults) if ``compiled``."""
    loss = torch.compile(hand_written_loss) if compiled else hand_written_loss
    return adam_step(vae, lambda x: loss(vae, x, num_particles, bound).backward())


def main(args: argparse.Namespace) -> list[dict]:
    pyro.enable_validation(False)
    keep_freed_memory()
    rows = []
    ratios = [f"{a} / {b}" for a, b in (RATIOS if args.compile else RATIOS[:1])]
    steps = ["ours", "hand-written"] + ["ours compiled", "hand-written compiled"] * args.compile
    print(
        "| objective | layers | batch | k | "
        + " | ".join(f"{name} img/s" for name in steps)
        + " | "
        + " | ".join(f"{ratio} (median, quartiles)" for ratio in ratios)
        + " |"
    )
    print("| --- " * (4 + len(steps) + len(ratios)) + "|")
    for objective in args.objectives:
        for layers in args.layers:
            for batch_size in args.batch_sizes:
                for k in args.particles:
                    steps_per_round = max(3, args.images // (batch_size * max(1, k // 5)))
                    r = measure(
                        objective, layers, batch_size, k, steps_per_round, args.rounds, args.device, args.compile
                    )
                    rows.append(r)
                    cells = [f"{r[name]:.0f}" if name in r else "n/a" for name in steps]
                    cells += [
                        f"{r[ratio][0]:.2f} ({r[ratio][1][0]:.2f} to {r[ratio][1][1]:.2f})" if ratio in r else "n/a"
                        for ratio in ratios
                    ]
                    print(f"| {objective} | {layers} | {batch_size} | {k} | " + " | ".join(cells) + " |", flush=True)
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
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time ours compiled (pyro_iwae.compiled; n/a for the objectives it cannot compile) and the"
        " hand-written loss under torch.compile",
    )
    return p


if __name__ == "__main__":
    main(parser().parse_args())

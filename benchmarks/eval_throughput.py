"""
Evaluation throughput: our vectorized, chunked evaluator against the machine's dense fp32
matmul peak and against a naive evaluator, measured in one run.

    python benchmarks/eval_throughput.py

- peak: the best of 20 2048x2048 fp32 matmuls, before and after the rest, in GFLOP/s;
- ours: ``log_likelihood`` with K = 5000 on 1000 images, as ``examples/mnist.py`` runs it (its
  default passes, glibc told to keep freed memory): particles/s and the GFLOP/s of the networks'
  matmuls (2 * in * out per row of every linear layer; the first encoder layer runs once per
  image, everything else once per particle);
- naive: one image and one particle at a time (a trace per particle, as with
  ``pyro.infer.Importance``), on a few images;
- with ``--compile``, ours compiled (``log_likelihood(..., compile=True)``): its rate with the
  compile time, and its steady rate, that of its compiled pass called again and again.
"""

from __future__ import annotations

import argparse
import math

import pyro
import torch
from timing import add_device_argument, clock
from torch import nn

from pyro_iwae.compiled import CompiledFunction
from pyro_iwae.evaluation import default_particle_chunk_size, log_likelihood
from pyro_iwae.fast import keep_freed_memory
from pyro_iwae.importance import log_importance_weights
from pyro_iwae.models import ARCHITECTURES, VAE


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 20) -> float:
    """Best GFLOP/s of ``size x size`` fp32 matmuls, after three to wake the threads up."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(repeats):
        start = clock(device)
        a @ b
        best = min(best, clock(device) - start)
    return 2 * size**3 / best / 1e9


def flops_per_particle(vae: VAE, num_particles: int) -> float:
    """Matmul FLOPs per particle: every linear layer once per particle, the first encoder layer once per image."""
    per_image = {id(m) for m in vae.encoder[0].modules()}
    flops = 0.0
    for module in vae.modules():
        if isinstance(module, nn.Linear):
            flops += 2 * module.in_features * module.out_features / (num_particles if id(module) in per_image else 1)
    return flops


@torch.inference_mode()
def naive_log_likelihood(vae: VAE, x: torch.Tensor, num_particles: int) -> torch.Tensor:
    """One image and one particle (one trace) at a time."""
    return torch.stack(
        [
            torch.cat(
                [log_importance_weights(vae.model, vae.guide, row[None], num_particles=1) for _ in range(num_particles)]
            )
            .logsumexp(0)
            .squeeze(0)
            - math.log(num_particles)
            for row in x
        ]
    )


@torch.inference_mode()
def compiled_pass_rate(vae: VAE, x: torch.Tensor, num_particles: int, passes: int = 20) -> float:
    """Particles/s of the compiled pass of ``log_likelihood(..., compile=True)`` on ``x``, after compiling it."""

    def log_weights(x: torch.Tensor) -> torch.Tensor:
        return log_importance_weights(vae.model, vae.guide, x, num_particles=num_particles)

    with torch.inference_mode(False), torch.no_grad():
        compiled = CompiledFunction(log_weights, (x,))
    compiled(x)
    start = clock(x.device)
    for _ in range(passes):
        compiled(x)
    return passes * x.shape[0] * num_particles / (clock(x.device) - start)


def main(args: argparse.Namespace) -> dict:
    pyro.enable_validation(False)
    keep_freed_memory()
    torch.manual_seed(0)
    device = args.device
    vae = VAE(*ARCHITECTURES[args.layers]).to(device)
    x = torch.bernoulli(torch.full((args.images, 784), 0.13, device=device))
    peak_before = matmul_peak(device)

    chunk = args.particle_chunk_size or default_particle_chunk_size(x.device, args.eval_batch_size)

    def seconds_to_score(compile: bool) -> float:
        """``log_likelihood`` of ``x`` as ``examples/mnist.py`` runs it, timed."""
        start = clock(device)
        log_likelihood(
            vae.model,
            vae.guide,
            x,
            num_particles=args.eval_particles,
            batch_size=args.eval_batch_size,
            particle_chunk_size=chunk,
            compile=compile,
        )
        return clock(device) - start

    ours_seconds = seconds_to_score(compile=False)
    compiled_rate = compiled_total_rate = None
    if args.compile:
        compiled_total_rate = args.images * args.eval_particles / seconds_to_score(compile=True)
        compiled_rate = compiled_pass_rate(vae, x[: args.eval_batch_size], chunk)
    start = clock(device)
    naive_log_likelihood(vae, x[: args.naive_images], args.naive_particles)
    naive_seconds = clock(device) - start
    peak = max(peak_before, matmul_peak(device))  # the better of before and after: the fraction is not flattered

    ours_rate = args.images * args.eval_particles / ours_seconds
    naive_rate = args.naive_images * args.naive_particles / naive_seconds
    gflops = ours_rate * flops_per_particle(vae, args.eval_particles) / 1e9
    result = dict(
        peak_gflops=peak,
        ours_particles_per_s=ours_rate,
        ours_gflops=gflops,
        fraction_of_peak=gflops / peak,
        naive_particles_per_s=naive_rate,
        speedup=ours_rate / naive_rate,
    )
    print(
        f"layers {args.layers}, {args.images} images, K = {args.eval_particles}, {args.eval_batch_size} images x"
        f" {chunk} particles a pass, {torch.get_num_threads()} threads"
    )
    print("| | particles/s | GFLOP/s | fraction of matmul peak |")
    print("| --- | --- | --- | --- |")
    print(f"| 2048x2048 fp32 matmul (peak) | | {peak:.1f} | 1.00 |")
    print(f"| ours (vectorized, chunked) | {ours_rate:,.0f} | {gflops:.1f} | {gflops / peak:.2f} |")
    if compiled_rate is not None:
        compiled_gflops = compiled_rate * flops_per_particle(vae, args.eval_particles) / 1e9
        result.update(compiled_particles_per_s=compiled_rate, compiled_fraction_of_peak=compiled_gflops / peak)
        print(
            f"| ours compiled, steady | {compiled_rate:,.0f} | {compiled_gflops:.1f} | {compiled_gflops / peak:.2f} |"
        )
        print(f"| ours compiled, compile time included | {compiled_total_rate:,.0f} | | |")
    naive_gflops = naive_rate * flops_per_particle(vae, 1) / 1e9
    print(f"| naive (a trace per particle) | {naive_rate:,.0f} | {naive_gflops:.2f} | {naive_gflops / peak:.3f} |")
    print(
        f"ours / naive: {ours_rate / naive_rate:.0f}x; full 10,000-image test set at K = {args.eval_particles}: "
        f"{10000 * args.eval_particles / ours_rate:.0f} s"
    )
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_argument(p)
    p.add_argument("--layers", type=int, choices=(1, 2), default=1)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--eval-particles", type=int, default=5000)
    p.add_argument("--eval-batch-size", type=int, default=100)
    p.add_argument("--particle-chunk-size", type=int, default=None, help="(default: the evaluator's)")
    p.add_argument("--naive-images", type=int, default=2)
    p.add_argument("--naive-particles", type=int, default=500)
    p.add_argument("--compile", action="store_true", help="also time log_likelihood(..., compile=True)")
    return p


if __name__ == "__main__":
    main(parser().parse_args())

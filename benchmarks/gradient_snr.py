"""
Signal-to-noise ratio of the encoder's gradient against k, for iwae, iwae-stl and
iwae-dreg, on the one-layer MNIST model (Rainforth et al., 2018, "Tighter variational
bounds are not necessarily better", eq. 3):

    SNR(theta_j) = |E[g_j]| / std[g_j]

per parameter component ``j``, from ``--repeats`` gradient estimates of the loss on
the same ``--images`` test images, averaged over the encoder's components (and, for
reference, the decoder's). Beside them, for each k, how evenly the importance weights are
spread: the effective sample size ``(sum_l w_l)^2 / sum_l w_l^2`` of one draw of k weights,
and the standard deviation of the log-weights (means over the images).

Asymptotically in k, IWAE's encoder SNR falls like 1/sqrt(k) and DReG's does not; on a partly
trained MNIST model, whose weights are far from balanced, both fall, DReG's more slowly
(figures in the README).

    python benchmarks/gradient_snr.py --data-dir ../shared/data --run runs/table-mnist/iwae-k5-1layer-seed0

Without ``--run`` the model is a fresh one trained for ``--warmup-steps`` IWAE steps.
Prints a markdown table and writes the plot to ``--plot``.
"""

from __future__ import annotations

import argparse

import pyro
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from pyro_iwae.checkpoints import load_model
from pyro_iwae.data import load_dataset
from pyro_iwae.diagnostics import gradient_samples, signal_to_noise
from pyro_iwae.experiments.cli import at_least
from pyro_iwae.importance import log_importance_weights
from pyro_iwae.models import ARCHITECTURES, VAE
from pyro_iwae.objectives import make_objective
from pyro_iwae.training import make_optimizer

OBJECTIVES = ("iwae", "iwae-stl", "iwae-dreg")


def encoder_and_decoder_snr(vae: VAE, objective: str, x: torch.Tensor, num_particles: int, repeats: int) -> dict:
    """
    ``{"encoder": ..., "decoder": ...}``: the mean :func:`~pyro_iwae.diagnostics.signal_to_noise` over the
    components of the encoder's and of the pixel decoder's gradient, from the same ``repeats`` estimates.
    """
    groups = {"encoder": list(vae.encoder.parameters()), "decoder": list(vae.decoder_pixels.parameters())}
    samples = gradient_samples(
        make_objective(objective, num_particles),
        vae.model,
        vae.guide,
        x,
        parameters=[p for parameters in groups.values() for p in parameters],
        num_samples=repeats,
    )  # [repeats, encoder components + decoder components]
    sizes = [sum(p.numel() for p in parameters) for parameters in groups.values()]
    return {name: signal_to_noise(g).mean().item() for name, g in zip(groups, samples.split(sizes, dim=1))}


@torch.no_grad()
def weight_spread(vae: VAE, x: torch.Tensor, num_particles: int) -> dict:
    """``{"ess": ..., "log_weight_sd": ...}`` of one draw of ``num_particles`` weights per image, means over images."""
    log_weights = log_importance_weights(vae.model, vae.guide, x, num_particles=num_particles)  # [k, images]
    ess = (2 * log_weights.logsumexp(0) - (2 * log_weights).logsumexp(0)).exp()
    sd = log_weights.std(0) if num_particles > 1 else torch.zeros(x.shape[0])
    return {"ess": ess.mean().item(), "log_weight_sd": sd.mean().item()}


def warmed_up_model(images: torch.Tensor, steps: int) -> VAE:
    vae = VAE(*ARCHITECTURES[1], mean_pixel=images.mean(0))
    optimizer = make_optimizer(vae.parameters(), lr=1e-3)
    elbo = make_objective("iwae", 5)
    for step in tqdm(range(steps), desc="warm-up", unit="step"):
        optimizer.zero_grad()
        elbo.loss_and_grads(vae.model, vae.guide, torch.bernoulli(images[step * 20 % len(images) :][:20]))
        optimizer.step()
    return vae


def plot(rows: list[dict], path: str, title: str) -> None:
    figure = Figure(figsize=(6, 4.5))
    axes = figure.subplots()
    for i, objective in enumerate(OBJECTIVES):
        ks = [r["k"] for r in rows if r["objective"] == objective]
        axes.plot(ks, [r["encoder"] for r in rows if r["objective"] == objective], marker="o", color=f"C{i}")
        axes.plot([], [], marker="o", color=f"C{i}", label=f"{objective}: encoder")
    iwae = [r for r in rows if r["objective"] == "iwae"]
    axes.plot([r["k"] for r in iwae], [r["decoder"] for r in iwae], "k--", marker=".", label="iwae: decoder")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("k (samples in the bound)")
    axes.set_ylabel("mean SNR of the gradient, |E g| / std g")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(args: argparse.Namespace) -> list[dict]:
    pyro.enable_validation(False)
    torch.manual_seed(args.seed)
    dataset = load_dataset("mnist", args.data_dir, train_size=args.warmup_steps * 20 or None, test_size=args.images)
    vae = load_model(args.run) if args.run else warmed_up_model(dataset.train, args.warmup_steps)
    x = dataset.test
    rows = []
    print(f"{args.repeats} estimates each, {x.shape[0]} test image(s); model: {args.run or 'warmed-up'}")
    print("| objective | k | encoder SNR | decoder SNR | ESS of the weights | sd of log-weights |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k in args.particles:
        spread = weight_spread(vae, x, k)
        for objective in OBJECTIVES:
            row = dict(
                objective=objective, k=k, **encoder_and_decoder_snr(vae, objective, x, k, args.repeats), **spread
            )
            rows.append(row)
            print(
                f"| {objective} | {k} | {row['encoder']:.3f} | {row['decoder']:.3f} | {row['ess']:.1f} |"
                f" {row['log_weight_sd']:.2f} |",
                flush=True,
            )
    plot(rows, args.plot, f"gradient SNR, one-layer MNIST model, {args.repeats} estimates per point")
    print(f"wrote {args.plot}")
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--run", default=None, help="a one-layer run directory of examples/mnist.py to measure")
    p.add_argument("--warmup-steps", type=at_least(0), default=1000, help="without --run (default: %(default)s)")
    p.add_argument("--particles", nargs="+", type=at_least(1), default=[1, 3, 10, 30, 100, 300, 1000])
    p.add_argument("--repeats", type=at_least(2), default=200, help="gradient estimates per point")
    p.add_argument("--images", type=at_least(1), default=1, help="test images in the batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="benchmarks/results/gradient_snr.png")
    return p


if __name__ == "__main__":
    main(parser().parse_args())

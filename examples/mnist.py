"""
Train a VAE (``--objective elbo``) or an IWAE (``--objective iwae``) on binarized
MNIST as in Burda, Grosse & Salakhutdinov (2016), "Importance Weighted
Autoencoders", and report the test log-likelihood estimated with
``--eval-particles`` importance samples per image.

    python examples/mnist.py --objective iwae --particles 10
    python examples/mnist.py --objective iwae-dreg --particles 10 --prior vamp --guide iaf

Every flag is a field of :class:`pyro_iwae.experiments.config.RunConfig`.
"""

from __future__ import annotations

import argparse
import json
import time

import pyro

from pyro_iwae.checkpoints import RunDirectory, initialize_from
from pyro_iwae.compiled import compile_objective
from pyro_iwae.data import load_dataset
from pyro_iwae.evaluation import active_units, log_likelihood
from pyro_iwae.experiments.cli import one_line_errors
from pyro_iwae.experiments.config import ConfigError, RunConfig, resolve_device
from pyro_iwae.experiments.outputs import run_metrics, save_plots, write_json
from pyro_iwae.fast import keep_freed_memory
from pyro_iwae.models import ARCHITECTURES, VAE
from pyro_iwae.networks import INITIALIZATIONS
from pyro_iwae.objectives import make_objective
from pyro_iwae.training import train


def main(config: RunConfig) -> dict:
    device = resolve_device(config.device)
    if config.directory.exists() and not config.directory.is_dir():
        raise ConfigError(f"--out {config.directory} is a file: name a directory (made if missing)")
    dataset = load_dataset(config.dataset, config.data_dir, config.train_size, config.test_size)
    if not config.resume:  # a run to resume has its directory: a failed --resume leaves none behind
        config.directory.mkdir(parents=True, exist_ok=True)
    pyro.enable_validation(config.validate)

    # the model p(x, z) and the guide q(z | x) of Burda et al. (2016), section 5
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    vae = VAE(*ARCHITECTURES[config.layers], mean_pixel=dataset.train.mean(0), prior=config.prior, guide=config.guide)
    INITIALIZATIONS[config.init](vae)  # on the CPU, so that every device starts from the same weights
    vae.to(device)
    # a trained model to train on, perhaps with another objective (Burda et al.'s Table 2); a resumed run's
    # checkpoint holds what it became
    if config.init_from is not None and not config.resume:
        initialize_from(vae, config.init_from)

    # the bound to maximise: the ELBO (VAE_ELBO, Pyro's Trace_ELBO) or the k-sample IWAE bound (IWAE_ELBO),
    # the latter with IWAE's gradient or the STL or DReG estimator of it for the guide; or MIWAE, CIWAE, PIWAE
    objective = make_objective(config.objective, config.particles, **config.objective_options())
    if config.compile:  # the same step, traced through Pyro once and compiled
        objective = compile_objective(objective, vae)

    # Adam over the learning-rate schedule, with a checkpoint after every epoch
    run = RunDirectory(config.directory, config.checkpointed_fields(), config.snapshot_every)
    history = train(
        vae,
        objective,
        dataset.train,
        config.learning_rates(),
        batch_size=config.batch_size,
        dynamic_binarization=dataset.dynamic_binarization,
        seed=config.seed,
        run=run,
        resume=config.resume,
        progress=config.progress,
    )

    # log p(x) of every test image, estimated with K importance samples; batch i draws from a seed made of
    # --seed and i, so examples/evaluate.py gets the same numbers from the weights, with any number of processes
    test = dataset.test.to(device)
    start = time.perf_counter()
    estimate = log_likelihood(
        vae.model,
        vae.guide,
        test,
        num_particles=config.eval_particles,
        batch_size=config.eval_batch_size,
        seed=config.seed,
        progress=config.progress,
        compile=config.compile,
    )
    eval_seconds = time.perf_counter() - start
    active = active_units(vae.guide, test, seed=config.seed)

    metrics = run_metrics(
        config, history, estimate, active, train_size=dataset.train.shape[0], eval_seconds=eval_seconds, device=device
    )
    write_json(run.path / "metrics.json", metrics)
    if config.plots:
        save_plots(vae, test, history, run.path, config.label)
    return metrics


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return RunConfig.add_arguments(p)


if __name__ == "__main__":
    keep_freed_memory()  # every step and evaluation pass reuses the last one's memory
    p = parser()
    with one_line_errors(p, "interrupted: the finished epochs are kept in the checkpoint; add --resume to continue"):
        config = RunConfig.from_args(p.parse_args())
        metrics = main(config)
    print(
        json.dumps(
            {key: metrics[key] for key in ("test_log_likelihood", "test_elbo", "active_units", "train_seconds")},
            indent=2,
        )
    )
    print(f"wrote {config.directory}/")

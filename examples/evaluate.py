"""
Score trained weights: the importance-sampling estimate of log p(x) of Burda et al. (2016) for
every image of a split, with ``--eval-particles`` samples per image, and the active units.

    python examples/evaluate.py runs/mnist-iwae-k5-1layer --data-dir ../shared/data --out scores.json
    torchrun --standalone --nproc_per_node 2 examples/evaluate.py runs/mnist-iwae-k5-1layer --out scores.json

The weights come from a run directory of ``examples/mnist.py``, a checkpoint or a weights file
(``pyro_iwae.load_model``), and the images from the dataset they were trained on. Batch ``i`` of
``--eval-batch-size`` images draws its samples from a seed made of ``--seed`` and ``i``
(``log_likelihood(..., seed=...)``), so the estimates do not depend on how many processes share the
batches, and equal those ``examples/mnist.py`` reports for the same weights, seed and batch size.
Under torchrun each process scores a contiguous block of the batches; rank 0 gathers the
per-image estimates, prints the summary, and writes ``--out`` and ``--per-image``.
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch

from pyro_iwae.atomic import atomic_open
from pyro_iwae.checkpoints import read_weights
from pyro_iwae.data import DataError, binarize, load_dataset
from pyro_iwae.evaluation import ImportanceEstimate, active_units, log_likelihood
from pyro_iwae.experiments.cli import at_least, one_line_errors
from pyro_iwae.experiments.config import RunConfig, resolve_device
from pyro_iwae.experiments.distributed import all_gather, process_group, rank, shard, world_size
from pyro_iwae.experiments.outputs import write_json
from pyro_iwae.fast import keep_freed_memory

SPLITS = ("test", "train")


#: the flags this script shares with examples/mnist.py, with their defaults and checks (RunConfig's)
SHARED_FIELDS = ("data_dir", "eval_particles", "eval_batch_size", "seed", "device", "compile", "progress")


def split_images(dataset: str, data_dir: str | None, split: str, size: int | None) -> torch.Tensor:
    """
    The first ``size`` binary images of ``split`` (all if None): the test images as
    :func:`~pyro_iwae.data.load_dataset` binarizes them, the training images binarized once
    with :func:`~pyro_iwae.data.binarize`'s fixed seed (as ``benchmarks/full_schedule_table.py``
    scores the train NLL), so that image ``i`` is the same whatever ``size`` is.

    :returns: ``[size, 784]`` images.
    """
    data = load_dataset(dataset, data_dir)
    images = data.test if split == "test" else binarize(data.train) if data.dynamic_binarization else data.train
    if size is not None and size > images.shape[0]:
        raise DataError(
            f"--test-size {size} is more than the {images.shape[0]:,} {split} images of {dataset}:"
            f" ask for at most {images.shape[0]}, or leave it out to score them all"
        )
    return images[:size]


def main(args: argparse.Namespace) -> dict | None:
    """Score this process's share of the batches; rank 0 returns the summary, the other ranks ``None``."""
    with process_group(resolve_device(args.device)) as device:
        stored = read_weights(args.source, device)
        pyro.clear_param_store()
        vae = stored.model(device)
        images = split_images(stored.config.get("dataset", "mnist"), args.data_dir, args.split, args.test_size)
        images = images.to(device)
        start = time.perf_counter()
        estimate = log_likelihood(
            vae.model,
            vae.guide,
            images,
            num_particles=args.eval_particles,
            batch_size=args.eval_batch_size,
            seed=args.seed,
            batch_indices=shard(-(-images.shape[0] // args.eval_batch_size)),
            progress=args.progress and rank() == 0,
            compile=args.compile,
        )
        seconds = time.perf_counter() - start
        shares = all_gather((estimate.log_likelihood.cpu(), estimate.elbo.cpu(), seconds))
        if rank() != 0:
            return None
        processes = world_size()
    # the shards are contiguous blocks of batches in rank order: concatenated, the images' order
    log_likelihoods, elbos, seconds = zip(*shares)
    estimate = ImportanceEstimate(torch.cat(log_likelihoods), torch.cat(elbos))
    active = active_units(vae.guide, images, seed=args.seed)  # as examples/mnist.py counts them
    if args.per_image is not None:
        write_per_image(args.per_image, estimate)
    summary = dict(
        **{f"{args.split}_{key}": value for key, value in summarize(estimate).items()},
        active_units=sum(int(units.sum()) for units in active.values()),
        active_units_per_layer={name: int(units.sum()) for name, units in active.items()},
        split=args.split,
        images=images.shape[0],
        eval_particles=args.eval_particles,
        eval_batch_size=args.eval_batch_size,
        seed=args.seed,
        processes=processes,
        eval_seconds=max(seconds),
        source=str(args.source),
        epoch=stored.epoch,
        device=str(device),
        compile=args.compile,
        torch_version=torch.__version__,
        pyro_version=pyro.__version__,
        config=stored.config,
    )
    if args.out is not None:
        write_json(args.out, summary)
    return summary


def summarize(estimate: ImportanceEstimate) -> dict:
    """The mean per-image log-likelihood estimate, its standard error over images, and the mean ELBO."""
    values, num_images = estimate.log_likelihood, estimate.log_likelihood.shape[0]
    return dict(
        log_likelihood=values.mean().item(),
        log_likelihood_stderr=(values.std() / num_images**0.5).item() if num_images > 1 else 0.0,
        elbo=estimate.elbo.mean().item(),
    )


def write_per_image(path: str, estimate: ImportanceEstimate) -> None:
    """A CSV file, atomically: ``image,log_likelihood,elbo``, one row per image in the split's order."""
    with atomic_open(path, "w") as f:
        f.write("image,log_likelihood,elbo\n")
        for i, (value, elbo) in enumerate(zip(estimate.log_likelihood.tolist(), estimate.elbo.tolist())):
            f.write(f"{i},{value!r},{elbo!r}\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a run directory of examples/mnist.py, a checkpoint, or a weights file")
    p.add_argument("--split", choices=SPLITS, default="test", help="the images to score (default: %(default)s)")
    p.add_argument(
        "--test-size",
        type=at_least(1),
        default=None,
        help="score the first N images of --split (default: all); MNIST's first test images are easier than the"
        " rest, so their NLL reads better than the test set's",
    )
    helps = dict(
        seed="batch i of --eval-batch-size images draws its samples from a seed made of --seed and i, as"
        " examples/mnist.py scores (with its --seed and --eval-batch-size, the same numbers)",
        compile="trace each shape of evaluation pass once and compile it with torch.compile: the same"
        " estimates to float rounding, faster at a large --eval-particles (seconds to a minute per shape)",
    )
    RunConfig.add_arguments(p, SHARED_FIELDS, helps)
    p.add_argument("--out", default=None, help="write the summary to this JSON file (default: only print it)")
    p.add_argument("--per-image", default=None, help="write every image's estimates to this CSV file")
    return p


if __name__ == "__main__":
    keep_freed_memory()  # every evaluation pass reuses the last one's memory
    p = parser()
    with one_line_errors(p):
        args = p.parse_args()
        RunConfig.from_args(args, SHARED_FIELDS)  # the fields' checks
        summary = main(args)
    if summary is not None:
        print(json.dumps({key: value for key, value in summary.items() if key != "config"}, indent=2))

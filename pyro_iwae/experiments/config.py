"""
One definition of what a run depends on: :class:`RunConfig`. Its fields are the flags
of the example scripts (:meth:`RunConfig.add_arguments`), their defaults and checks, the
configuration a checkpoint must match to be resumed (:meth:`RunConfig.checkpointed_fields`),
and the ``config`` recorded in ``metrics.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pyro_iwae.compiled import COMPILABLE
from pyro_iwae.data import DATA_DIR_ENV, DATASETS, num_images
from pyro_iwae.models import ARCHITECTURES, DEFAULT_GUIDE, DEFAULT_PRIOR, GUIDES, PRIORS
from pyro_iwae.networks import DEFAULT_INITIALIZATION, INITIALIZATIONS
from pyro_iwae.objectives import OBJECTIVES, objective_options
from pyro_iwae.training import SCHEDULES, burda_learning_rates

#: ``--device`` choices, resolved by :func:`resolve_device`
DEVICES = ("auto", "cpu", "cuda")
#: the --objective names whose step --compile traces (:data:`~pyro_iwae.compiled.COMPILABLE`), for messages
COMPILABLE_NAMES = ", ".join(name for name, cls in OBJECTIVES.items() if cls in COMPILABLE)
#: epochs of ``--schedule constant`` when ``--epochs`` is not given
CONSTANT_SCHEDULE_EPOCHS = 10
#: the objectives' options (:func:`~pyro_iwae.objectives.objective_options`) and the fields that give them
OBJECTIVE_OPTIONS = {"num_groups": "groups", "beta": "beta"}
#: the pictures show this many test images
PICTURE_IMAGES = 32
#: Burda et al.'s minibatch: 20 images per step (section 5)
PAPER_BATCH_SIZE = 20


class ConfigError(ValueError):
    """A run configuration that cannot run."""


def option(
    default: Any,
    help: str,
    *flags: str,
    checkpointed: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    **argparse_kwargs,
) -> Any:
    """
    A :class:`RunConfig` field and its command-line flag.

    :param flags: the flag's names (default: ``--field-name``; ``--no-field-name`` for a field that is on by default).
    :param checkpointed: a checkpoint records the field, and only a run with the same value may resume it.
    :param minimum: the smallest value allowed (``None`` is always allowed).
    :param maximum: the largest value allowed.
    :param argparse_kwargs: ``type``, ``choices``: passed to ``add_argument``.
    """
    metadata = dict(
        help=help, flags=flags, checkpointed=checkpointed, minimum=minimum, maximum=maximum, argparse=argparse_kwargs
    )
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    """Everything a run of ``examples/mnist.py`` depends on, with the defaults of its flags."""

    objective: str = option(
        "iwae",
        "elbo: the VAE bound (VAE_ELBO: Trace_ELBO's); iwae: the k-sample importance weighted bound (IWAE_ELBO);"
        " iwae-stl, iwae-dreg: the same bound with the sticking-the-landing or the doubly reparameterized"
        " gradient for the guide; miwae, ciwae, piwae: the objectives of Rainforth et al. (2018), with --groups or"
        " --beta",
        checkpointed=True,
        choices=list(OBJECTIVES),
    )
    particles: int = option(
        5,
        "samples k per data point in the training objective",
        "--particles",
        "-k",
        checkpointed=True,
        minimum=1,
        type=int,
    )
    groups: int | None = option(
        None,
        "miwae, piwae: the number M of IWAE bounds averaged, each over its own --particles K (M K samples in all)",
        checkpointed=True,
        minimum=1,
        type=int,
    )
    beta: float | None = option(
        None, "ciwae: the weight of the ELBO against the IWAE bound, in [0, 1]", checkpointed=True, type=float
    )
    layers: int = option(
        1,
        "stochastic layers: 1 (x-200-200-z50) or 2 (x-200-200-h100-100-100-h50)",
        checkpointed=True,
        type=int,
        choices=sorted(ARCHITECTURES),
    )
    prior: str = option(
        DEFAULT_PRIOR,
        "prior over the top latent layer: N(0, I), a learned diagonal Gaussian, a mixture of 10 Gaussians,"
        " or the VampPrior with 500 pseudo-inputs",
        checkpointed=True,
        choices=list(PRIORS),
    )
    guide: str = option(
        DEFAULT_GUIDE,
        "guide for each stochastic layer: a diagonal Gaussian, or one followed by 2 inverse autoregressive flows",
        checkpointed=True,
        choices=list(GUIDES),
    )
    dataset: str = option(
        "mnist",
        "mnist, fashion-mnist and omniglot (Burda et al.'s 28x28 chardata.mat) are binarized dynamically;"
        " binarized-mnist is the fixed binarization of Larochelle & Murray",
        checkpointed=True,
        choices=list(DATASETS),
    )
    data_dir: str | None = option(
        None, f"directory in torchvision's layout (MNIST/raw/...); default ${DATA_DIR_ENV}, else ./data"
    )
    epochs: int | None = option(
        None,
        f"passes over the training set ({CONSTANT_SCHEDULE_EPOCHS} with --schedule constant, all"
        f" {len(burda_learning_rates())} with --schedule burda; with burda, a number truncates the schedule)",
        minimum=0,
        type=int,
    )
    schedule: str = option(
        "constant",
        "constant: --lr throughout; burda: lr*10^(-i/7) for 3^i epochs, i=0..7",
        checkpointed=True,
        choices=list(SCHEDULES),
    )
    batch_size: int = option(
        PAPER_BATCH_SIZE, f"images per step, {PAPER_BATCH_SIZE} as in the paper", checkpointed=True, minimum=1, type=int
    )
    lr: float = option(1e-3, "Adam learning rate", checkpointed=True, type=float)
    eval_particles: int = option(5000, "importance samples K per test image for log p(x)", minimum=1, type=int)
    eval_batch_size: int = option(100, "test images per evaluation pass", minimum=1, type=int)
    train_size: int | None = option(
        None, "use the first N training images (default: all)", checkpointed=True, minimum=1, type=int
    )
    test_size: int | None = option(
        None,
        "use the first N test images (default: all); MNIST's first test images are easier than the rest, so"
        " their NLL reads better than the test set's",
        minimum=1,
        type=int,
    )
    device: str = option("auto", "auto: CUDA where there is a GPU, else the CPU", choices=list(DEVICES))
    seed: int = option(
        0,
        "seeds the initial weights, the batches and the samples",
        checkpointed=True,
        minimum=0,
        maximum=2**32 - 1,  # what torch's and numpy's generators take
        type=int,
    )
    out: str | None = option(
        None,
        "output directory (default: runs/<dataset>-<objective>-k<particles>-<layers>layer[-<prior>-prior]"
        "[-<guide>-guide])",
    )
    init: str = option(
        DEFAULT_INITIALIZATION,
        "initial weights: pytorch (nn.Linear's own: U(+-1/sqrt(fan_in)), biases too) or glorot (Glorot & Bengio's"
        " uniform, zero biases, as Burda et al.'s code and Keras); the decoder's output bias starts at the logit of"
        " the mean pixel either way (with --init-from, the weights come from there)",
        checkpointed=True,
        choices=list(INITIALIZATIONS),
    )
    init_from: str | None = option(
        None,
        "start from the weights of this run directory, checkpoint or weights file, e.g. to train a trained model on"
        " with another objective as in Burda et al.'s Table 2 (default: fresh weights, as --init draws"
        " them)",
        checkpointed=True,
    )
    resume: bool = option(False, "continue from the checkpoint in --out")
    compile: bool = option(
        False,
        "trace the training step and the evaluator's passes once and compile them with torch.compile"
        " (pyro_iwae.compiled): the same numbers to float rounding, without Pyro's per-step overhead; objectives"
        f" {COMPILABLE_NAMES}; each shape compiles once"
        " (seconds to a minute)",
    )
    snapshot_every: int | None = option(
        None,
        "keep the weights in OUT/weights/ after epochs 0-9, 10-90 in tens, ..., at least every N epochs, and the"
        " last, for a training curve (default: off)",
        minimum=1,
        type=int,
    )
    plots: bool = option(True, "do not write the PNG pictures")
    progress: bool = option(True, "do not show progress bars")
    validate: bool = option(False, "turn on Pyro's distribution validation (slower; off by default for speed)")

    def __post_init__(self) -> None:
        if self.init_from is not None:  # one spelling per path, so that `--init-from runs/a/` resumes `runs/a`'s run
            self.init_from = os.path.normpath(self.init_from)
        for spec in dataclasses.fields(self):
            value, choices = getattr(self, spec.name), spec.metadata["argparse"].get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(f"{flag(spec)} must be one of {', '.join(map(str, choices))}, got {value!r}")
            if spec.metadata["minimum"] is not None and value is not None and value < spec.metadata["minimum"]:
                raise ConfigError(f"{flag(spec)} must be at least {spec.metadata['minimum']}, got {value}")
            if spec.metadata["maximum"] is not None and value is not None and value > spec.metadata["maximum"]:
                raise ConfigError(f"{flag(spec)} must be at most {spec.metadata['maximum']}, got {value}")
        for name, value in self.objective_options().items():
            if value is None:
                raise ConfigError(f"--objective {self.objective} needs --{OBJECTIVE_OPTIONS[name]}")
        for name, value in self.unused_options().items():
            raise ConfigError(f"--{name} {value} is not an option of --objective {self.objective}")
        if self.objective == "piwae" and self.prior == "vamp":
            raise ConfigError(
                "--objective piwae trains the model's and the guide's parameters on different bounds, but the vamp"
                " prior runs the guide's encoder: use another --prior or --objective"
            )
        if self.compile and OBJECTIVES[self.objective] not in COMPILABLE:
            raise ConfigError(f"--compile works with --objective {COMPILABLE_NAMES}, not {self.objective}")
        if self.compile and self.objective == "iwae-stl" and self.guide == "iaf":
            raise ConfigError(
                "--compile cannot trace --objective iwae-stl with --guide iaf: STL runs the guide again at its samples,"
                " through the flows' inverse, which Pyro computes with a data-dependent step; drop --compile"
            )
        if self.init != DEFAULT_INITIALIZATION and self.init_from is not None:
            raise ConfigError(
                f"--init-from replaces the initial weights, so --init {self.init} would be lost: drop one"
            )
        if self.beta is not None and not 0 <= self.beta <= 1:
            raise ConfigError(f"--beta must lie in [0, 1], got {self.beta}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        train_images = self.train_size or num_images(self.dataset, "train")
        if self.batch_size > train_images:
            raise ConfigError(
                f"--batch-size {self.batch_size} is more than the {train_images} training images: lower it"
                + ", or raise --train-size" * (self.train_size is not None)
            )
        if self.plots and self.test_size is not None and self.test_size < PICTURE_IMAGES:
            raise ConfigError(
                f"the pictures need at least {PICTURE_IMAGES} test images, got --test-size {self.test_size}:"
                " raise it or pass --no-plots"
            )
        try:
            self.learning_rates()
        except ValueError as error:
            raise ConfigError(str(error)) from error

    @property
    def directory(self) -> Path:
        """``--out``, by default ``runs/<dataset>-<objective>-k<particles>-<layers>layer``, then
        ``-<prior>-prior``, ``-<guide>-guide`` and ``-<init>-init`` where they are not the default."""
        if self.out is not None:
            return Path(self.out)
        name = f"{self.dataset}-{self.objective}-k{self.particles}-{self.layers}layer"
        name += f"-{self.prior}-prior" * (self.prior != DEFAULT_PRIOR)
        name += f"-{self.guide}-guide" * (self.guide != DEFAULT_GUIDE)
        name += f"-{self.init}-init" * (self.init != DEFAULT_INITIALIZATION)
        return Path("runs") / name

    def learning_rates(self) -> list[float]:
        """One learning rate per epoch (:data:`~pyro_iwae.training.SCHEDULES`); ``--epochs`` is
        :data:`CONSTANT_SCHEDULE_EPOCHS` with the constant schedule unless given."""
        epochs = CONSTANT_SCHEDULE_EPOCHS if self.epochs is None and self.schedule == "constant" else self.epochs
        return SCHEDULES[self.schedule](self.lr, epochs)

    def objective_options(self) -> dict:
        """The options of :func:`~pyro_iwae.objectives.make_objective` that this objective takes, from their flags."""
        return {option: getattr(self, OBJECTIVE_OPTIONS[option]) for option in objective_options(self.objective)}

    def unused_options(self) -> dict:
        """The objective flags given that this objective does not take: ``{field name: value}``."""
        taken = {OBJECTIVE_OPTIONS[option] for option in objective_options(self.objective)}
        given = {name: getattr(self, name) for name in OBJECTIVE_OPTIONS.values() if getattr(self, name) is not None}
        return {name: value for name, value in given.items() if name not in taken}

    def checkpointed_fields(self) -> dict:
        """The fields a checkpoint records, which a run must share to resume it."""
        return {
            spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self) if spec.metadata["checkpointed"]
        }

    @property
    def label(self) -> str:
        """The model in a picture's title."""
        label = f"{self.objective} k={self.particles}, {self.layers} layer(s), {self.prior} prior, {self.guide} guide"
        return label + f", {self.init} init" * (self.init != DEFAULT_INITIALIZATION)

    @classmethod
    def add_arguments(
        cls,
        parser: argparse.ArgumentParser,
        names: Iterable[str] | None = None,
        helps: dict[str, str] | None = None,
        **defaults,
    ) -> argparse.ArgumentParser:
        """
        Add the flags of the fields ``names`` (default: all) to ``parser``.

        :param helps: help texts that differ from the fields' for this script, by field name.
        :param defaults: defaults that differ from the fields' for this script.
        """
        specs = {spec.name: spec for spec in dataclasses.fields(cls)}
        for name in specs if names is None else names:
            spec = specs[name]
            default = defaults.get(name, spec.default)
            help_text = (helps or {}).get(name, spec.metadata["help"])
            if isinstance(default, bool):
                action = "store_false" if default else "store_true"
                parser.add_argument(flag(spec, default), dest=name, action=action, help=help_text)
                continue
            if default is not None:  # a field whose default is None explains it in its help
                help_text += " (default: %(default)s)"
            parser.add_argument(
                *(spec.metadata["flags"] or [flag(spec)]),
                dest=name,
                default=default,
                help=help_text,
                **spec.metadata["argparse"],
            )
        return parser

    @classmethod
    def from_args(cls, args: argparse.Namespace, names: Iterable[str] | None = None, **fields) -> RunConfig:
        """The config of the parsed flags of the fields ``names`` (default: all), and ``fields``."""
        names = [spec.name for spec in dataclasses.fields(cls)] if names is None else names
        return cls(**{**{name: getattr(args, name) for name in names}, **fields})


def command_line(values: dict, always: Iterable[str] = ("objective", "particles")) -> list[str]:
    """
    The flags that give a :class:`RunConfig` the ``values`` (its fields, as in ``metrics.json``):
    those that differ from the defaults, and those named in ``always``; never ``--resume``.
    """
    flags = []
    for spec in dataclasses.fields(RunConfig):
        value = values.get(spec.name, spec.default)
        if spec.name == "resume" or (value == spec.default and spec.name not in always):
            continue
        flags += [flag(spec, spec.default)] if isinstance(spec.default, bool) else [flag(spec), str(value)]
    return flags


def flag(spec: dataclasses.Field, default: object = None) -> str:
    """A field's flag: ``--field-name``, or ``--no-field-name`` for a field that is on by default."""
    if spec.metadata["flags"]:
        return spec.metadata["flags"][0]
    return ("--no-" if default is True else "--") + spec.name.replace("_", "-")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA where available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto")
    return torch.device(device)

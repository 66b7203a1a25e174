"""What the example scripts share: argparse types and one-line errors for mistakes a user can fix."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pyro_iwae.data import DATA_DIR_ENV, DATASETS, DataError
from pyro_iwae.experiment import ConfigError, ExperimentConfig
from pyro_iwae.importance import DataPlateError
from pyro_iwae.training import SCHEDULES, CheckpointError, TrainingError

#: errors whose message says what to fix: printed as one line, without a traceback
USER_ERRORS = (ConfigError, DataError, DataPlateError, CheckpointError, TrainingError)
#: ``--device`` choices, resolved by :func:`pyro_iwae.experiment.resolve_device`
DEVICES = ("auto", "cpu", "cuda")


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse type: a float greater than 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_experiment_arguments(p: argparse.ArgumentParser, schedule: str = "constant") -> None:
    """The flags every example shares: data, training budget, evaluation, device."""
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="mnist",
        help="mnist and fashion-mnist are binarized dynamically; binarized-mnist is the fixed "
        "binarization of Larochelle & Murray (default: %(default)s)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"directory in torchvision's layout (MNIST/raw/...); default ${DATA_DIR_ENV}, else ./data",
    )
    p.add_argument(
        "--epochs",
        type=at_least(0),
        default=None,
        help="passes over the training set (default: 10 with --schedule constant, all 3280 with "
        "--schedule burda; with burda, a number truncates the schedule)",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=schedule,
        help="constant: --lr throughout; burda: lr*10^(-i/7) for 3^i epochs, i=0..7 (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=at_least(1), default=20, help="images per step, 20 as in the paper (default: %(default)s)"
    )
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument(
        "--eval-particles",
        type=at_least(1),
        default=5000,
        help="importance samples K per test image for log p(x) (default: %(default)s)",
    )
    p.add_argument(
        "--eval-batch-size",
        type=at_least(1),
        default=100,
        help="test images per evaluation pass (default: %(default)s)",
    )
    p.add_argument(
        "--train-size", type=at_least(1), default=None, help="use the first N training images (default: all)"
    )
    p.add_argument("--test-size", type=at_least(1), default=None, help="use the first N test images (default: all)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def experiment_config(args: argparse.Namespace, **fields) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from the flags of :func:`add_experiment_arguments`, and ``fields``."""
    return ExperimentConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs=10 if args.epochs is None and args.schedule == "constant" else args.epochs,
        schedule=args.schedule,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_particles=args.eval_particles,
        eval_batch_size=args.eval_batch_size,
        train_size=args.train_size,
        test_size=args.test_size,
        device=args.device,
        progress=not args.no_progress,
        **fields,
    )


def run_main(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser) -> None:
    """``main(parser.parse_args())``; a user error or Ctrl-C exits with one line on stderr."""
    try:
        main(parser.parse_args())
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: finished epochs are kept in the checkpoints; continue with --resume")

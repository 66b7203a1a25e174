"""What the example scripts share: argparse types and one-line errors for mistakes a user can fix."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pyro_iwae.data import DataError
from pyro_iwae.data_plate import DataPlateError
from pyro_iwae.experiment import ConfigError
from pyro_iwae.training import CheckpointError, TrainingError

#: errors whose message says what to fix: printed as one line, without a traceback
USER_ERRORS = (ConfigError, DataError, DataPlateError, CheckpointError, TrainingError)


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


def run_main(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser) -> None:
    """``main(parser.parse_args())``; a user error or Ctrl-C exits with one line on stderr."""
    try:
        main(parser.parse_args())
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: finished epochs are kept in the checkpoints; continue with --resume")

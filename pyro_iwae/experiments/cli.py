"""Command-line plumbing: argparse types, and one-line errors for mistakes a user can fix."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pyro_iwae.checkpoints import CheckpointError
from pyro_iwae.data import DataError
from pyro_iwae.experiments.config import ConfigError
from pyro_iwae.importance import DataPlateError
from pyro_iwae.training import TrainingError

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


@contextmanager
def one_line_errors(parser: argparse.ArgumentParser, interrupted: str = "interrupted") -> Iterator[None]:
    """
    Run a script's work inside this: a value that :class:`ConfigError` refuses is a usage error
    (``parser.error``, exit status 2); another user error (or a file that cannot be read or
    written), or Ctrl-C, exits with one line on stderr, ``interrupted`` for Ctrl-C.
    """
    try:
        yield
    except ConfigError as error:
        parser.error(str(error))
    except (*USER_ERRORS, OSError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(interrupted)

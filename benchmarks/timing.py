"""What the timed benchmarks share: the device to run on, and a clock that waits for it."""

from __future__ import annotations

import argparse
import time

import torch

from pyro_iwae.experiments.config import DEVICES, ConfigError, resolve_device


def device(name: str) -> torch.device:
    """``--device``: ``cpu``, ``cuda`` or ``auto``; ``cuda`` is refused in one line where torch sees no GPU."""
    if name not in DEVICES:
        raise argparse.ArgumentTypeError(f"{name!r} is not a device here: use {', '.join(DEVICES)}")
    try:
        return resolve_device(name)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", type=device, default="cpu", help="cpu, cuda or auto: where to run the measured work (default: cpu)"
    )


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()

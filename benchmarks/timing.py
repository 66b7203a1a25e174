"""What the timed benchmarks share: the device to run on, and a clock that waits for it."""

from __future__ import annotations

import time

import torch


def add_device_argument(parser) -> None:
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where to run the measured work (default: %(default)s)"
    )


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()

"""
Several processes sharing one job, on :mod:`torch.distributed` as ``torchrun`` starts them.

``torchrun --nproc_per_node N script.py ...`` (or ``--nnodes``, ``--rdzv-endpoint`` for several
machines) starts N copies of a script and tells each who it is in the environment variables
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`process_group` joins the copies into a process group (gloo on CPUs, NCCL on GPUs); without
those variables it does nothing, and the script runs alone as before. Then :func:`rank` and
:func:`world_size` say which share of the work is this process's: :func:`shard` cuts a range of
equal items (an evaluation's batches) into contiguous blocks, :func:`balanced_shares` deals out jobs
of unequal cost (the grid's cells), and :func:`all_gather` brings every process's results to every process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from pyro_iwae.experiments.config import ConfigError

T = TypeVar("T")

#: the environment variables that torchrun sets for every process it starts
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """Whether this process belongs to an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the process group; 0 outside one."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the process group; 1 outside one."""
    return dist.get_world_size() if is_distributed() else 1


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher that sets its environment variables) started this process."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


@contextlib.contextmanager
def process_group(
    device: torch.device, backend: str | None = None, timeout: datetime.timedelta | None = None
) -> Iterator[torch.device]:
    """
    Inside, this process belongs to the process group that torchrun's environment variables describe,
    and leaves it on the way out; a process that torchrun did not start runs alone (:func:`rank` 0,
    :func:`world_size` 1)::

        with process_group(torch.device("cpu")) as device:
            mine = shard(num_batches)

    :param device: the device the script asked for; a CUDA device becomes this process's GPU on its
        machine, ``cuda:LOCAL_RANK``, which is made the current device.
    :param backend: default: ``"nccl"`` for CUDA, ``"gloo"`` for the CPU. Gloo is enough where only
        a few Python objects are exchanged, even between GPUs.
    :param timeout: how long a collective operation waits for the slowest process (default: torch's,
        30 minutes for gloo and 10 for NCCL).
    :returns: the device this process computes on.
    :raises ConfigError: if there are fewer GPUs on this machine than processes.
    """
    if not launched_by_torchrun():
        yield device
        return
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started process {local_rank} of this machine, which has {torch.cuda.device_count()}"
                " CUDA GPUs: start at most one process per GPU (--nproc_per_node), or use --device cpu"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"), timeout=timeout)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def shard(num_items: int, share: int | None = None, num_shares: int | None = None) -> range:
    """
    One share of ``range(num_items)``, a contiguous block: the blocks follow one another in rank
    order and their sizes differ by one at most, so the results of the ranks, concatenated in rank
    order, are in the items' order.

    :param share: default: this process's :func:`rank`.
    :param num_shares: default: :func:`world_size`.
    """
    share = rank() if share is None else share
    num_shares = world_size() if num_shares is None else num_shares
    return range(share * num_items // num_shares, (share + 1) * num_items // num_shares)


def balanced_shares(costs: Sequence[float], num_shares: int) -> list[int]:
    """
    The share (rank) of each job, so that the shares' total costs are close: taken in order of
    decreasing cost (ties in their given order), each job goes to the share with the least cost so
    far (the lowest rank among equals), Graham's longest-processing-time rule, whose longest share is
    within 4/3 of the best possible. The same costs always give the same shares.

    :param costs: ``[num_jobs]`` estimated costs, in any unit.
    :returns: ``[num_jobs]`` ranks in ``range(num_shares)``.
    """
    totals, shares = [0.0] * num_shares, [0] * len(costs)
    for job in sorted(range(len(costs)), key=lambda job: -costs[job]):
        share = min(range(num_shares), key=totals.__getitem__)
        shares[job] = share
        totals[share] += costs[job]
    return shares


def all_gather(obj: T) -> list[T]:
    """
    Every process's ``obj``, in rank order, on every process (``[obj]`` outside a process group):
    a collective operation, which waits for all processes to reach it. ``obj`` is pickled, so move
    tensors to the CPU first (each process might unpickle another's GPU tensors onto the wrong GPU).
    """
    if not is_distributed():
        return [obj]
    objects: list = [None] * world_size()
    dist.all_gather_object(objects, obj)
    return objects

"""
Per-data-point importance-sampling estimates of log p(x), and active units.

For each data point ``x_i`` and ``K`` samples ``z_il ~ q(z | x_i)``::

    log p(x_i) ~= log (1/K) sum_l w_il,   w_il = p(x_i, z_il) / q(z_il | x_i)

which is the bound ``L_K`` of Burda et al. (2016, eq. 8) for one draw; it rises
to ``log p(x_i)`` as ``K`` grows. Unlike
:func:`pyro.infer.importance.vectorized_importance_weights`, which sums the
weights over the data plate, every quantity here is per data point. Particles
are vectorized in a plate and processed in chunks with a running logsumexp, so
memory does not grow with ``K``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from tqdm.auto import tqdm

from pyro_iwae.data_plate import PARTICLE_PLATE, check_data_plate


class ImportanceEstimate(NamedTuple):
    """
    :ivar log_likelihood: ``[num_data]`` estimates ``log (1/K) sum_l w_l`` of log p(x).
    :ivar elbo: ``[num_data]`` estimates ``(1/K) sum_l log w_l`` of the ELBO, from the same samples.
    """

    log_likelihood: torch.Tensor
    elbo: torch.Tensor


def importance_traces(model: Callable, guide: Callable, *args, **kwargs) -> tuple[Trace, Trace]:
    """
    Run ``guide`` and then ``model`` replayed against it.

    :returns: ``(model_trace, guide_trace)`` with subsample sites pruned.
    """
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def log_importance_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int,
    max_plate_nesting: int = 1,
) -> torch.Tensor:
    """
    Draw ``num_particles`` samples from ``guide(x)`` per data point, vectorized
    in a particle plate at dim ``-(max_plate_nesting + 1)``.

    :param x: ``[batch_size, ...]`` data, passed as ``model(x)`` and ``guide(x)``.
    :returns: ``[num_particles, batch_size]`` log-weights ``log p(x_i, z_il) - log q(z_il | x_i)``.
    :raises DataPlateError: if a site is not inside one un-subsampled data plate.
    """
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
        model_trace, guide_trace = importance_traces(model, guide, x)
    data_frame = check_data_plate(model_trace, guide_trace)
    return log_density(model_trace, data_frame, num_particles) - log_density(guide_trace, data_frame, num_particles)


def log_density(trace: Trace, data_frame: CondIndepStackFrame, num_particles: int) -> torch.Tensor:
    """
    The sum of a trace's sample-site log-densities, per particle and data point.

    :param data_frame: the data plate (:func:`~pyro_iwae.data_plate.check_data_plate`),
        with the particle plate just left of it.
    :returns: ``[num_particles, batch_size]``.
    """
    trace.compute_log_prob()  # masked where poutine.mask says so; the data plate is unscaled
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample":
            log_prob = sum_rightmost(site["log_prob"], -data_frame.dim - 1)
            total = total + log_prob.expand(num_particles, data_frame.size)
    return total


def default_particle_chunk_size(device: torch.device, batch_size: int) -> int:
    """
    Particles per pass, so that a pass has about 10,000 rows (data points x particles)
    on the CPU and 100,000 on a GPU. On the CPU, 10,000 rows of 784 pixels keep every
    tensor below the 32 MiB that :func:`~pyro_iwae.allocator.keep_freed_memory` can
    recycle, and were the fastest pass on the project's machine (``benchmarks/README.md``);
    a GPU needs more rows to fill it.
    """
    rows = 10_000 if device.type == "cpu" else 100_000
    return max(1, rows // batch_size)


@torch.inference_mode()
def log_likelihood(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    num_particles: int = 5000,
    batch_size: int = 100,
    particle_chunk_size: int | None = None,
    max_plate_nesting: int = 1,
    progress: bool = False,
) -> ImportanceEstimate:
    """
    Importance-sampling estimates of ``log p(x_i)`` (and the ELBO) for every row
    of ``data``, with ``num_particles`` samples per data point.

    Peak memory is set by ``batch_size * particle_chunk_size`` rows, whatever
    ``num_particles`` is. Runs on the device of ``data``.

    :param data: ``[num_data, ...]`` data points.
    :param batch_size: data points per pass.
    :param particle_chunk_size: particles per pass (default: :func:`default_particle_chunk_size`).
    :param progress: show a progress bar.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    particle_chunk_size = particle_chunk_size or default_particle_chunk_size(data.device, batch_size)
    log_likelihoods, elbos = [], []
    with tqdm(total=data.shape[0], desc=f"evaluating (K={num_particles})", unit="img", disable=not progress) as bar:
        for x in data.split(batch_size):
            log_sum_weights = x.new_full(x.shape[:1], -math.inf)
            sum_log_weights = x.new_zeros(x.shape[:1])
            for start in range(0, num_particles, particle_chunk_size):
                chunk = min(particle_chunk_size, num_particles - start)
                log_weights = log_importance_weights(model, guide, x, chunk, max_plate_nesting)
                log_sum_weights = torch.logaddexp(log_sum_weights, log_weights.logsumexp(0))
                sum_log_weights += log_weights.sum(0)
            log_likelihoods.append(log_sum_weights - math.log(num_particles))
            elbos.append(sum_log_weights / num_particles)
            bar.update(x.shape[0])
    return ImportanceEstimate(torch.cat(log_likelihoods), torch.cat(elbos))


@torch.inference_mode()
def posterior_means(
    guide: Callable,
    data: torch.Tensor,
    num_particles: int = 100,
    batch_size: int = 500,
    max_plate_nesting: int = 1,
) -> dict[str, torch.Tensor]:
    """
    ``E_q[z | x]`` for every latent site of ``guide`` and every row of ``data``.

    Averages ``num_particles`` draws of the guide, using each site's conditional
    mean where its distribution has one (exact for a one-layer Gaussian guide),
    else the sampled value.

    :param data: ``[num_data, ...]`` data points.
    :returns: ``{site name: [num_data, event_size] tensor}``.
    """
    means: dict[str, list[torch.Tensor]] = {}
    for x in data.split(batch_size):
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
            guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(x))
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["is_observed"]:
                try:
                    mean = site["fn"].mean
                except NotImplementedError:
                    mean = site["value"]
                means.setdefault(name, []).append(mean.expand(site["value"].shape).mean(0))
    return {name: torch.cat(batches) for name, batches in means.items()}


def active_units(guide: Callable, data: torch.Tensor, threshold: float = 0.01, **kwargs) -> dict[str, torch.Tensor]:
    """
    Active latent units (Burda et al., 2016, section 5.2): unit ``u`` is active
    if ``Var_x(E_q[z_u | x]) > threshold``.

    :param data: ``[num_data, ...]`` data points.
    :param kwargs: passed to :func:`posterior_means`.
    :returns: ``{site name: [event_size] bool tensor}``; ``.sum()`` counts the active units.
    """
    return {name: means.var(0) > threshold for name, means in posterior_means(guide, data, **kwargs).items()}

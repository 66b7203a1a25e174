"""
Per-data-point importance-sampling estimates of log p(x), and active units.

For each data point ``x_i`` and ``K`` samples ``z_il ~ q(z | x_i)``::

    log p(x_i) ~= log (1/K) sum_l w_il,   w_il = p(x_i, z_il) / q(z_il | x_i)

which is the bound ``L_K`` of Burda et al. (2016, eq. 8) for one draw; it rises
to ``log p(x_i)`` as ``K`` grows. Unlike
:func:`pyro.infer.importance.vectorized_importance_weights`, which sums the
weights over the data plate, every quantity here is per data point. Particles
are vectorized in a plate and processed in chunks with a running logsumexp, so
memory does not grow with ``K``. With a ``seed``, each batch of data points draws
from a random state of its own, so that any subset of the batches, scored in any
order or by several processes, gives the estimates of the whole.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import pyro
import pyro.util
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.effect import AutoMessenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import prune_subsample_sites
from tqdm.auto import tqdm

from pyro_iwae.compiled import CompiledFunction
from pyro_iwae.importance import (
    PARTICLE_PLATE,
    PLATE_SIZES_DIFFER,
    DataPlateError,
    guess_max_plate_nesting,
    log_importance_weights,
)
from pyro_iwae.validation import positive_integer


class ImportanceEstimate(NamedTuple):
    """
    :ivar log_likelihood: ``[num_data]`` estimates ``log (1/K) sum_l w_l`` of log p(x).
    :ivar elbo: ``[num_data]`` estimates ``(1/K) sum_l log w_l`` of the ELBO, from the same samples.
    """

    log_likelihood: torch.Tensor
    elbo: torch.Tensor


def default_particle_chunk_size(device: torch.device, batch_size: int) -> int:
    """
    Particles per pass, so that a pass has about 10,000 rows (data points x particles)
    on the CPU and 100,000 on a GPU. On the CPU, 10,000 rows of 784 pixels keep every
    tensor below the 32 MiB that :func:`~pyro_iwae.fast.keep_freed_memory` can
    recycle, and were the fastest pass on the project's machine (``benchmarks/README.md``);
    a GPU needs more rows to fill it.
    """
    rows = 10_000 if device.type == "cpu" else 100_000
    return max(1, rows // batch_size)


def batch_seed(seed: int, index: int) -> int:
    """
    The seed that batch ``index`` of an evaluation seeded with ``seed`` draws from: a 32-bit
    integer mixed from both by :class:`numpy.random.SeedSequence`, so that neighbouring seeds
    and batches get unrelated random streams.
    """
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


@contextlib.contextmanager
def _random_state_kept(device: torch.device) -> Iterator[None]:
    """Leave Python's, NumPy's and torch's random states (on the CPU and on ``device``) as they were before."""
    state = pyro.util.get_rng_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        pyro.util.set_rng_state(state)


def log_likelihood(
    model: Callable,
    guide: Callable,
    *args: torch.Tensor,
    num_particles: int = 5000,
    batch_size: int = 100,
    particle_chunk_size: int | None = None,
    max_plate_nesting: int | None = None,
    seed: int | None = None,
    batch_indices: Sequence[int] | None = None,
    progress: bool = False,
    compile: bool = False,
    **kwargs,
) -> ImportanceEstimate:
    """
    Importance-sampling estimates of ``log p(x_i)`` (and the ELBO) for every data
    point, with ``num_particles`` samples per data point::

        log_likelihood(model, guide, images, num_particles=5000)
        log_likelihood(model, guide, images, labels, num_particles=5000)  # model(images, labels)

    Peak memory is set by ``batch_size * particle_chunk_size`` rows, whatever
    ``num_particles`` is. Runs on the device of the data.

    :param args: ``[num_data, ...]`` tensors, split along dim 0 into batches of
        ``batch_size`` and passed as ``model(*batch, **kwargs)`` and ``guide(*batch, **kwargs)``.
    :param kwargs: passed to the model and the guide unchanged.
    :param batch_size: data points per pass.
    :param particle_chunk_size: particles per pass (default: :func:`default_particle_chunk_size`
        for the data points in the pass).
    :param max_plate_nesting: plates nested in the model, data plate included (default: found
        from one trace); the particles go in a plate to their left.
    :param seed: a non-negative integer: batch ``i`` (rows ``i * batch_size`` to ``(i + 1) * batch_size``)
        draws its samples after ``pyro.set_rng_seed(batch_seed(seed, i))`` (:func:`batch_seed`), and the
        caller's random states are left as they were. A batch's estimates then depend on the seed, its
        index, ``batch_size`` and the pass size (``particle_chunk_size``, whose default depends on the device
        type) only, not on the other batches scored or their order, so processes can
        share the batches (``examples/evaluate.py``). Default: draw from the global random state, batch
        after batch.
    :param batch_indices: score only these batches, in this order (default: all); the estimates are those
        of their rows, in that order.
    :param progress: show a progress bar.
    :param compile: trace each shape of pass once and compile it (:class:`~pyro_iwae.compiled.CompiledFunction`):
        the same draws and estimates, to float rounding, with the element-wise work after each matmul fused;
        worth its compile time (seconds to a minute a shape) for a large ``num_particles``. Tensors in
        ``kwargs`` are constants of the compiled passes.
    """
    batches = _batches(args, kwargs, batch_size, num_particles, particle_chunk_size, seed)
    indices = range(len(batches)) if batch_indices is None else list(batch_indices)
    outside = [index for index in indices if not 0 <= index < len(batches)]
    if outside:
        raise IndexError(f"batch_indices {outside} are not among the {len(batches)} batches of {args[0].shape[0]} rows")
    if not indices:  # no batch to score: no estimates
        empty = args[0].new_zeros(0, dtype=torch.promote_types(args[0].dtype, torch.float32))
        return ImportanceEstimate(empty, empty)
    # one trace outside inference mode, so that parameters the model or guide create on their first
    # call (pyro.param, an autoguide's) are ordinary tensors, which training can update afterwards
    # (it leaves the random number generators as they were)
    num_data = args[0].shape[0]
    try:
        with torch.no_grad():
            nesting = guess_max_plate_nesting(model, guide, *batches[0], **kwargs)
    except Exception as error:
        _explain_failure_in_batches(error, model, guide, batches[0], kwargs, num_data)
        raise
    passes = _Passes(model, guide, nesting if max_plate_nesting is None else max_plate_nesting, compile, kwargs)
    estimates = []
    bar = tqdm(
        total=sum(batches[index][0].shape[0] for index in indices),
        desc=f"evaluating (K={num_particles})",
        unit="data point",
        disable=not progress,
    )
    with (
        torch.inference_mode(),
        _random_state_kept(args[0].device) if seed is not None else contextlib.nullcontext(),
        bar,
    ):
        for index in indices:
            batch = batches[index]
            if seed is not None:
                pyro.set_rng_seed(batch_seed(seed, index))
            try:
                estimates.append(_estimate(passes, batch, num_particles, particle_chunk_size))
            except Exception as error:
                _explain_failure_in_batches(error, model, guide, batch, kwargs, num_data)
                raise
            bar.update(batch[0].shape[0])
    return ImportanceEstimate(*(torch.cat(estimate) for estimate in zip(*estimates)))


def _batches(
    args: tuple[torch.Tensor, ...],
    kwargs: dict,
    batch_size: int,
    num_particles: int,
    particle_chunk_size: int | None,
    seed: int | None,
) -> list[tuple[torch.Tensor, ...]]:
    """
    :func:`log_likelihood`'s arguments checked, and its data split into batches of ``batch_size``
    rows (none for no rows).
    """
    positive_integer("num_particles", num_particles)
    positive_integer("batch_size", batch_size)
    if particle_chunk_size is not None:
        positive_integer("particle_chunk_size", particle_chunk_size)
    if not args:
        raise TypeError(
            "log_likelihood(model, guide, *data, num_particles=..., batch_size=...) takes the data positionally,"
            f" after the guide, and got none{f' (keyword arguments {sorted(kwargs)})' if kwargs else ''}: pass"
            " it as log_likelihood(model, guide, x, ...), with the model and the guide taking it as their first"
            " argument, so that it is split into batches of rows"
        )
    if not all(isinstance(arg, torch.Tensor) and arg.dim() > 0 for arg in args):
        raise TypeError(
            "log_likelihood(model, guide, *data, num_particles=..., batch_size=...) takes the data as tensors"
            f" with one row per data point, got {[type(arg).__name__ for arg in args]}: pass num_particles and"
            " batch_size by keyword, and other model arguments as keyword arguments"
        )
    if any(arg.shape[0] != args[0].shape[0] for arg in args):
        raise ValueError(f"the data tensors have different numbers of rows: {[arg.shape[0] for arg in args]}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    num_rows = args[0].shape[0]
    for key, value in kwargs.items():
        if num_rows > batch_size and isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == num_rows:
            raise ValueError(
                f"keyword argument {key}= has a row for each of the {num_rows} data points, but keyword arguments go"
                f" whole to every batch: pass it positionally after the data, log_likelihood(model, guide, x, {key},"
                " ...), to have it split with the data (the model and the guide take it as their next argument)"
            )
    return list(zip(*(arg.split(batch_size) for arg in args))) if num_rows else []


def _explain_failure_in_batches(
    error: Exception, model: Callable, guide: Callable, batch: tuple[torch.Tensor, ...], kwargs: dict, num_data: int
) -> None:
    """
    After ``error`` on ``batch``, one of the batches of the ``num_data`` rows: raise, from it, a
    :class:`DataPlateError` that says why, where scoring in batches is the cause
    (:func:`_explain_autoguide_in_batches`, :func:`_explain_a_data_plate_of_every_row`); else return,
    for the caller to raise ``error``.
    """
    rows = batch[0].shape[0]
    if rows < num_data:
        _explain_autoguide_in_batches(error, guide, rows, num_data)
        _explain_a_data_plate_of_every_row(error, model, guide, batch, kwargs, num_data)


def _explain_autoguide_in_batches(error: Exception, guide: Callable, rows: int, num_data: int) -> None:
    """
    Where the guide is an autoguide (``AutoNormal``, ``AutoNormalMessenger``) and ``error`` a shape
    mismatch in it (or its plates' sizes or scales), raise a :class:`DataPlateError` that says why:
    it keeps a parameter per data point.
    """
    if not isinstance(guide, (AutoGuide, AutoMessenger)):
        return
    message = str(error)
    if isinstance(error, DataPlateError):
        if not message.startswith(("the sites have different scales", PLATE_SIZES_DIFFER)):
            return
    elif not any(word in message.lower() for word in ("shape", "broadcast", "expand")):  # validated or not
        return
    plates = " (AutoNormal(model, create_plates=...))" if isinstance(guide, AutoGuide) else ""
    raise DataPlateError(
        f"{type(guide).__name__} failed on a batch of {rows} of the {num_data} rows. An autoguide keeps a"
        " parameter per data point, for the data it was built on, so it can score them in batches only through"
        " a model whose data plate takes subsample=indices (pyro.plate('data', size, subsample=indices), the"
        f" indices passed as data too), with the guide given those indices{plates}: else pass"
        f" batch_size={num_data}."
    ) from error


def _explain_a_data_plate_of_every_row(
    error: Exception, model: Callable, guide: Callable, batch: tuple[torch.Tensor, ...], kwargs: dict, num_data: int
) -> None:
    """
    Where the model or the guide, run alone on ``batch``, opens a plate of ``num_data`` elements
    (``pyro.plate("data", num_data)``, sized for every row, not for the batch), raise a
    :class:`DataPlateError` that names it. The random number generators are left as they were.
    """
    if isinstance(error, DataPlateError):
        return
    plates = []
    for role, function in (("model", model), ("guide", guide)):
        with _random_state_kept(batch[0].device), poutine.block(), poutine.trace() as tracer:
            try:
                function(*batch, **kwargs)
            except Exception:  # it fails where it fails: the plates opened before are in the trace
                pass
        plates += [
            f"the {role}'s pyro.plate({name!r}, {site['fn'].size})"
            for name, site in tracer.trace.nodes.items()
            if isinstance(site["fn"], _Subsample) and site["value"] is not None and len(site["value"]) == num_data
        ]
    if plates:
        raise DataPlateError(
            f"{' and '.join(plates)} {'hold' if len(plates) > 1 else 'holds'} {num_data} data points, all the rows,"
            f" but {'are' if len(plates) > 1 else 'is'} given a batch of"
            f" {batch[0].shape[0]} of them: size the data plate from the batch (pyro.plate('data', x.shape[0])),"
            f" or give it subsample=indices with the indices passed as data too, or pass batch_size={num_data}."
        ) from error


class _Passes:
    """``passes(pass_size, batch)``: the ``[pass_size, rows]`` log-weights of one evaluator pass, compiled if asked."""

    def __init__(self, model: Callable, guide: Callable, max_plate_nesting: int, compile: bool, kwargs: dict) -> None:
        self.model, self.guide, self.kwargs = model, guide, kwargs
        self.max_plate_nesting, self.compile = max_plate_nesting, compile
        self._compiled: dict[tuple, CompiledFunction] = {}

    def __call__(self, pass_size: int, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        log_weights = functools.partial(
            log_importance_weights,
            self.model,
            self.guide,
            num_particles=pass_size,
            max_plate_nesting=self.max_plate_nesting,
            **self.kwargs,
        )
        if not self.compile:
            return log_weights(*batch)
        key = (pass_size, *(arg.shape for arg in batch))
        if key not in self._compiled:
            with torch.inference_mode(False), torch.no_grad():
                self._compiled[key] = CompiledFunction(log_weights, batch)
        return self._compiled[key](*batch)


def _estimate(
    passes: _Passes, batch: tuple[torch.Tensor, ...], num_particles: int, particle_chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    ``[rows]`` estimates of log p(x) and of the ELBO for one batch, from ``num_particles`` particles
    drawn in passes of ``particle_chunk_size``, combined by a running logsumexp.
    """
    rows = batch[0].shape[0]
    chunk_size = particle_chunk_size or default_particle_chunk_size(batch[0].device, rows)
    log_sum_weights = sum_log_weights = None
    for start in range(0, num_particles, chunk_size):
        log_weights = passes(min(chunk_size, num_particles - start), batch)
        if log_weights.shape[1] != rows:
            raise DataPlateError(
                f"the data plate has {log_weights.shape[1]} data points in a batch of {rows} rows: the"
                " evaluator scores every row, so the plate must cover the batch it is given (no"
                " subsample_size; pass subsample=indices, or give the model an argument that turns"
                " subsampling off)"
            )
        if log_sum_weights is None:  # integer or half-precision data: accumulate in float32 at least
            dtype = torch.promote_types(log_weights.dtype, torch.float32)
            log_sum_weights = log_weights.new_full((rows,), -math.inf, dtype=dtype)
            sum_log_weights = log_weights.new_zeros((rows,), dtype=dtype)
        log_sum_weights = torch.logaddexp(log_sum_weights, log_weights.logsumexp(0))
        sum_log_weights += log_weights.sum(0)
    return log_sum_weights - math.log(num_particles), sum_log_weights / num_particles


@torch.inference_mode()
def posterior_means(
    guide: Callable,
    data: torch.Tensor,
    num_particles: int = 100,
    batch_size: int = 500,
    max_plate_nesting: int = 1,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """
    ``E_q[z | x]`` for every latent site of ``guide`` and every row of ``data``.

    Averages ``num_particles`` draws of the guide, using each site's conditional
    mean where its distribution has one (exact for a one-layer Gaussian guide),
    else the sampled value.

    :param data: ``[num_data, ...]`` data points.
    :param seed: draw after ``pyro.set_rng_seed(seed)``, leaving the caller's random states as they
        were, so that the means of a deeper layer (which depend on the draws of the layer below) are the
        same wherever they are computed (default: draw from the global random state).
    :returns: ``{site name: [num_data, event_size] tensor}``.
    """
    means: dict[str, list[torch.Tensor]] = {}
    with _random_state_kept(data.device) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            pyro.set_rng_seed(seed)
        for x in data.split(batch_size):
            with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
                guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(x))
            _add_means(guide_trace, means)
    return {name: torch.cat(batches) for name, batches in means.items()}


def _add_means(guide_trace: poutine.Trace, means: dict[str, list[torch.Tensor]]) -> None:
    """Append to ``means[name]`` each latent site's ``[rows, event_size]`` mean over the particle plate."""
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            try:
                mean = site["fn"].mean
            except NotImplementedError:
                mean = site["value"]
            means.setdefault(name, []).append(mean.expand(site["value"].shape).mean(0))


def unit_variances(guide: Callable, data: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
    """
    ``Var_x(E_q[z_u | x])`` of every latent unit ``u`` over the rows of ``data``: the activity
    statistic of Burda et al. (2016, section 5.2), whose logarithm their appendix C plots.

    :param data: ``[num_data, ...]`` data points.
    :param kwargs: passed to :func:`posterior_means`.
    :returns: ``{site name: [event_size] tensor}``.
    """
    return {name: means.var(0) for name, means in posterior_means(guide, data, **kwargs).items()}


#: Burda et al.'s (2016, section 5.2) threshold on ``Var_x(E_q[z_u | x])`` for an active unit
ACTIVITY_THRESHOLD = 0.01


def active_units(
    guide: Callable, data: torch.Tensor, threshold: float = ACTIVITY_THRESHOLD, **kwargs
) -> dict[str, torch.Tensor]:
    """
    Active latent units (Burda et al., 2016, section 5.2): unit ``u`` is active
    if ``Var_x(E_q[z_u | x]) > threshold`` (:func:`unit_variances`).

    :param data: ``[num_data, ...]`` data points.
    :param kwargs: passed to :func:`posterior_means`.
    :returns: ``{site name: [event_size] bool tensor}``; ``.sum()`` counts the active units.
    """
    return {name: variances > threshold for name, variances in unit_variances(guide, data, **kwargs).items()}

"""
Importance weights per data point from a Pyro model and guide: the one place where
traces become ``log w``, shared by the objectives, the evaluator and the plots.

For data point ``x_i`` and particles ``z_il ~ q(z | x_i)``, ``l = 1 .. k``::

    log w_il = log p(x_i, z_il) - log q(z_il | x_i)

and the IWAE bound (Burda et al., 2016, eq. 8) is ``L_k = sum_i log (1/k) sum_l w_il``.
The logsumexp runs over particles *separately for each data point*, so every sample
site must belong to one data point. What this module accepts, and why:

- **The data plate** is found by structure, not by name: the vectorized ``pyro.plate``
  that every sample site of the model and the guide shares (where two plates hold every
  site, which one is the data's is ambiguous, and refused). A site outside it (a global
  latent; a guide site that couples data points, such as ``AutoMultivariateNormal``'s joint
  latent) has one density for the whole batch and is refused (:class:`DataPlateError`,
  naming the site and the fix).
- **A point-mass guide site** (``Delta``, as in ``AutoDelta``) has no density ``q``: refused.
- **Plates nested in the data plate** (a pixel plate, say) are summed within each data point.
- **Subsampling** (``subsample_size``, ``subsample``, ``poutine.scale``): every site carries
  the same scale ``N / B``. It is taken *out* of the per-data-point log-weights and applied
  to the bound after the logsumexp (:attr:`ImportanceWeights.scale`), as NumPyro does;
  Pyro's ``RenyiELBO`` multiplies before the logsumexp, which is not the bound.
- **A latent that the model samples and the guide lacks** (an extra latent, or the
  ``x_unobserved`` site of ``obs_mask``) is proposed by the model itself, so its density
  cancels from the weight: it is left out of ``log w``.
- **Auxiliary guide sites** (``infer={"is_auxiliary": True}``, as in ``AutoNormal``, whose
  ``Delta`` sites carry the Jacobian) count in ``log q``: their density and the latents'
  make ``q(z)``. Any other guide site that the model lacks is refused.
- **Sites without a density** (``pyro.deterministic``) are ignored everywhere.
- **Non-reparameterized proposals** (a discrete guide site, a discrete model-only latent)
  are reported in :attr:`ImportanceWeights.proposal_log_density`, for the score-function
  part of a gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import pyro.util
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites

#: how :func:`check_data_plate`'s refusal of a model's and a guide's data plates of different sizes begins
PLATE_SIZES_DIFFER = "the model's and the guide's data plates have different sizes"
#: our particle plate (named apart from any plate of a user's), and the one Pyro's ELBOs add with
#: ``vectorize_particles=True``
PARTICLE_PLATE, PYRO_PARTICLE_PLATE = "_pyro_iwae_particles", "num_particles_vectorized"
PARTICLE_PLATES = (PARTICLE_PLATE, PYRO_PARTICLE_PLATE)


class DataPlateError(ValueError):
    """A model or guide whose importance weights cannot be formed per data point."""


class ImportanceWeights(NamedTuple):
    """
    ``[num_particles, batch_size]`` terms of the log-weights ``log p(x_i, z_il) - log q(z_il | x_i)``,
    differentiable where the traces are.

    :ivar log_weights: ``log w_il``: the model's sites summed, less the guide's one at a time
        (``RenyiELBO``'s order, so that the IWAE objective gives its numbers to the bit).
    :ivar model_log_density: ``log p(x_i, z_il)`` (model-only latents left out).
    :ivar guide_log_density: ``log q(z_il | x_i)``.
    :ivar proposal_log_density: ``[num_particles, batch_size]`` log-density of the proposal's
        non-reparameterized sites (guide sites, model-only latents), or ``None`` if it has none.
    :ivar scale: the sites' common scale (``N / B`` in a subsampled data plate, else 1): the
        full-data bound is ``scale * sum_i L_i``.
    :ivar data_plate: the data plate's frame (its name, ``dim`` and ``size``).
    """

    log_weights: torch.Tensor
    model_log_density: torch.Tensor
    guide_log_density: torch.Tensor
    proposal_log_density: torch.Tensor | None
    scale: float
    data_plate: CondIndepStackFrame


def importance_traces(model: Callable, guide: Callable, *args, **kwargs) -> tuple[Trace, Trace]:
    """
    Run ``guide`` and then ``model`` replayed against it; or, for an effect-based guide (a
    ``GuideMessenger`` such as ``AutoNormalMessenger``, which runs its model inside itself), the guide
    alone, its traces split as Pyro's ELBOs split them.

    :returns: ``(model_trace, guide_trace)`` with subsample sites pruned.
    """
    if is_guide_messenger(guide):
        if poutine.unwrap(guide).model != model:
            raise ValueError(
                f"the effect-based guide {type(poutine.unwrap(guide)).__name__} runs its own model inside itself,"
                " not the model given: pass the model it was built with (guide.model)"
            )
        guide(*args, **kwargs)
        model_trace, guide_trace = poutine.unwrap(guide).get_traces()
    else:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def is_guide_messenger(guide: Callable) -> bool:
    """Whether ``guide`` is effect-based (``pyro.poutine.guide.GuideMessenger``): it runs the model itself."""
    return isinstance(poutine.unwrap(guide), poutine.messenger.Messenger)


def guess_max_plate_nesting(model: Callable, guide: Callable, *args, **kwargs) -> int:
    """
    How many plates the model and guide nest, from one trace of each (as Pyro's ELBOs guess
    it), leaving the random number generators as they were: the numbers that follow do not
    depend on whether the guess was made.
    """
    rng_state = pyro.util.get_rng_state()
    try:
        with poutine.block():
            traces = importance_traces(model, guide, *args, **kwargs)
    finally:
        pyro.util.set_rng_state(rng_state)
    dims = [-frame.dim for _, site in _sample_sites(*traces) for frame in site["cond_indep_stack"] if frame.vectorized]
    return max(dims, default=0)


def log_importance_weights(
    model: Callable, guide: Callable, *args, num_particles: int, max_plate_nesting: int = 1, **kwargs
) -> torch.Tensor:
    """
    ``[num_particles, batch_size]`` log-weights: ``num_particles`` draws from
    ``guide(*args, **kwargs)`` per data point, vectorized in a particle plate at
    dim ``-(max_plate_nesting + 1)``, each scored by ``model(*args, **kwargs)``.
    """
    try:
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
            model_trace, guide_trace = importance_traces(model, guide, *args, **kwargs)
    except Exception as error:
        explain_failure(error, model, guide, *args, **kwargs)
        raise
    return importance_weights(model_trace, guide_trace).log_weights


def explain_failure(error: Exception, model: Callable, guide: Callable, *args, **kwargs) -> None:
    """
    After ``error`` in a draw inside a particle plate: raise, from it, the :class:`DataPlateError`
    that one draw without that plate shows (a latent outside the data plate, such as a weight
    matrix that ``F.linear`` cannot take with a particle dim, which broke before it could be refused);
    else return, for the caller to raise ``error``. The random number generators are left as they were.
    """
    if isinstance(error, DataPlateError):
        return
    rng_state = pyro.util.get_rng_state()
    try:
        with poutine.block():
            traces = importance_traces(model, guide, *args, **kwargs)
        check_data_plate(*traces)
    except DataPlateError as refusal:
        raise refusal from error
    except Exception:  # the draw fails without the particle plate too: the error is the model's own
        return
    finally:
        pyro.util.set_rng_state(rng_state)


def importance_weights(model_trace: Trace, guide_trace: Trace) -> ImportanceWeights:
    """
    The per-data-point log-weights of a model trace replayed against a guide trace,
    both drawn inside a particle plate (or none, for one particle).

    :raises DataPlateError: where the weights cannot be formed per data point.
    """
    data_plate = check_data_plate(model_trace, guide_trace)
    particles = next(
        (
            f
            for _, site in _sample_sites(guide_trace, model_trace)
            for f in site["cond_indep_stack"]
            if _is_particles(f)
        ),
        None,
    )
    if particles is None:  # one particle: a dim left of every plate
        depth = max(-f.dim for _, site in _sample_sites(model_trace, guide_trace) for f in _data_frames(site))
        particle_dim = -depth - 1
    else:
        particle_dim = particles.dim
    shape = (particles.size if particles is not None else 1, data_plate.size)
    scales = []

    def per_data_point(name: str, site: dict, mask: bool | torch.Tensor | None) -> torch.Tensor:
        scales.append((name, _scale(name, site)))
        log_prob = scale_and_mask(site["unscaled_log_prob"], mask=mask)
        declared = {frame.dim for frame in site["cond_indep_stack"] if frame.vectorized}
        return _sum_within_data_points(name, log_prob, data_plate.dim, particle_dim, declared).expand(shape)

    model_only = model_only_latents(model_trace, guide_trace)
    _refuse_point_masses(guide_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    log_p, log_q, proposal = 0.0, 0.0, 0.0
    for name, site in _sample_sites(model_trace):
        if name in model_only:  # the model proposes it, so p(u | ...) cancels from w
            if not site["fn"].has_rsample:
                proposal = proposal + per_data_point(name, site, site["mask"])
            continue
        log_p = log_p + per_data_point(name, site, site["mask"])
    if not isinstance(log_p, torch.Tensor):  # no observation in the model
        log_p = torch.zeros(shape)
    log_weights = log_p
    for name, site in _sample_sites(guide_trace):
        # where the model masks a variable out (obs_mask's x_unobserved at the observed entries), the guide's
        # draws there are in no density of the model: they integrate out of q, so they leave the weight too
        # (AutoNormal's auxiliary site too, which stands for the variable)
        variable = name.removesuffix(AUTONORMAL_SUFFIX) if name not in model_trace else name
        model_mask = model_trace.nodes[variable]["mask"] if variable in model_trace else None
        log_q_site = per_data_point(name, site, _both(site["mask"], model_mask))
        log_q = log_q + log_q_site
        log_weights = log_weights - log_q_site
        if not site["fn"].has_rsample:
            proposal = proposal + log_q_site
    if len({scale for _, scale in scales}) > 1:
        raise DataPlateError(
            f"the sites have different scales ({', '.join(f'{n}: {s:g}' for n, s in scales)}): the IWAE"
            " bound weighs a whole data point at once, so poutine.scale must cover every site of the model and"
            " the guide alike (a subsampled data plate does that)."
        )
    if not isinstance(log_q, torch.Tensor):  # an empty guide: the model proposes every latent
        log_q = torch.zeros_like(log_p)
    return ImportanceWeights(
        log_weights,
        log_p,
        log_q,
        None if isinstance(proposal, float) else proposal,
        scales[0][1] if scales else 1.0,
        data_plate,
    )


def _both(mask: bool | torch.Tensor | None, other: bool | torch.Tensor | None) -> bool | torch.Tensor | None:
    """Pyro's site masks (``None`` for none, a bool, or a bool tensor) combined: true where both are."""
    if mask is None or other is None:
        return other if mask is None else mask
    return mask & other if isinstance(mask, torch.Tensor) or isinstance(other, torch.Tensor) else mask and other


def model_only_latents(model_trace: Trace, guide_trace: Trace) -> set[str]:
    """
    The model's latent sites that the guide does not sample: the model proposes them itself.

    :raises DataPlateError: for a guide site that is not a latent of the model and not
        auxiliary (``infer={"is_auxiliary": True}``, as in Pyro's autoguides, whose density over
        their auxiliary and latent sites is q of the latents).
    """
    for name, site in _sample_sites(guide_trace):
        in_model = name in model_trace and not model_trace.nodes[name]["is_observed"]
        if not in_model and not site["infer"].get("is_auxiliary"):
            raise DataPlateError(
                f"guide site {name!r} is not a latent of the model: a weight or an ELBO needs the model's"
                " density at every variable the guide proposes. Sample it in the model too, or drop it from the"
                " guide, or mark it infer={'is_auxiliary': True} if, as in Pyro's autoguides, the guide's"
                " density over it and the latents is q(latents)."
            )
    return {name for name, site in _sample_sites(model_trace) if not site["is_observed"] and name not in guide_trace}


#: ``AutoNormal`` samples latent ``name`` at a transform of its auxiliary site ``name + AUTONORMAL_SUFFIX``
AUTONORMAL_SUFFIX = "_unconstrained"


def _refuse_point_masses(guide_trace: Trace) -> None:
    """
    Refuse a guide site drawn from a point mass (``Delta``, as in ``AutoDelta``), unless an auxiliary
    site's density stands for it: ``AutoNormal`` draws ``name`` as a ``Delta`` at a transform of its
    auxiliary site ``name + "_unconstrained"``, the Jacobian in the ``Delta``'s ``log_density``.
    """
    auxiliary = {name for name, site in _sample_sites(guide_trace) if site["infer"].get("is_auxiliary")}
    for name, site in _sample_sites(guide_trace):
        fn = site["fn"]
        while not isinstance(fn, dist.Delta) and hasattr(fn, "base_dist"):  # Independent, masked, expanded...
            fn = fn.base_dist
        if isinstance(fn, dist.Delta) and name + AUTONORMAL_SUFFIX not in auxiliary:
            raise DataPlateError(
                f"guide site {name!r} is a point mass (Delta, as in AutoDelta): it has no density q(z | x), so"
                " the weight p(x, z) / q(z | x) would be p(x, z) at one point, which is not a bound on log p(x)"
                " (for MAP, train with Trace_ELBO). Use a guide with a density: an encoder network's Normal, or"
                f" AutoNormal. (A Delta at a transform of an auxiliary site counts, as AutoNormal's does, when that"
                f" site is named {name + AUTONORMAL_SUFFIX!r}, with infer={{'is_auxiliary': True}}, and the"
                " Delta's log_density is the log-Jacobian of the inverse transform.)"
            )


def check_data_plate(model_trace: Trace, guide_trace: Trace) -> CondIndepStackFrame:
    """
    Find the data plate: the vectorized plate (apart from a particle plate) that every
    sample site of both traces shares; sites without a density (``pyro.deterministic``)
    do not count. Where two plates hold every site, either could index the data points,
    and the weights of the other would be a product over a whole column: refused.

    :returns: the data plate's frame (from the first site; its ``dim`` and ``size``).
    :raises DataPlateError: naming a site outside it, and the fix.
    """
    sites = [
        (role, name, site)
        for role, trace in (("model", model_trace), ("guide", guide_trace))
        for name, site in _sample_sites(trace)
    ]
    if not sites:
        raise DataPlateError("the model and guide have no sample sites")
    plates = {(role, name): _data_frames(site) for role, name, site in sites}
    shared = set.intersection(*({f.name for f in frames} for frames in plates.values()))
    if not shared:
        _refuse_site_outside_the_data_plate(sites, plates)
    if len(shared) > 1:
        frames = ", ".join(f"{f.name!r} (dim {f.dim})" for f in next(iter(plates.values())) if f.name in shared)
        raise DataPlateError(
            f"the plates {frames} each hold every sample site of the model and the guide, so which of them"
            " indexes the data points is ambiguous (the order of `with` and the dims do not tell: Pyro gives the"
            " plate entered first dim -1). Keep one plate around every site, the data plate, and put the other"
            " dims into each site's event (`.to_event(1)`), or keep a latent out of the inner plate."
        )
    data_plate = next(f for f in next(iter(plates.values())) if f.name in shared)
    for (role, name), frames in plates.items():
        frame = next(f for f in frames if f.name == data_plate.name)
        if (frame.dim, frame.size) != (data_plate.dim, data_plate.size):
            raise DataPlateError(
                f"{role} site {name!r} is in plate {frame.name!r} of size {frame.size} at dim {frame.dim}, other"
                f" sites in one of size {data_plate.size} at dim {data_plate.dim}: the model and the guide must use"
                " the same data plate (same size, same dim)."
            )
        if frame.full_size != data_plate.full_size:
            # replayed against a guide's plate of another size, a model's plate takes the guide's data points
            # for a subsample of its own, and scales its sites by the ratio of the sizes
            raise DataPlateError(
                f"{PLATE_SIZES_DIFFER} ({role} site {name!r}: {frame.full_size} data points, other sites:"
                f" {data_plate.full_size}), and Pyro takes the smaller for a subsample of the larger: give both the"
                " same size, the batch's (pyro.plate('data', x.shape[0])) or the data set's with subsample=indices."
            )
    return data_plate


def _refuse_site_outside_the_data_plate(sites: list, plates: dict) -> None:
    observed = [(role, name) for role, name, site in sites if site["is_observed"]] or list(plates)
    candidates = set.intersection(*({f.name for f in plates[key]} for key in observed))
    if not candidates:
        _refuse_a_sequential_data_plate(sites)
        where = "; ".join(
            f"{role} site {name!r} in {[f.name for f in plates[role, name]] or 'no plate'}" for role, name in observed
        )
        raise DataPlateError(
            f"the observed sites share no pyro.plate ({where}), so there is no data point to weigh: every"
            " observation, and every pyro.factor, must belong to one data point, inside `with pyro.plate('data',"
            " len(x)):`. A term of the whole batch (a penalty on parameters) is not part of a per-data-point bound:"
            " add it to the loss yourself."
        )
    plate = next(f for f in plates[observed[0]] if f.name in candidates)
    role, name, site = next((r, n, s) for r, n, s in sites if plate.name not in {f.name for f in plates[r, n]})
    alias = next((f for f in plates[role, name] if (f.dim, f.size) == (plate.dim, plate.size)), None)
    if alias is not None:
        raise DataPlateError(
            f"{role} site {name!r} is in pyro.plate({alias.name!r}), and the observations in"
            f" pyro.plate({plate.name!r}), of the same size {plate.size} at the same dim {plate.dim}: Pyro tells"
            " plates apart by name, so give the model's and the guide's data plate the same name."
        )
    plate = plate.name
    if role == "guide":
        raise DataPlateError(
            f"guide site {name!r} is outside pyro.plate({plate!r}), the plate of the data points. If the guide"
            f" only lacks the plate, sample the site inside `with pyro.plate({plate!r}, ...):` as the model does."
            " Else it couples the data points (as the joint latent of AutoMultivariateNormal or"
            " AutoDiagonalNormal does), so the importance weights cannot be formed per data point: use a guide"
            " that factorizes over data points, an amortized guide (an encoder network) or AutoNormal."
        )
    raise DataPlateError(
        f"model site {name!r} is outside pyro.plate({plate!r}), the plate of the data points: its density is"
        " shared by the whole batch (a global latent), so importance weights cannot be formed per data point"
        " and the IWAE bound or log-likelihood would be a per-batch number. Learn global quantities as"
        " parameters (pyro.param or nn.Parameter), or put the site inside the plate."
    )


def _refuse_a_sequential_data_plate(sites: list) -> None:
    """Where the observed sites share no vectorized plate because they are in a sequential one, say so."""
    frame, name = next(
        (
            (f, name)
            for _, name, site in sites
            if site["is_observed"]
            for f in site["cond_indep_stack"]
            if not f.vectorized
        ),
        (None, None),
    )
    if frame is not None:
        raise DataPlateError(
            f"model site {name!r} is in the sequential plate {frame.name!r} (`for i in pyro.plate(...)`), which"
            " makes a site per data point rather than a batch dimension, so the data points cannot be weighed"
            f" one by one: sample them all at once, in a vectorized plate: `with pyro.plate({frame.name!r},"
            " len(x)):`."
        )


def _sample_sites(*traces: Trace):
    """``(name, site)`` for every sample site with a density (not ``pyro.deterministic``) of ``traces``."""
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and not site["infer"].get("_deterministic"):
                yield name, site


def _is_particles(frame: CondIndepStackFrame) -> bool:
    return frame.vectorized and frame.name in PARTICLE_PLATES


def _data_frames(site: dict) -> list[CondIndepStackFrame]:
    """The site's vectorized plates apart from a particle plate, outermost first."""
    return [f for f in site["cond_indep_stack"] if f.vectorized and not _is_particles(f)]


def _scale(name: str, site: dict) -> float:
    scale = site["scale"]
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise DataPlateError(
                f"site {name!r} has a scale of shape {tuple(scale.shape)}: the IWAE bound needs one scale for"
                " every site (poutine.scale with a number, or a subsampled data plate)."
            )
        scale = scale.item()
    return float(scale)


def _sum_within_data_points(
    name: str, log_prob: torch.Tensor, data_dim: int, particle_dim: int, declared: set[int]
) -> torch.Tensor:
    """
    Sum a site's ``[*batch_shape]`` log-density over every dim but the particles' and the data's. A dim of
    size > 1 left of one of the site's own plates (``declared``) must be one of them: Pyro lets a site's batch
    shape reach into a dim that no plate of its declares and sums over it, but a particle dim can land there
    (an observation outside a nested plate whose parameters come from a latent inside it, transposed or
    reduced without ``keepdim``), and summing it would mix the particles. Right of every plate of the site
    (a batch dim that the data plate at ``dim=-2`` leaves) no plate's dim can land, and the dims are summed.
    """
    ndim = -particle_dim
    if log_prob.dim() > ndim:
        raise DataPlateError(
            f"site {name!r} has batch shape {tuple(log_prob.shape)}, more dims than its plates: declare each"
            " batch dim with a pyro.plate, or move it into the event with .to_event()."
        )
    innermost = max(declared, default=0)  # right of every plate, dims are Pyro's wildcards: summed, as Pyro does
    for dim in range(-log_prob.dim(), innermost):
        if log_prob.shape[dim] > 1 and dim not in declared:
            raise DataPlateError(
                f"site {name!r} has size {log_prob.shape[dim]} at dim {dim} of its batch shape"
                f" {tuple(log_prob.shape)}, a dim that none of its plates declares: a particle dim may have"
                " landed there (from a latent in a plate this site is not in, transposed, or reduced without"
                " keepdim=True). Put the site in a pyro.plate at that dim, or sum that dim into the site's"
                " density yourself (keepdim=True keeps the plates' dims where they are), or make it part of"
                " the event with .to_event()."
            )
    log_prob = log_prob.reshape((1,) * (ndim - log_prob.dim()) + log_prob.shape)
    other_dims = [dim for dim in range(-ndim, 0) if dim not in (particle_dim, data_dim)]
    return log_prob.sum(other_dims) if other_dims else log_prob

"""
Training objectives as Pyro ELBO classes.

- ``"elbo"``: the variational lower bound of Kingma & Welling (2014), estimated with
  ``num_particles`` samples, :class:`pyro.infer.Trace_ELBO`.
- ``"iwae"``: the importance-weighted bound of Burda et al. (2016, eq. 8),
  ``L_k = E[log (1/k) sum_l w_l]``, which is :class:`pyro.infer.RenyiELBO` with
  ``alpha = 0``. It is correct only when every site is in one data plate, so
  :class:`IWAE_ELBO` checks that on every trace it draws
  (:func:`pyro_iwae.data_plate.check_data_plate`).
- ``"iwae-stl"`` and ``"iwae-dreg"``: the same bound, with estimators of its gradient
  whose guide part does not lose its signal as ``k`` grows (:class:`IWAE_STL`,
  :class:`IWAE_DReG`).

All vectorize the particles in a plate at dim -2 (the data plate is dim -1).
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO
from pyro.poutine.util import prune_subsample_sites

from pyro_iwae.data_plate import check_data_plate
from pyro_iwae.evaluation import log_density

OBJECTIVES = ("elbo", "iwae", "iwae-stl", "iwae-dreg")


class IWAE_ELBO(RenyiELBO):
    """
    :class:`pyro.infer.RenyiELBO` with ``alpha = 0``, the IWAE bound, that refuses
    (with :class:`~pyro_iwae.data_plate.DataPlateError`) a model or guide whose
    sites are not all in one un-subsampled data plate, instead of returning a
    per-batch number.
    """

    def __init__(self, num_particles: int = 2, vectorize_particles: bool = True, max_plate_nesting: int = 1) -> None:
        super().__init__(
            alpha=0,
            num_particles=num_particles,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=max_plate_nesting,
        )

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        check_data_plate(model_trace, guide_trace)
        return model_trace, guide_trace


class _PathwiseIWAE(IWAE_ELBO):
    """
    The IWAE bound with a gradient estimator whose guide part flows only through
    the reparameterized samples ``z = z(phi, eps)``; the base of :class:`IWAE_STL`
    and :class:`IWAE_DReG`, which differ only in :attr:`guide_weight_power`.

    With normalized weights ``v_l = w_l / sum_m w_m`` (``[k, batch_size]``, treated
    as constants) the gradient is::

        model parameters theta:  sum_l v_l dlog p(x, z_l)/dtheta           (as IWAE's)
        guide parameters phi:    sum_l v_l^power dlog w_l/dz_l dz_l/dphi    (q's own phi-dependence stopped)

    In one pass: the model is run on detached copies of the samples, so that its
    backward pass gives the model's gradient and ``dlog p/dz``; the guide's backward
    pass then carries ``v^(power - 1) dlog p/dz`` into ``z``, plus
    ``v^power (log q(z) - log q(stop_gradient(z)))``, whose gradient is the part of
    ``dlog q/dphi`` that goes through ``z``. A parameter that both use (a VampPrior's
    encoder) gets both parts.

    ``log q(stop_gradient(z))`` runs the guide a second time, on the detached samples:
    one more pass through a Gaussian guide, but through a flow guide the flows' inverse,
    which Pyro computes for an autoregressive flow one latent dimension at a time (the
    costs measured are in the README).

    ``loss`` is the IWAE bound itself; only ``loss_and_grads`` differs from
    :class:`IWAE_ELBO`. Every latent site of the guide must be reparameterized.
    """

    guide_weight_power: int

    def __init__(self, num_particles: int = 2, vectorize_particles: bool = True, max_plate_nesting: int = 1) -> None:
        if not vectorize_particles:
            raise ValueError(f"{type(self).__name__} always vectorizes its particles")
        super().__init__(num_particles, vectorize_particles, max_plate_nesting)
        self.particle_dim = -(max_plate_nesting + 1)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """
        :returns: the IWAE loss ``-sum_i log (1/k) sum_l w_il``, with the gradient of
            the estimator in ``.grad`` of every parameter.
        """
        with pyro.plate("num_particles_vectorized", self.num_particles, dim=self.particle_dim):
            guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
            latents = _reparameterized_latents(guide_trace)
            # the model sees leaf copies of z: its backward pass stops there, with dlog p/dz in .grad
            boundary = {name: value.detach().requires_grad_() for name, value in latents.items()}
            model_trace = prune_subsample_sites(
                poutine.trace(poutine.condition(model, data=boundary)).get_trace(*args, **kwargs)
            )
            # the guide's density at z held fixed: its gradient is q's own dependence on phi
            fixed_z = {name: value.detach() for name, value in latents.items()}
            fixed_z_trace = prune_subsample_sites(
                poutine.trace(poutine.condition(guide, data=fixed_z)).get_trace(*args, **kwargs)
            )
        data_frame = check_data_plate(model_trace, guide_trace)

        log_p = log_density(model_trace, data_frame, self.num_particles)  # [k, batch_size]
        log_q = log_density(guide_trace, data_frame, self.num_particles)
        log_q_fixed_z = log_density(fixed_z_trace, data_frame, self.num_particles)
        log_weights = (log_p - log_q).detach()
        weights = (log_weights - log_weights.logsumexp(0)).exp()  # v
        guide_weights = weights**self.guide_weight_power
        path_weights = weights ** (self.guide_weight_power - 1)  # not guide_weights / weights: a weight can be 0

        # the model's gradient, and dlog p/dz at the boundary (times -v)
        (-(weights * log_p).sum()).backward()
        # the guide's gradient through z: v^power dlog w/dz dz/dphi
        guide_loss = (guide_weights * (log_q - log_q_fixed_z)).sum()
        for name, value in latents.items():
            if boundary[name].grad is not None:
                scale = path_weights.reshape(weights.shape + (1,) * (value.dim() - weights.dim()))
                guide_loss = guide_loss + (value * (scale * boundary[name].grad)).sum()
        guide_loss.backward()
        return -(log_weights.logsumexp(0) - math.log(self.num_particles)).sum().item()


class IWAE_STL(_PathwiseIWAE):
    """
    The IWAE bound trained with the "sticking the landing" estimator (Roeder et al.,
    2017), extended to k samples: the guide's gradient is
    ``sum_l v_l dlog w_l/dz_l dz_l/dphi``, IWAE's gradient without the score term
    ``-sum_l v_l dlog q(z_l)/dphi``. It has zero variance when ``q`` is the exact
    posterior, but for ``k > 1`` it is **biased**: the dropped term does not have
    zero mean once multiplied by ``v_l`` (Tucker et al., 2019, section 4). The model's
    gradient is IWAE's.
    """

    guide_weight_power = 1


class IWAE_DReG(_PathwiseIWAE):
    """
    The IWAE bound trained with the doubly reparameterized gradient estimator
    (Tucker et al., 2019, eq. 5): the guide's gradient is
    ``sum_l v_l^2 dlog w_l/dz_l dz_l/dphi``, an unbiased estimator of IWAE's guide
    gradient whose signal-to-noise ratio does not vanish as ``k`` grows
    (Rainforth et al., 2018). The model's gradient is IWAE's.
    """

    guide_weight_power = 2


def _reparameterized_latents(guide_trace) -> dict[str, torch.Tensor]:
    """``{name: value}`` of the guide's latent sites; refuses a site that cannot be reparameterized."""
    latents = {}
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            if not site["fn"].has_rsample:
                raise ValueError(
                    f"guide site {name!r} ({type(site['fn']).__name__}) is not reparameterized: iwae-stl and"
                    " iwae-dreg differentiate through the samples; use a reparameterizable distribution or"
                    " the iwae objective"
                )
            latents[name] = site["value"]
    return latents


def make_objective(name: str, num_particles: int) -> ELBO:
    """
    :param name: one of :data:`OBJECTIVES`.
    :param num_particles: the number of samples ``k`` per data point.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    options = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    if name == "elbo":
        return Trace_ELBO(**options)
    if name == "iwae":
        return IWAE_ELBO(**options)
    if name == "iwae-stl":
        return IWAE_STL(**options)
    if name == "iwae-dreg":
        return IWAE_DReG(**options)
    raise ValueError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")

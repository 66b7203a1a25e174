"""
Training objectives as Pyro ELBO classes.

- ``"elbo"``: the variational lower bound of Kingma & Welling (2014), estimated with
  ``num_particles`` samples: :class:`VAE_ELBO`, Pyro's :class:`~pyro.infer.Trace_ELBO`
  refusing the models it would get wrong.
- ``"iwae"``: the importance-weighted bound of Burda et al. (2016, eq. 8),
  ``L_k = sum_i log (1/k) sum_l w_il``, with per-data-point weights however the model
  is written (:mod:`pyro_iwae.importance`): :class:`IWAE_ELBO`. On a model with one
  un-subsampled data plate and reparameterized latents it computes what
  ``RenyiELBO(alpha=0)`` computes, to the bit.
- ``"iwae-stl"`` and ``"iwae-dreg"``: the same bound, with estimators of its gradient
  whose guide part does not lose its signal as ``k`` grows (:class:`IWAE_STL`,
  :class:`IWAE_DReG`).
- ``"miwae"``, ``"ciwae"``, ``"piwae"``: the bounds of Rainforth et al. (2018) that trade some
  of IWAE's tightness for the guide's gradient signal (:class:`MIWAE_ELBO`, :class:`CIWAE_ELBO`,
  :class:`PIWAE_ELBO`).

All vectorize the particles in a plate left of the model's plates; ``max_plate_nesting``
is found from one trace unless given, as in Pyro's ELBOs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites

from pyro_iwae.importance import (
    PYRO_PARTICLE_PLATE,
    DataPlateError,
    ImportanceWeights,
    explain_failure,
    guess_max_plate_nesting,
    importance_weights,
    is_guide_messenger,
    model_only_latents,
)
from pyro_iwae.validation import positive_integer


class _PerDataPointTraces:
    """
    How the objectives here draw their traces, unlike Pyro's ELBOs:

    - Pyro's ELBOs guess ``max_plate_nesting`` on their first call from a trace that draws from
      the random number generators; this guess does not, so an objective's numbers do not depend
      on whether it has guessed yet (a resumed run reproduces an uninterrupted one).
    - Where a draw in the particle plate fails, a model that cannot have per-data-point weights
      (a global latent whose shapes the particle plate broke) is refused by name
      (:func:`~pyro_iwae.importance.explain_failure`), rather than left to a shape error.
    """

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        particle_plate = self.vectorize_particles and self.num_particles > 1
        self.max_plate_nesting = guess_max_plate_nesting(model, guide, *args, **kwargs) + particle_plate

    def _get_traces(self, model, guide, args, kwargs):
        try:
            yield from super()._get_traces(model, guide, args, kwargs)
        except Exception as error:
            explain_failure(error, model, guide, *args, **kwargs)
            raise


class OneBackwardPass:
    """
    A training step that leaves the loss on the device, for an objective whose gradient is one backward
    pass of its :meth:`surrogate_loss`: the objectives here compute the loss as a tensor, and
    :meth:`loss_and_grads` (Pyro's interface) reads it as a float, which makes the host wait for a GPU
    to finish the step; :func:`~pyro_iwae.training.train` calls :meth:`backward` instead.
    """

    def backward(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        """
        :meth:`surrogate_loss` backpropagated into ``.grad`` of every parameter.

        :returns: the loss, a 0-dim tensor without gradient on the parameters' device.
        """
        surrogate_loss, loss = self.surrogate_loss(model, guide, *args, **kwargs)
        if surrogate_loss.requires_grad:
            surrogate_loss.backward()
        return loss.detach()


class VAE_ELBO(_PerDataPointTraces, OneBackwardPass, Trace_ELBO):
    """
    :class:`pyro.infer.Trace_ELBO`, refusing (with :class:`~pyro_iwae.importance.DataPlateError`)
    a model latent that the guide does not sample (``Trace_ELBO`` would add its log-density,
    ``-H[p(u | ...)]`` too much) or a guide variable that the model lacks.

    :meth:`backward` gives ``Trace_ELBO.loss_and_grads``'s gradients (to the bit where every guide site is
    reparameterized: ``tests/test_training.py``); its loss is summed in the model's dtype rather than in
    Python floats.
    """

    #: its name in tables and plots
    label = "VAE"

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        model_only = sorted(model_only_latents(model_trace, guide_trace))
        if model_only:
            raise DataPlateError(
                f"model site {model_only[0]!r} is a latent that the guide does not sample (obs_mask's unobserved"
                " values are one): Trace_ELBO would add its log-density to the ELBO. Sample it in the"
                " guide, or train with make_objective('iwae', k), which leaves it out of the weight"
                " (k = 1 is the ELBO)."
            )
        return model_trace, guide_trace

    def surrogate_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The ELBO of ``num_particles`` particles as ``(surrogate_loss, loss)`` tensors, the first's
        gradient that of ``Trace_ELBO`` (its score-function term included), from the same
        per-data-point weights as the IWAE objectives: the ELBO is MIWAE(k, 1), ``k`` bounds of one
        particle each. Tensors only, no ``.item()``: :mod:`pyro_iwae.compiled` traces it.
        """
        ((model_trace, guide_trace),) = self._get_traces(model, guide, args, kwargs)
        weights = importance_weights(model_trace, guide_trace)
        surrogate_elbo, bound = _surrogate(weights, num_groups=self.num_particles)
        if weights.proposal_log_density is not None:
            # as Trace_ELBO: a site that is not reparameterized gets the score-function term alone, without
            # log w's own -dlog q(z)/dphi at the drawn z, which has mean zero
            surrogate_elbo = surrogate_elbo + weights.proposal_log_density.sum() / self.num_particles
        return -weights.scale * surrogate_elbo, -weights.scale * bound


class IWAE_ELBO(_PerDataPointTraces, OneBackwardPass, ELBO):
    """
    The IWAE bound ``sum_i log (1/k) sum_l w_il`` (Burda et al., 2016, eq. 8), a Pyro ELBO.

    The weights are per data point (:func:`~pyro_iwae.importance.importance_weights`):
    a subsampled data plate's scale ``N / B`` multiplies the bound after the logsumexp,
    a latent that only the model samples is left out of ``w``, and models that cannot
    have per-data-point weights are refused with a :class:`~pyro_iwae.importance.DataPlateError`.

    The gradient is the bound's: ``sum_l v_l dlog w_l`` through reparameterized samples
    (``v_l = w_l / sum_m w_m``), plus, for proposals that cannot be reparameterized (a
    discrete guide site, a discrete model-only latent), the score-function term
    ``sum_l (L - L_{-l}) dlog r(z_l)`` with the leave-one-out baseline of VIMCO
    (Mnih & Rezende, 2016, eq. 9); ``RenyiELBO(alpha=0)`` drops that term.
    """

    #: its name in tables and plots
    label = "IWAE"

    def __init__(
        self, num_particles: int = 2, max_plate_nesting: float = float("inf"), vectorize_particles: bool = True
    ) -> None:
        if not vectorize_particles:
            raise ValueError(f"{type(self).__name__} always vectorizes its particles")
        num_particles = positive_integer("num_particles", num_particles)
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=True)

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def importance_weights(self, model: Callable, guide: Callable, *args, **kwargs) -> ImportanceWeights:
        """The ``[num_particles, batch_size]`` weights of one vectorized draw."""
        ((model_trace, guide_trace),) = self._get_traces(model, guide, args, kwargs)
        return importance_weights(model_trace, guide_trace)

    #: independent bounds averaged, each over its own ``num_particles / num_groups`` particles (MIWAE's M)
    num_groups = 1

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """:returns: ``-L_k``, an estimate of the negative bound."""
        weights = self.importance_weights(model, guide, *args, **kwargs)
        return -weights.scale * _bound(weights.log_weights, self.num_groups)

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """:returns: ``-L_k``, with the gradient of the estimator in ``.grad`` of every parameter."""
        return self.backward(model, guide, *args, **kwargs).item()

    def surrogate_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """
        ``(surrogate_loss, loss)``: a scalar whose gradient is the estimator's, and ``-L_k``.
        Tensors only, no ``.item()``: :mod:`pyro_iwae.compiled` traces it.
        """
        weights = self.importance_weights(model, guide, *args, **kwargs)
        surrogate_elbo, bound = self.surrogate(weights)
        return -weights.scale * surrogate_elbo, -weights.scale * bound

    def surrogate(self, weights: ImportanceWeights, num_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        A surrogate whose gradient is the estimator's, and the bound: the mean of ``num_groups``
        (default :attr:`num_groups`) IWAE bounds over as many equal groups of the particles.
        """
        return _surrogate(weights, self.num_groups if num_groups is None else num_groups)


def _surrogate(weights: ImportanceWeights, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`IWAE_ELBO.surrogate`: scalar tensors, both to be multiplied by ``weights.scale``."""
    log_weights = _grouped(weights.log_weights, num_groups)
    group_size = log_weights.shape[0]
    detached_log_weights = log_weights.detach()
    if group_size == 1:  # ELBOs of one particle each, whose normalized weights are 1: the same numbers, fewer steps
        log_mean_weight, surrogate_elbo = detached_log_weights, log_weights.sum()
    else:
        log_mean_weight = log_mean_exp(detached_log_weights, keepdim=True)
        # RenyiELBO's surrogate, sum_l v_l log w_l, written as it writes it
        normalized_weights = (detached_log_weights - log_mean_weight).exp()
        surrogate_elbo = (normalized_weights * log_weights).sum() / group_size
    if weights.proposal_log_density is not None:
        learning_signal = vimco_learning_signal(detached_log_weights)
        proposal_log_density = _grouped(weights.proposal_log_density, num_groups)
        surrogate_elbo = surrogate_elbo + (learning_signal * proposal_log_density).sum()
    return surrogate_elbo / num_groups, log_mean_weight.sum() / num_groups


def _bound(log_weights: torch.Tensor, num_groups: int) -> float:
    """The mean over ``num_groups`` equal groups of the particles of ``sum_i log (1/K) sum_k w_ik``."""
    log_weights = _grouped(log_weights, num_groups)
    return log_mean_exp(log_weights).sum().item() / num_groups


def log_mean_exp(log_weights: torch.Tensor, dim: int = 0, keepdim: bool = False) -> torch.Tensor:
    """
    ``log (1/k) sum_l exp(log_weights_l)`` over ``dim``, of size ``k``: from ``[k, batch_size]`` log-weights,
    the IWAE bound ``L_k`` of each data point (Burda et al., 2016, eq. 8) on these samples.
    """
    return log_weights.logsumexp(dim, keepdim=keepdim) - math.log(log_weights.shape[dim])


def _grouped(log_weights: torch.Tensor, num_groups: int) -> torch.Tensor:
    """
    ``[num_particles, batch_size]`` terms as ``[K, num_groups * batch_size]``: the ``K = num_particles /
    num_groups`` particles of each group (consecutive particles) in a column of their own.
    """
    if num_groups == 1:
        return log_weights
    group_size = log_weights.shape[0] // num_groups
    return log_weights.reshape(num_groups, group_size, -1).transpose(0, 1).reshape(group_size, -1)


def vimco_learning_signal(log_weights: torch.Tensor) -> torch.Tensor:
    """
    ``L - L_{-l}`` for each particle ``l`` (Mnih & Rezende, 2016, eq. 9): the bound
    ``L = log (1/k) sum_m w_m`` less the bound with ``log w_l`` replaced by the mean of
    the other log-weights, which does not depend on ``z_l``. With one particle, ``L``.

    :param log_weights: ``[k, batch_size]``.
    :returns: ``[k, batch_size]``.
    """
    num_particles = log_weights.shape[0]
    bound = log_mean_exp(log_weights)
    if num_particles == 1:
        return bound.expand_as(log_weights)
    mean_of_others = (log_weights.sum(0) - log_weights) / (num_particles - 1)
    replaced = log_weights.expand(num_particles, *log_weights.shape).clone()  # [l, m, batch_size]
    replaced.diagonal(dim1=0, dim2=1).copy_(mean_of_others.T)
    return bound - log_mean_exp(replaced, dim=1)


class _PathwiseIWAE(IWAE_ELBO):
    """
    The IWAE bound with a gradient estimator whose guide part flows only through
    the reparameterized samples ``z = z(phi, eps)``; the base of :class:`IWAE_STL`
    and :class:`IWAE_DReG` (``power`` 1 and 2 below).

    With normalized weights ``v_l = w_l / sum_m w_m`` (``[k, batch_size]``, treated
    as constants) the gradient is::

        model parameters theta:  sum_l v_l dlog p(x, z_l)/dtheta           (as IWAE's)
        guide parameters phi:    sum_l v_l^power dlog w_l/dz_l dz_l/dphi    (q's own phi-dependence stopped)

    Both need ``log q(stop_gradient(z))``, whose gradient is q's own dependence on phi, so
    that ``log q(z) - log q(stop_gradient(z))`` has the gradient of ``log q`` through ``z``
    only: the guide runs a second time, on the detached samples. That is one more pass
    through a Gaussian guide, but through a flow guide the flows' inverse, which Pyro
    computes for an autoregressive flow one latent dimension at a time (the costs measured
    are in the README). A parameter that both the model and the guide use (a VampPrior's
    encoder) gets both parts.

    ``loss`` is the IWAE bound itself. Every latent site of the guide must be reparameterized.
    """

    def _traces(self, model, guide, args, kwargs, path_values: Callable[[torch.Tensor], torch.Tensor]) -> _Pathwise:
        """
        The guide's trace and its latents ``z``, the model's trace at ``path_values(z)`` and the
        guide's trace at the detached ``z``, all in a particle plate, reduced to :class:`_Pathwise`.
        """
        if is_guide_messenger(guide):
            raise ValueError(
                f"{type(self).__name__} runs the guide again at its own samples with the parameters detached,"
                " which an effect-based guide (AutoNormalMessenger and the other GuideMessengers, which run the"
                " model inside themselves) cannot do: use AutoNormal, or the iwae objective"
                " (make_objective('iwae', k))"
            )
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        # a particle plate even for one particle, left of the model's plates, so that shapes do not depend on k
        particle_dim = -self.max_plate_nesting - (self.num_particles == 1)

        def particles(fn):
            return pyro.plate(PYRO_PARTICLE_PLATE, self.num_particles, dim=particle_dim)(fn)

        def trace_at(fn, values):
            replayed = poutine.replay(particles(fn), trace=_with_values(guide_trace, values))
            return prune_subsample_sites(poutine.trace(replayed).get_trace(*args, **kwargs))

        try:
            guide_trace = poutine.trace(particles(guide)).get_trace(*args, **kwargs)
            latents = _reparameterized_latents(prune_subsample_sites(guide_trace))
            model_values = {name: path_values(value) for name, value in latents.items()}
            model_trace = trace_at(model, model_values)
        except Exception as error:
            explain_failure(error, model, guide, *args, **kwargs)
            raise
        fixed_z_trace = trace_at(guide, {name: value.detach() for name, value in latents.items()})
        weights = importance_weights(model_trace, prune_subsample_sites(guide_trace))
        if weights.proposal_log_density is not None:
            raise ValueError(
                f"{type(self).__name__} differentiates through every sample, but the model samples a latent that"
                " the guide lacks and that cannot be reparameterized: sample it in the guide, or use the iwae"
                " objective (make_objective('iwae', k)), whose score-function term handles it"
            )
        log_weights = (weights.model_log_density - weights.guide_log_density).detach()
        return _Pathwise(
            latents,
            {name: guide_trace.nodes[name]["fn"].event_dim for name in latents},
            particle_dim,
            model_values,
            weights,
            importance_weights(model_trace, fixed_z_trace).guide_log_density,
            (log_weights - log_weights.logsumexp(0)).exp(),
            log_mean_exp(log_weights).sum(),
        )


class _Pathwise(NamedTuple):
    """
    What :meth:`_PathwiseIWAE._traces` gives the estimators.

    :ivar latents: ``{name: z}``, the guide's samples.
    :ivar event_dims: ``{name: event_dim}`` of each latent's distribution.
    :ivar particle_dim: the dim of the particle plate.
    :ivar model_values: ``{name: path_values(z)}``, the values the model was run at.
    :ivar weights: the :class:`~pyro_iwae.importance.ImportanceWeights` of the model's and the guide's traces.
    :ivar log_q_fixed_z: ``[k, batch_size]`` ``log q(stop_gradient(z))``.
    :ivar normalized_weights: ``[k, batch_size]`` normalized weights ``v``, without gradient.
    :ivar bound: ``L_k`` summed over the batch, without gradient and without ``weights.scale``.
    """

    latents: dict[str, torch.Tensor]
    event_dims: dict[str, int]
    particle_dim: int
    model_values: dict[str, torch.Tensor]
    weights: ImportanceWeights
    log_q_fixed_z: torch.Tensor
    normalized_weights: torch.Tensor
    bound: torch.Tensor

    def at_latent(self, name: str, per_data_point: torch.Tensor) -> torch.Tensor:
        """
        ``[k, batch_size]`` values (such as ``v``) reshaped to broadcast with latent ``name``: ``k`` at the
        particle plate's dim and ``batch_size`` at the data plate's, within the latent's batch shape, whatever
        other plates it is in; ones elsewhere and over its event.
        """
        value, event_dim = self.latents[name], self.event_dims[name]
        shape = [1] * (value.dim() - event_dim)
        shape[self.particle_dim], shape[self.weights.data_plate.dim] = per_data_point.shape
        return per_data_point.reshape(shape + [1] * event_dim)


class IWAE_STL(_PathwiseIWAE):
    """
    The IWAE bound trained with the "sticking the landing" estimator (Roeder et al.,
    2017), extended to k samples: the guide's gradient is
    ``sum_l v_l dlog w_l/dz_l dz_l/dphi``, IWAE's gradient without the score term
    ``-sum_l v_l dlog q(z_l)/dphi``. It has zero variance when ``q`` is the exact
    posterior, but for ``k > 1`` it is **biased**: the dropped term does not have
    zero mean once multiplied by ``v_l`` (Tucker et al., 2019, section 4). The model's
    gradient is IWAE's.

    Model and path share the weight ``v``, so one surrogate, one backward pass, gives the
    gradient (and :mod:`pyro_iwae.compiled` can compile it)::

        sum_l v_l (log p(x, z_l) - log q(z_l) + log q(stop_gradient(z_l)))
    """

    #: its name in tables and plots
    label = "IWAE-STL"

    def surrogate_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(surrogate_loss, loss)``: the estimator's surrogate (above) and ``-L_k``, as tensors."""
        pathwise = self._traces(model, guide, args, kwargs, lambda z: z)
        weights = pathwise.weights
        log_p, log_q = weights.model_log_density, weights.guide_log_density  # [k, batch_size]
        surrogate_elbo = (pathwise.normalized_weights * (log_p - log_q + pathwise.log_q_fixed_z)).sum()
        return -weights.scale * surrogate_elbo, -weights.scale * pathwise.bound


class IWAE_DReG(_PathwiseIWAE):
    """
    The IWAE bound trained with the doubly reparameterized gradient estimator
    (Tucker et al., 2019, eq. 5): the guide's gradient is
    ``sum_l v_l^2 dlog w_l/dz_l dz_l/dphi``, an unbiased estimator of IWAE's guide
    gradient whose signal-to-noise ratio does not vanish as ``k`` grows
    (Rainforth et al., 2018). The model's gradient is IWAE's.

    The model's parameters take weight ``v`` and the path through ``z`` weight ``v^2``, so
    the gradient takes two backward passes: the model runs on leaf copies of ``z``, and its
    backward pass gives the model's gradient and ``dlog p/dz`` there; the guide's backward
    pass then carries ``v dlog p/dz`` into ``z``, plus ``v^2 (log q(z) - log q(stop_gradient(z)))``.
    (One surrogate would need ``v`` before the model runs: a second model pass, which costs
    more than the second backward pass.)
    """

    #: its name in tables and plots
    label = "IWAE-DReG"

    def surrogate_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(
            "IWAE_DReG's gradient takes two backward passes (see its docstring), not one surrogate: use backward"
        )

    def backward(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        """
        The gradient of the estimator in ``.grad`` of every parameter.

        :returns: the IWAE loss ``-L_k``, a 0-dim tensor.
        """
        # the model sees leaf copies of z: its backward pass stops there, with dlog p/dz in .grad
        pathwise = self._traces(model, guide, args, kwargs, lambda z: z.detach().requires_grad_())
        weights, v = pathwise.weights, pathwise.normalized_weights
        # the model's gradient, and (scale times -v) dlog p/dz at the boundary
        model_loss = -(weights.scale * (v * weights.model_log_density).sum())
        if model_loss.requires_grad:
            model_loss.backward()
        # the guide's gradient through z: scale v^2 dlog w/dz dz/dphi (the boundary's gradients carry the scale)
        log_q_through_z = weights.guide_log_density - pathwise.log_q_fixed_z
        guide_loss = weights.scale * (v**2 * log_q_through_z).sum()
        for name, value in pathwise.latents.items():
            path_grad = pathwise.model_values[name].grad
            if path_grad is not None:
                guide_loss = guide_loss + (value * (pathwise.at_latent(name, v) * path_grad)).sum()
        if guide_loss.requires_grad:  # a guide with parameters
            guide_loss.backward()
        return -weights.scale * pathwise.bound


class MIWAE_ELBO(IWAE_ELBO):
    """
    MIWAE(M, K) (Rainforth et al., 2018, "Tighter variational bounds are not necessarily better",
    section 5): the average of ``M = num_groups`` independent IWAE bounds of ``K = num_particles``
    particles each, ``(1/M) sum_m log (1/K) sum_k w_mk``, from ``M K`` vectorized particles. Looser
    than the IWAE bound of all ``M K``, but the guide's gradient keeps more of its signal. MIWAE(1, K)
    is IWAE with ``K``; MIWAE(M, 1) is the ELBO with ``M`` particles.
    """

    label = "MIWAE"
    #: its parameters besides those of every ELBO here (:func:`objective_options`)
    options = ("num_groups",)

    def __init__(
        self,
        num_particles: int = 2,
        num_groups: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
    ) -> None:
        num_groups = positive_integer("num_groups", num_groups)
        super().__init__(num_groups * num_particles, max_plate_nesting, vectorize_particles)
        self.num_groups = num_groups


class CIWAE_ELBO(IWAE_ELBO):
    """
    CIWAE(beta) (Rainforth et al., 2018, section 5): ``beta`` times the ELBO plus ``1 - beta`` times
    the IWAE bound, both from the same ``K = num_particles`` particles,
    ``beta (1/K) sum_k log w_k + (1 - beta) log (1/K) sum_k w_k``. ``beta = 1`` is the ELBO, ``beta = 0``
    IWAE. Every latent must be reparameterized.
    """

    label = "CIWAE"
    options = ("beta",)

    def __init__(
        self,
        num_particles: int = 2,
        beta: float = 0.5,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
    ) -> None:
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        super().__init__(num_particles, max_plate_nesting, vectorize_particles)
        self.beta = beta

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """:returns: ``-(beta ELBO + (1 - beta) L_k)``."""
        weights = self.importance_weights(model, guide, *args, **kwargs)
        return -weights.scale * self._combined(weights.log_weights).sum().item()

    def surrogate(self, weights: ImportanceWeights, num_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if weights.proposal_log_density is not None:
            raise ValueError(_needs_reparameterized_latents(self))
        iwae_surrogate, _ = super().surrogate(weights)
        elbo_surrogate = weights.log_weights.mean(0).sum()
        combined = self._combined(weights.log_weights.detach()).sum()
        return self.beta * elbo_surrogate + (1 - self.beta) * iwae_surrogate, combined

    def _combined(self, log_weights: torch.Tensor) -> torch.Tensor:
        """``[batch_size]``: ``beta ELBO + (1 - beta) L_k`` per data point."""
        iwae = log_mean_exp(log_weights)
        return self.beta * log_weights.mean(0) + (1 - self.beta) * iwae


class PIWAE_ELBO(MIWAE_ELBO):
    """
    PIWAE(M, K) (Rainforth et al., 2018, section 5): from the same ``M K`` particles, the model's
    parameters follow the gradient of the IWAE bound of all ``M K`` and the guide's that of MIWAE(M, K)
    (:class:`MIWAE_ELBO`). The parameters are told apart by the trace they appear in (``pyro.module``
    or ``pyro.param`` in the model or in the guide); ``loss`` is the IWAE bound of all ``M K``.
    Every latent must be reparameterized.
    """

    label = "PIWAE"

    def surrogate_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(
            "PIWAE's gradient takes two backward passes (the model's parameters on one bound, the guide's on"
            " another), not one surrogate: use backward"
        )

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """:returns: ``-L_{MK}``."""
        weights = self.importance_weights(model, guide, *args, **kwargs)
        return -weights.scale * _bound(weights.log_weights, num_groups=1)

    def backward(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        """
        IWAE's gradient for the model and MIWAE's for the guide in ``.grad``.

        :returns: ``-L_{MK}``, a 0-dim tensor.
        """
        ((model_trace, guide_trace),) = self._get_traces(model, guide, args, kwargs)
        weights = importance_weights(model_trace, guide_trace)
        if weights.proposal_log_density is not None:
            raise ValueError(_needs_reparameterized_latents(self))
        model_parameters, guide_parameters = _parameters(model_trace), _parameters(guide_trace)
        shared = [name for name in model_parameters if name in guide_parameters]
        if shared:
            raise ValueError(
                f"PIWAE trains the model's and the guide's parameters on different bounds, but {shared[0]!r} is"
                " registered in both (as a VampPrior's encoder is): register each parameter in one of them, or"
                " train with another objective"
            )
        miwae_surrogate, _ = self.surrogate(weights)
        iwae_surrogate, bound = self.surrogate(weights, num_groups=1)
        for surrogate, parameters in ((iwae_surrogate, model_parameters), (miwae_surrogate, guide_parameters)):
            leaves = [p for p in parameters.values() if p.requires_grad]
            if surrogate.requires_grad and leaves:
                grads = torch.autograd.grad(-(weights.scale * surrogate), leaves, retain_graph=True, allow_unused=True)
                for leaf, grad in zip(leaves, grads):
                    if grad is not None:
                        leaf.grad = grad if leaf.grad is None else leaf.grad + grad
        return -weights.scale * bound.detach()


def _parameters(trace: Trace) -> dict[str, torch.Tensor]:
    """``{name: unconstrained leaf tensor}`` of the ``pyro.param`` (and ``pyro.module``) sites of ``trace``."""
    parameters = {}
    for name, site in trace.nodes.items():
        if site["type"] == "param":
            value = site["value"]
            parameters[name] = value.unconstrained() if hasattr(value, "unconstrained") else value
    return parameters


def _needs_reparameterized_latents(objective: ELBO) -> str:
    return (
        f"{type(objective).__name__} needs every latent reparameterized, but the model or guide samples one that"
        " cannot be: use the iwae or miwae objective, whose score-function term handles it"
    )


def _with_values(trace: Trace, values: dict[str, torch.Tensor]) -> Trace:
    """A copy of ``trace`` (subsample sites included) to replay, with ``values`` at those sites."""
    copy = trace.copy()
    for name, value in values.items():
        copy.nodes[name] = {**copy.nodes[name], "value": value}
    return copy


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


#: ``--objective`` choices
OBJECTIVES: dict[str, type[ELBO]] = {
    "elbo": VAE_ELBO,
    "iwae": IWAE_ELBO,
    "iwae-stl": IWAE_STL,
    "iwae-dreg": IWAE_DReG,
    "miwae": MIWAE_ELBO,
    "ciwae": CIWAE_ELBO,
    "piwae": PIWAE_ELBO,
}


def make_objective(name: str, num_particles: int, max_plate_nesting: int | None = None, **options) -> ELBO:
    """
    :param name: one of :data:`OBJECTIVES`.
    :param num_particles: the number of samples ``k`` per data point (per bound, for ``miwae`` and
        ``piwae``), vectorized.
    :param max_plate_nesting: plates nested in the model, data plate included (default:
        found from the first trace).
    :param options: the objective's own parameters: ``num_groups`` (``miwae``, ``piwae``), ``beta`` (``ciwae``).
    """
    positive_integer("num_particles", num_particles)
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    unknown = [key for key in options if key not in objective_options(name)]
    if unknown:
        raise ValueError(f"the {name} objective takes no {unknown[0]}")
    nesting = float("inf") if max_plate_nesting is None else max_plate_nesting
    return OBJECTIVES[name](num_particles=num_particles, max_plate_nesting=nesting, vectorize_particles=True, **options)


def objective_options(name: str) -> tuple[str, ...]:
    """The parameters of objective ``name`` besides those of every ELBO here (``num_groups``, ``beta``)."""
    return getattr(OBJECTIVES[name], "options", ())

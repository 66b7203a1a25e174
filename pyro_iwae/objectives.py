"""
Training objectives as Pyro ELBO classes.

- ``"elbo"``: the variational lower bound of Kingma & Welling (2014), estimated with
  ``num_particles`` samples, :class:`pyro.infer.Trace_ELBO`.
- ``"iwae"``: the importance-weighted bound of Burda et al. (2016, eq. 8),
  ``L_k = E[log (1/k) sum_l w_l]``, which is :class:`pyro.infer.RenyiELBO` with
  ``alpha = 0``. It is correct only when every site is in one data plate, so
  :class:`IWAE_ELBO` checks that on every trace it draws
  (:func:`pyro_iwae.data_plate.check_data_plate`).

Both vectorize the particles in a plate at dim -2 (the data plate is dim -1).
"""

from __future__ import annotations

from pyro.infer import ELBO, RenyiELBO, Trace_ELBO

from pyro_iwae.data_plate import check_data_plate

OBJECTIVES = ("elbo", "iwae")


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


def make_objective(name: str, num_particles: int) -> ELBO:
    """
    :param name: ``"elbo"`` or ``"iwae"``.
    :param num_particles: the number of samples ``k`` per data point.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    options = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    if name == "elbo":
        return Trace_ELBO(**options)
    if name == "iwae":
        return IWAE_ELBO(**options)
    raise ValueError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")

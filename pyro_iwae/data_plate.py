"""
The contract that makes importance weights per data point.

The IWAE bound (Burda et al., 2016, eq. 8) takes a logsumexp over particles of
``log w_il = log p(x_i, z_il) - log q(z_il | x_i)`` separately for each data point
``i``. :class:`pyro.infer.RenyiELBO` and :func:`pyro_iwae.evaluation.log_likelihood`
can only form ``log w_il`` when every sample site lies inside one
``pyro.plate("data", batch_size)``:

- a site outside that plate (a global latent) has one log-density for the whole
  batch, which Pyro silently adds to the batch's summed weight, so the bound
  becomes one per batch instead of one per data point;
- a subsampled or scaled data plate multiplies log-densities *before* the
  logsumexp, which is not the bound either.

:func:`check_data_plate` refuses both instead of returning a wrong number.
"""

from __future__ import annotations

from pyro.distributions.util import is_identically_one
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.trace_struct import Trace

DATA_PLATE = "data"
PARTICLE_PLATE = "particles"
#: particle plates: ours, and the one Pyro's ELBOs add with ``vectorize_particles=True``
PARTICLE_PLATES = (PARTICLE_PLATE, "num_particles_vectorized")


class DataPlateError(ValueError):
    """A model or guide whose sites are not all inside one un-subsampled data plate."""


def check_data_plate(*traces: Trace) -> CondIndepStackFrame:
    """
    Check that every sample site of ``traces`` (a model trace and its guide
    trace, subsample sites pruned) lies in the same ``pyro.plate("data", ...)``,
    the outermost plate apart from a particle plate, neither subsampled nor scaled.

    :returns: the data plate's frame (its ``dim`` and ``size``).
    :raises DataPlateError: naming the first offending site and the fix.
    """
    data_frame = None
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            frames = [f for f in site["cond_indep_stack"] if f.name not in PARTICLE_PLATES]
            frame = next((f for f in frames if f.name == DATA_PLATE), None)
            if frame is None:
                raise DataPlateError(
                    f"sample site {name!r} is outside pyro.plate({DATA_PLATE!r}, batch_size): its log-density is"
                    " shared by the whole batch, so importance weights cannot be formed per data point and the"
                    " IWAE bound or log-likelihood would be a per-batch number. Put every sample site (latents"
                    f" and the observation) inside `with pyro.plate({DATA_PLATE!r}, x.shape[0]):`; learn global"
                    " quantities as parameters (pyro.param or nn.Parameter) instead of latent variables."
                )
            if frame.full_size not in (None, frame.size) or not is_identically_one(site["scale"]):
                raise DataPlateError(
                    f"sample site {name!r} is in a subsampled or scaled data plate (size {frame.size} of"
                    f" {frame.full_size}, scale {site['scale']}): Pyro scales log-weights before the logsumexp,"
                    " which is not the IWAE bound. Pass the minibatch itself and use"
                    f" pyro.plate({DATA_PLATE!r}, x.shape[0]) without subsample_size, subsample or poutine.scale."
                )
            if any(f.dim is not None and f.dim < frame.dim for f in frames):
                raise DataPlateError(
                    f"sample site {name!r} has a plate outside pyro.plate({DATA_PLATE!r}, ...): the data plate"
                    " must be the outermost plate so that each data point has its own weight."
                )
            if data_frame is None:
                data_frame = frame
            elif (frame.dim, frame.size) != (data_frame.dim, data_frame.size):
                raise DataPlateError(
                    f"sample site {name!r} is in a data plate of size {frame.size} at dim {frame.dim}, other"
                    f" sites in one of size {data_frame.size} at dim {data_frame.dim}: use one data plate."
                )
    if data_frame is None:
        raise DataPlateError("the model and guide have no sample sites")
    return data_frame

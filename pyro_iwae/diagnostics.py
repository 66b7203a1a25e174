"""
Diagnostics of gradient estimators: repeated gradient estimates, and their
signal-to-noise ratio (Rainforth et al., 2018, "Tighter variational bounds are not
necessarily better", eq. 3)::

    SNR(theta_j) = |E[g_j]| / std[g_j]

per component ``j`` of the flattened parameters, where ``g`` is one estimate of the
gradient. Used by the tests of the estimators (tests/test_gradient_estimators.py) and by
``benchmarks/gradient_snr.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pyro.infer import ELBO

from pyro_iwae.validation import positive_integer


def gradient_samples(
    objective: ELBO,
    model: Callable,
    guide: Callable,
    *args,
    parameters: Sequence[torch.Tensor],
    num_samples: int,
    **kwargs,
) -> torch.Tensor:
    """
    ``num_samples`` independent estimates of the gradient of ``objective``'s loss with
    respect to ``parameters``, from ``objective.loss_and_grads(model, guide, *args, **kwargs)``.

    The ``.grad`` of each of ``parameters`` is cleared before every estimate (other tensors
    accumulate theirs, as after any ``loss_and_grads``); a parameter the loss does not reach
    contributes zeros. (Pyro's own ELBOs, ``Trace_ELBO`` among them, differentiate only when the
    model or guide has a ``pyro.param`` or ``pyro.module`` site: plain tensors get no gradient.)

    :param parameters: leaf tensors; their gradients are flattened and concatenated in this order.
    :returns: ``[num_samples, num_components]``, one estimate per row, ``num_components`` being
        the sum of ``p.numel()`` over ``parameters``.
    """
    positive_integer("num_samples", num_samples)
    rows = []
    for _ in range(num_samples):
        for p in parameters:
            p.grad = None
        objective.loss_and_grads(model, guide, *args, **kwargs)
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in parameters]))
    return torch.stack(rows)


def signal_to_noise(samples: torch.Tensor) -> torch.Tensor:
    """
    ``|mean| / std`` of each component over the estimates (Rainforth et al., 2018, eq. 3),
    with the sample standard deviation (``n - 1`` in its denominator).

    Components whose estimates never vary (``std == 0``: a gradient that is always zero, such
    as a masked weight of an autoregressive flow) have no ratio and are left out.

    :param samples: ``[num_samples, num_components]`` estimates, as :func:`gradient_samples`
        returns them; ``num_samples >= 2``.
    :returns: ``[num_varying]``, the ratios of the components that vary, in their order.
    """
    if samples.dim() != 2 or samples.shape[0] < 2:
        raise ValueError(
            f"signal_to_noise needs [num_samples >= 2, num_components] samples, got {tuple(samples.shape)}"
        )
    std = samples.std(0)
    varies = std > 0
    return samples.mean(0)[varies].abs() / std[varies]

"""
The conditional distributions of Burda et al. (2016), section 5, as ``nn.Module`` s.

Every stochastic layer is reached through two deterministic tanh layers. A layer
maps its ``[..., in_dim]`` input to the Pyro distribution of the next variable,
with event shape ``[out_dim]``; :class:`~pyro_iwae.models.VAE` samples from it.
That is the whole contract, so a guide layer can be swapped for any module that
keeps it (:class:`IAFLayer`, or a user's own).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from pyro_iwae.fast import BernoulliPixels, DiagonalNormal, Tanh


def tanh_mlp(in_dim: int, hidden_dim: int) -> nn.Sequential:
    """``in_dim -> hidden_dim -> hidden_dim``, tanh after each layer."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), Tanh(), nn.Linear(hidden_dim, hidden_dim), Tanh())


class GaussianLayer(nn.Module):
    """
    ``inputs -> N(loc, diag(scale^2))`` with ``loc, scale = f(inputs)``, ``scale > 0``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.hidden = tanh_mlp(in_dim, hidden_dim)
        self.loc = nn.Linear(hidden_dim, out_dim)
        self.log_scale = nn.Linear(hidden_dim, out_dim)

    def loc_scale(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[..., out_dim]`` loc and scale for ``[..., in_dim]`` inputs."""
        return self.loc_scale_from_hidden(self.hidden(inputs))

    def loc_scale_from_hidden(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(hidden), self.log_scale(hidden).exp()

    def forward(self, inputs: torch.Tensor) -> dist.TorchDistribution:
        return DiagonalNormal(*self.loc_scale(inputs))


class IAFLayer(GaussianLayer):
    """
    A Gaussian followed by ``num_flows`` inverse autoregressive flows (Kingma et al.,
    2016, "Improved variational inference with inverse autoregressive flow"), each
    ``z -> mu(z, h) + sigma(z, h) * z`` with an autoregressive network (MADE) that also
    sees the layer's hidden features ``h`` as context, as in Kingma et al.'s section 4.

    ``log q(z | inputs)`` is exact: the Gaussian's log-density minus the flows'
    log-determinants, which Pyro computes from the values it cached while sampling
    (a value the flows did not produce is inverted, one dimension at a time).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_flows: int = 2) -> None:
        super().__init__(in_dim, hidden_dim, out_dim)
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(out_dim, hidden_dim, hidden_dims=[hidden_dim]) for _ in range(num_flows)
        )

    def forward(self, inputs: torch.Tensor) -> dist.TorchDistribution:
        hidden = self.hidden(inputs)
        base = DiagonalNormal(*self.loc_scale_from_hidden(hidden))
        return dist.TransformedDistribution(base, [flow.condition(hidden) for flow in self.flows])


class BernoulliLayer(nn.Module):
    """
    ``inputs -> BernoulliPixels(logits)`` with ``[..., out_dim]`` logits ``= f(inputs)``.

    :param mean_pixel: optional ``[out_dim]`` data mean; the output bias starts at
        its logit, so an untrained decoder already predicts the average image
        (as in Burda et al.'s code).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, mean_pixel: torch.Tensor | None = None) -> None:
        super().__init__()
        self.hidden = tanh_mlp(in_dim, hidden_dim)
        self.logits = nn.Linear(hidden_dim, out_dim)
        #: whether the output bias was set from ``mean_pixel`` (:func:`glorot_initialize` keeps it then)
        self.bias_from_mean_pixel = mean_pixel is not None
        if mean_pixel is not None:
            with torch.no_grad():
                self.logits.bias.copy_(torch.logit(mean_pixel.clamp(1e-3, 1 - 1e-3)))

    def forward(self, inputs: torch.Tensor) -> BernoulliPixels:
        return BernoulliPixels(self.logits(self.hidden(inputs)))


def glorot_initialize(module: nn.Module) -> None:
    """
    Draw the weights of every ``nn.Linear`` in ``module`` again from Glorot & Bengio's (2010)
    uniform distribution, U(±sqrt(6 / (fan_in + fan_out))), and set its bias to zero, as Burda et
    al.'s code (``nnet.Linear.random``) and Keras initialise them, in place of ``nn.Linear``'s
    own U(±1 / sqrt(fan_in)) for weights and biases. A :class:`BernoulliLayer`'s output bias set
    from the mean pixel keeps it, as in Burda et al.'s code. (Burda's code draws every layer from a
    generator seeded afresh with 123, so layers of one shape start equal; these draws are independent.)
    """
    output_biases = {
        id(m.logits.bias) for m in module.modules() if isinstance(m, BernoulliLayer) and m.bias_from_mean_pixel
    }
    with torch.no_grad():
        for linear in module.modules():
            if isinstance(linear, nn.Linear):
                nn.init.xavier_uniform_(linear.weight)
                if linear.bias is not None and id(linear.bias) not in output_biases:
                    linear.bias.zero_()


def pytorch_initialize(module: nn.Module) -> None:
    """``nn.Linear``'s own initialisation, which the layers already have: nothing to do."""


#: ``name -> function`` that initialises a model's weights in place (``--init``)
INITIALIZATIONS: dict[str, Callable[[nn.Module], None]] = {"pytorch": pytorch_initialize, "glorot": glorot_initialize}
#: the initialisation of a model built and left as it is (``--init``'s default)
DEFAULT_INITIALIZATION = "pytorch"

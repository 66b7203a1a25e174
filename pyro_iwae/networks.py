"""
The conditional distributions of Burda et al. (2016), section 5, as ``nn.Module`` s.

Every stochastic layer is reached through two deterministic tanh layers. A layer
maps its ``[..., in_dim]`` input to the Pyro distribution of the next variable,
with event shape ``[out_dim]``; :class:`~pyro_iwae.models.VAE` samples from it.
That is the whole contract, so a guide layer can be swapped for any module that
keeps it (:class:`IAFLayer`, or a user's own).
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from pyro_iwae.distributions import BernoulliPixels, DiagonalNormal


class Tanh(nn.Module):
    """
    ``tanh(x)``; on the CPU computed as ``2 sigmoid(2x) - 1``, which equals it to
    within 2e-7 in float32. PyTorch's CPU ``tanh`` kernel is slow: on a ``[5000, 200]``
    tensor on the project's machine ``torch.tanh`` takes 1.18 ms and this 0.35 ms
    (``python benchmarks/kernels.py``), and the tanh layers took 10 to 15 % of the
    evaluator's time.
    The backward pass is tanh's own, ``grad * (1 - tanh(x)^2)``. Elsewhere (CUDA)
    it is ``torch.tanh``.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _SigmoidTanh.apply(inputs) if inputs.device.type == "cpu" else torch.tanh(inputs)


class _SigmoidTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor) -> torch.Tensor:
        outputs = torch.sigmoid(2 * inputs).mul_(2).sub_(1)
        ctx.save_for_backward(outputs)
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (outputs,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, outputs)


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
        if mean_pixel is not None:
            with torch.no_grad():
                self.logits.bias.copy_(torch.logit(mean_pixel.clamp(1e-3, 1 - 1e-3)))

    def forward(self, inputs: torch.Tensor) -> BernoulliPixels:
        return BernoulliPixels(self.logits(self.hidden(inputs)))

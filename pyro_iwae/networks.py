"""
The tanh multilayer perceptrons of Burda et al. (2016), section 5.

Every stochastic layer is reached through two deterministic tanh layers; a
Gaussian layer outputs a mean and a positive scale, a Bernoulli layer outputs
logits.
"""

from __future__ import annotations

import torch
from torch import nn


def tanh_mlp(in_dim: int, hidden_dim: int) -> nn.Sequential:
    """``in_dim -> hidden_dim -> hidden_dim``, tanh after each layer."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, hidden_dim), nn.Tanh())


class GaussianLayer(nn.Module):
    """
    Maps ``[..., in_dim]`` inputs to the ``loc`` and ``scale`` (both
    ``[..., out_dim]``, ``scale > 0``) of a diagonal Gaussian.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.hidden = tanh_mlp(in_dim, hidden_dim)
        self.loc = nn.Linear(hidden_dim, out_dim)
        self.log_scale = nn.Linear(hidden_dim, out_dim)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden(inputs)
        return self.loc(hidden), self.log_scale(hidden).exp()


class BernoulliLayer(nn.Module):
    """
    Maps ``[..., in_dim]`` inputs to ``[..., out_dim]`` Bernoulli logits.

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

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(inputs))

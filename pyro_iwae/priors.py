"""
Priors over the top latent layer ``z_L``, as ``nn.Module`` s.

A prior's ``forward()`` returns a Pyro distribution with event shape
``[latent_dim]`` and an empty batch shape (the data plate broadcasts it);
:class:`~pyro_iwae.models.VAE` samples ``z_L`` from it. Any module that keeps this
contract can be passed as ``VAE(..., prior=module)``. Every prior here has an
exact log-density, so the evaluator's ``log p(x)`` stays exact; the mixtures'
is :class:`~pyro_iwae.fast.DiagonalNormalMixture`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_iwae.fast import DiagonalNormal, DiagonalNormalMixture
from pyro_iwae.networks import GaussianLayer


class StandardNormalPrior(nn.Module):
    """``N(0, I)``, the prior of Burda et al. (2016)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)

    def forward(self) -> dist.TorchDistribution:
        return DiagonalNormal(self.loc, torch.ones_like(self.loc))


class LearnedNormalPrior(nn.Module):
    """``N(mu, diag(sigma^2))`` with learned ``mu`` and ``sigma`` (starting at ``N(0, I)``)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return DiagonalNormal(self.loc, self.log_scale.exp())


class MixtureOfGaussiansPrior(nn.Module):
    """
    ``sum_j pi_j N(mu_j, diag(sigma_j^2))`` with learned weights, means and scales.

    The means start as draws from ``N(0, I)`` and the scales at 1, so that the
    components are distinct from the first step.
    """

    def __init__(self, latent_dim: int, num_components: int = 10) -> None:
        super().__init__()
        self.mixture_logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(torch.randn(num_components, latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(num_components, latent_dim))

    def forward(self) -> DiagonalNormalMixture:
        return DiagonalNormalMixture(self.mixture_logits, self.loc, self.log_scale.exp())


class VampPrior(nn.Module):
    """
    The VampPrior (Tomczak & Welling, 2018, "VAE with a VampPrior", eq. 9):
    ``p(z_L) = (1/J) sum_j q(z_L | u_j)``, the guide's Gaussian at ``J`` learned
    pseudo-inputs ``u_j`` (pixel intensities in [0, 1], through a hard tanh as in
    the paper).

    With more than one stochastic layer, ``q(z_L | u)`` is the top guide layer's
    Gaussian at the lower layers' Gaussian means (the hierarchical VampPrior of
    Tomczak & Welling instead conditions ``q(z_L | x)`` on the image directly).
    With a flow guide the components are the top layer's Gaussian before the
    flows. Either way ``p(z_L)`` is a mixture of Gaussians whose log-density is exact.

    :param encoder: the guide's layers from the image upwards, each with a
        ``loc_scale(inputs)`` method (:class:`~pyro_iwae.networks.GaussianLayer`).
        They are held in a tuple, not registered here (no second copy in the state dict): the
        guide registers them, and :meth:`~pyro_iwae.models.VAE.model` too, since p(z) uses them.
    :param init: ``[x_dim]`` intensities the pseudo-inputs start near (the training mean).
    """

    def __init__(self, encoder: Sequence[GaussianLayer], init: torch.Tensor, num_pseudo_inputs: int = 500) -> None:
        super().__init__()
        self.encoder = tuple(encoder)
        self.pseudo_inputs = nn.Parameter(init + 0.01 * torch.randn(num_pseudo_inputs, init.shape[-1]))

    def forward(self) -> DiagonalNormalMixture:
        inputs = F.hardtanh(self.pseudo_inputs, 0.0, 1.0)
        for layer in self.encoder[:-1]:
            inputs, _ = layer.loc_scale(inputs)
        loc, scale = self.encoder[-1].loc_scale(inputs)
        return DiagonalNormalMixture(loc.new_zeros(loc.shape[0]), loc, scale)

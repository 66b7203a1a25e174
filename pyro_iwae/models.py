"""
The generative model and guide of Burda et al. (2016) as Pyro functions.

With ``L`` stochastic layers ``z1`` (next to the image) ... ``zL`` (top)::

    model:  zL ~ N(0, I),  z(l) ~ N(mu(z(l+1)), sigma(z(l+1))),  x ~ Bernoulli(logits(z1))
    guide:  z1 ~ N(mu(x), sigma(x)),  z(l+1) ~ N(mu(z(l)), sigma(z(l)))

Every sample site sits inside one ``pyro.plate("data", batch_size)``, so the
importance weights ``p(x, z) / q(z | x)`` are formed per data point: this is
what :class:`pyro.infer.RenyiELBO` and :func:`pyro_iwae.evaluation.log_likelihood`
need (see :mod:`pyro_iwae.data_plate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_iwae.networks import BernoulliLayer, GaussianLayer

#: ``layers -> (hidden_dims, latent_dims)``, listed from the image upwards (Burda et al., section 5).
ARCHITECTURES = {1: ((200,), (50,)), 2: ((200, 100), (100, 50))}


class VAE(nn.Module):
    """
    A deep latent Gaussian model with a Bernoulli likelihood and its guide.

    :param hidden_dims: width of the two tanh layers in front of each stochastic layer.
    :param latent_dims: size of each stochastic layer, from the image upwards.
    :param mean_pixel: ``[x_dim]`` training-set mean used to initialise the decoder's output bias.
    """

    def __init__(
        self,
        hidden_dims: Sequence[int] = ARCHITECTURES[1][0],
        latent_dims: Sequence[int] = ARCHITECTURES[1][1],
        x_dim: int = 784,
        mean_pixel: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if len(hidden_dims) != len(latent_dims):
            raise ValueError("hidden_dims and latent_dims need one entry per stochastic layer")
        self.latent_dims = tuple(latent_dims)
        below = (x_dim, *latent_dims[:-1])
        # encoder[l]: q(z(l+1) | z(l)), with z0 = x
        self.encoder = nn.ModuleList(GaussianLayer(i, h, o) for i, h, o in zip(below, hidden_dims, latent_dims))
        # decoder_latents[l]: p(z(l+1) | z(l+2))
        self.decoder_latents = nn.ModuleList(
            GaussianLayer(i, h, o) for i, h, o in zip(latent_dims[1:], hidden_dims[1:], latent_dims[:-1])
        )
        self.decoder_pixels = BernoulliLayer(latent_dims[0], hidden_dims[0], x_dim, mean_pixel)

    @property
    def latent_names(self) -> list[str]:
        """Sample site names, from the image upwards: ``["z1", ..., "zL"]``."""
        return [f"z{layer + 1}" for layer in range(len(self.latent_dims))]

    def model(self, x: torch.Tensor) -> None:
        """
        p(x, z) for a ``[batch_size, x_dim]`` batch of binary images.
        """
        pyro.module("decoder_latents", self.decoder_latents)
        pyro.module("decoder_pixels", self.decoder_pixels)
        names = self.latent_names
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(self.latent_dims[-1]), 1.0).to_event(1)
            z = pyro.sample(names[-1], prior)
            for name, layer in zip(reversed(names[:-1]), reversed(self.decoder_latents)):
                z = pyro.sample(name, dist.Normal(*layer(z)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder_pixels(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """
        q(z | x) for a ``[batch_size, x_dim]`` batch of binary images.
        """
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z = x
            for name, layer in zip(self.latent_names, self.encoder):
                z = pyro.sample(name, dist.Normal(*layer(z)).to_event(1))

"""
The generative model and guide of Burda et al. (2016) as Pyro functions.

With ``L`` stochastic layers ``z1`` (next to the image) ... ``zL`` (top)::

    model:  zL ~ prior (N(0, I) in the paper),  z(l) ~ N(mu(z(l+1)), sigma(z(l+1))),  x ~ Bernoulli(logits(z1))
    guide:  z1 ~ q(z1 | x),  z(l+1) ~ q(z(l+1) | z(l))   (diagonal Gaussians in the paper)

The prior (:mod:`pyro_iwae.priors`) and the guide's layers (:mod:`pyro_iwae.networks`)
are modules that return distributions, so they swap without touching the model,
the objectives or the evaluator.

Every sample site sits inside one ``pyro.plate("data", batch_size)``, so the
importance weights ``p(x, z) / q(z | x)`` are formed per data point: this is
what :class:`pyro.infer.RenyiELBO` and :func:`pyro_iwae.evaluation.log_likelihood`
need (see :mod:`pyro_iwae.importance`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import torch
from torch import nn

from pyro_iwae.networks import BernoulliLayer, GaussianLayer, IAFLayer
from pyro_iwae.priors import LearnedNormalPrior, MixtureOfGaussiansPrior, StandardNormalPrior, VampPrior

#: ``layers -> (hidden_dims, latent_dims)``, listed from the image upwards (Burda et al., section 5).
ARCHITECTURES = {1: ((200,), (50,)), 2: ((200, 100), (100, 50))}


#: the prior and the guide of Burda et al.: N(0, I), and a diagonal Gaussian for every stochastic layer
DEFAULT_PRIOR = "normal"
DEFAULT_GUIDE = "normal"
#: ``name -> (latent_dim, encoder, mean_pixel) -> prior module`` (:mod:`pyro_iwae.priors`);
#: :data:`DEFAULT_PRIOR` is Burda et al.'s N(0, I)
PRIORS: dict[str, Callable[[int, Sequence[nn.Module], torch.Tensor], nn.Module]] = {
    "normal": lambda latent_dim, encoder, mean_pixel: StandardNormalPrior(latent_dim),
    "learned-normal": lambda latent_dim, encoder, mean_pixel: LearnedNormalPrior(latent_dim),
    "mog": lambda latent_dim, encoder, mean_pixel: MixtureOfGaussiansPrior(latent_dim),
    "vamp": lambda latent_dim, encoder, mean_pixel: VampPrior(encoder, mean_pixel),
}
#: ``name -> (in_dim, hidden_dim, out_dim) -> guide layer``, one for every stochastic layer
GUIDES: dict[str, Callable[[int, int, int], nn.Module]] = {"normal": GaussianLayer, "iaf": IAFLayer}


class VAE(nn.Module):
    """
    A deep latent Gaussian model with a Bernoulli likelihood and its guide.

    :param hidden_dims: width of the two tanh layers in front of each stochastic layer.
    :param latent_dims: size of each stochastic layer, from the image upwards.
    :param mean_pixel: ``[x_dim]`` training-set mean used to initialise the decoder's output bias
        (and the VampPrior's pseudo-inputs).
    :param prior: one of :data:`PRIORS`, or a module whose ``forward()`` returns the
        distribution of the top latent (event shape ``[latent_dims[-1]]``; see :mod:`pyro_iwae.priors`).
    :param guide: one of :data:`GUIDES`, or a class ``(in_dim, hidden_dim, out_dim) -> module``
        whose ``forward(inputs)`` returns the distribution of the next latent (see :mod:`pyro_iwae.networks`).
    """

    def __init__(
        self,
        hidden_dims: Sequence[int] = ARCHITECTURES[1][0],
        latent_dims: Sequence[int] = ARCHITECTURES[1][1],
        x_dim: int = 784,
        mean_pixel: torch.Tensor | None = None,
        prior: str | nn.Module = DEFAULT_PRIOR,
        guide: str | Callable[[int, int, int], nn.Module] = DEFAULT_GUIDE,
    ) -> None:
        super().__init__()
        if len(hidden_dims) != len(latent_dims):
            raise ValueError("hidden_dims and latent_dims need one entry per stochastic layer")
        for name, table, value in (("prior", PRIORS, prior), ("guide", GUIDES, guide)):
            if isinstance(value, str) and value not in table:
                raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(table)}")
        guide_layer = GUIDES[guide] if isinstance(guide, str) else guide
        self.latent_dims = tuple(latent_dims)
        below = (x_dim, *latent_dims[:-1])
        # encoder[l]: q(z(l+1) | z(l)), with z0 = x
        self.encoder = nn.ModuleList(guide_layer(i, h, o) for i, h, o in zip(below, hidden_dims, latent_dims))
        # decoder_latents[l]: p(z(l+1) | z(l+2))
        self.decoder_latents = nn.ModuleList(
            GaussianLayer(i, h, o) for i, h, o in zip(latent_dims[1:], hidden_dims[1:], latent_dims[:-1])
        )
        self.decoder_pixels = BernoulliLayer(latent_dims[0], hidden_dims[0], x_dim, mean_pixel)
        if isinstance(prior, str):
            init = torch.full((x_dim,), 0.5) if mean_pixel is None else mean_pixel
            prior = PRIORS[prior](latent_dims[-1], self.encoder, init)
        self.prior = prior

    @property
    def latent_names(self) -> list[str]:
        """Sample site names, from the image upwards: ``["z1", ..., "zL"]``."""
        return [f"z{layer + 1}" for layer in range(len(self.latent_dims))]

    def model(self, x: torch.Tensor) -> None:
        """
        p(x, z) for a ``[batch_size, x_dim]`` batch of binary images.
        """
        pyro.module("prior", self.prior)
        if isinstance(self.prior, VampPrior):  # its p(z) runs the guide's encoder, whose weights the model uses too
            pyro.module("encoder", self.encoder)
        pyro.module("decoder_latents", self.decoder_latents)
        pyro.module("decoder_pixels", self.decoder_pixels)
        names = self.latent_names
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(names[-1], self.prior())
            for name, layer in zip(reversed(names[:-1]), reversed(self.decoder_latents)):
                z = pyro.sample(name, layer(z))
            pyro.sample("x", self.decoder_pixels(z), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """
        q(z | x) for a ``[batch_size, x_dim]`` batch of binary images.
        """
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z = x
            for name, layer in zip(self.latent_names, self.encoder):
                z = pyro.sample(name, layer(z))

"""
A linear-Gaussian latent variable model, whose log p(x), posterior and ELBO
have closed forms, and a diagonal Gaussian guide around its exact posterior.

p(z) = N(0, I_d),  p(x | z) = N(W z + b, sigma^2 I_D),  so  p(x) = N(b, W W^T + sigma^2 I).
W has orthogonal columns, so the exact posterior is diagonal:
q*(z | x) = N(S W^T (x - b) / sigma^2, S),  S = (I + W^T W / sigma^2)^-1.
"""

import math

import pyro
import pyro.distributions as dist
import torch


class LinearGaussian:
    def __init__(self, latent_dim=2, x_dim=5, sigma=0.5, seed=0, guide_shift=0.0, guide_scale=1.0):
        generator = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(x_dim, latent_dim, generator=generator, dtype=torch.float64))
        self.W = basis * torch.tensor([2.0, 0.7], dtype=torch.float64)[:latent_dim]
        self.b = torch.randn(x_dim, generator=generator, dtype=torch.float64)
        self.sigma = sigma
        self.guide_shift, self.guide_scale = guide_shift, guide_scale

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.W.shape[1]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def posterior(self, x):
        """loc ``[N, d]`` and scale ``[d]`` of the exact posterior."""
        variance = 1 / (1 + (self.W**2).sum(0) / self.sigma**2)
        return (x - self.b) @ self.W * variance / self.sigma**2, variance.sqrt()

    def guide_params(self, x):
        loc, scale = self.posterior(x)
        return loc + self.guide_shift, scale * self.guide_scale

    def guide(self, x):
        loc, scale = self.guide_params(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def sample_x(self, num_data, seed=1):
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(num_data, self.W.shape[1], generator=generator, dtype=torch.float64)
        return (
            z @ self.W.T
            + self.b
            + self.sigma * torch.randn(num_data, self.W.shape[0], generator=generator, dtype=torch.float64)
        )

    def log_marginal(self, x):
        covariance = self.W @ self.W.T + self.sigma**2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, covariance).log_prob(x)

    def exact_elbo(self, x):
        """log p(x) - KL(q(z | x) || p(z | x)), per data point."""
        loc, scale = self.posterior(x)
        q_loc, q_scale = self.guide_params(x)
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(q_loc, q_scale), torch.distributions.Normal(loc, scale)
        ).sum(-1)
        return self.log_marginal(x) - kl

    def chi_square(self, x):
        """chi^2(p(z | x) || q(z | x)) = Var_q[w / p(x)], per data point (Gaussian integral in closed form)."""
        m1, s1 = self.posterior(x)
        m2, s2 = self.guide_params(x)
        a = 1 / s1**2 - 1 / (2 * s2**2)
        b = m1 / s1**2 - m2 / (2 * s2**2)
        c = m1**2 / s1**2 - m2**2 / (2 * s2**2)
        log_integral = torch.log(s2 / s1**2 / math.sqrt(2 * math.pi)) + 0.5 * torch.log(math.pi / a) + b**2 / a - c
        return log_integral.sum(-1).exp() - 1

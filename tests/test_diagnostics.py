"""gradient_samples and signal_to_noise against hand computations."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_iwae.diagnostics import gradient_samples, signal_to_noise


def test_gradient_samples_are_the_gradients_at_the_draws():
    # p(z) = N(0, I), p(x | z) = N(z + b, I), q(z) = N(loc, I); with z = loc + eps the loss
    # log q(z) - log p(z) - log p(x | z) has gradient 2 z + b - x in loc and sum(z + b - x) in b
    x = torch.tensor([0.4, -0.7], dtype=torch.float64)
    loc = pyro.param("loc", torch.tensor([0.5, -1.0], dtype=torch.float64)).unconstrained()
    b = pyro.param("b", torch.tensor(0.3, dtype=torch.float64)).unconstrained()
    unused = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    draws = []

    def model(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z + pyro.param("b"), 1.0).to_event(1), obs=x)

    def guide(x):
        draws.append(pyro.sample("z", dist.Normal(pyro.param("loc"), 1.0).to_event(1)).detach())

    samples = gradient_samples(Trace_ELBO(), model, guide, x, parameters=[loc, unused, b], num_samples=6)
    z = torch.stack(draws)  # [6, 2]
    assert samples.shape == (6, 2 + 3 + 1)
    assert torch.allclose(samples[:, :2], 2 * z + b - x, rtol=1e-12, atol=1e-12)
    assert torch.equal(samples[:, 2:5], torch.zeros(6, 3))  # a parameter the loss does not reach
    assert torch.allclose(samples[:, 5], (z + b - x).sum(1), rtol=1e-12, atol=1e-12)
    assert z.std(0).min() > 0.1  # six different draws, not one gradient repeated


def test_signal_to_noise_is_mean_over_standard_deviation():
    # columns with sample mean m and sample standard deviation s exactly, then a column that is
    # always zero and one that is constant: neither has a ratio
    standardized = torch.randn(50, 3, dtype=torch.float64)
    standardized = (standardized - standardized.mean(0)) / standardized.std(0)
    mean = torch.tensor([2.0, -0.5, 0.0], dtype=torch.float64)
    std = torch.tensor([4.0, 0.25, 1.0], dtype=torch.float64)
    constant = torch.tensor([0.0, 7.0], dtype=torch.float64).expand(50, 2)
    samples = torch.cat([mean + std * standardized, constant], 1)
    snr = signal_to_noise(samples)
    assert torch.allclose(snr, torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64), atol=1e-12)


def test_signal_to_noise_needs_two_estimates():
    with pytest.raises(ValueError, match="num_samples >= 2"):
        signal_to_noise(torch.ones(1, 4))

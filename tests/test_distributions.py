import itertools
import math

import pytest
import torch

from pyro_iwae.distributions import BernoulliPixels, DiagonalNormal


def test_log_prob_matches_the_bernoulli_formula_in_float64():
    logits = torch.tensor([[-40.0, -3.0, 0.0, 2.5, 40.0]])
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]])
    # log p(x_i) = log sigmoid(+-l_i) = -log(1 + exp(-+l_i)), the sign + where x_i = 1
    sign = 2 * x.double() - 1
    expected = -torch.log1p(torch.exp(-sign * logits.double())).sum(-1)
    assert expected.item() == pytest.approx(-80.0 - 0.0486 - 0.6931 - 0.0789, abs=1e-3)
    assert BernoulliPixels(logits).log_prob(x).item() == pytest.approx(expected.item(), rel=1e-6)


def test_probabilities_of_all_images_sum_to_one():
    logits = torch.tensor([0.3, -1.2, 2.0])
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))
    assert BernoulliPixels(logits).log_prob(images).exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_value_broadcasts_against_particles():
    logits = torch.randn(4, 3, 10)  # [num_particles, batch_size, x_dim]
    x = torch.bernoulli(torch.full((3, 10), 0.5))  # [batch_size, x_dim]
    log_prob = BernoulliPixels(logits).log_prob(x)
    assert log_prob.shape == (4, 3)
    assert torch.allclose(log_prob[2], BernoulliPixels(logits[2]).log_prob(x))


def test_expand_and_sample():
    torch.manual_seed(0)
    d = BernoulliPixels(torch.tensor([-1.0, 0.0, 2.0])).expand((20000,))
    assert d.batch_shape == (20000,) and d.event_shape == (3,)
    samples = d.sample()
    p = torch.sigmoid(torch.tensor([-1.0, 0.0, 2.0]))
    standard_error = (p * (1 - p) / 20000).sqrt()
    assert ((samples.mean(0) - p).abs() < 4 * standard_error).all()
    assert torch.allclose(d.variance[0], p * (1 - p))


def test_validation_rejects_non_binary_images():
    with pytest.raises(ValueError, match="support"):
        BernoulliPixels(torch.zeros(3), validate_args=True).log_prob(torch.tensor([0.0, 0.5, 1.0]))


def test_diagonal_normal_log_prob_matches_the_gaussian_formula_in_float64():
    torch.manual_seed(0)
    loc, scale = torch.randn(3, 4, dtype=torch.float64), torch.rand(3, 4, dtype=torch.float64) + 0.1
    z = torch.randn(5, 3, 4, dtype=torch.float64)  # [num_particles, batch_size, dim]
    by_hand = (-0.5 * ((z - loc) / scale) ** 2 - torch.log(scale * math.sqrt(2 * math.pi))).sum(-1)
    assert torch.allclose(DiagonalNormal(loc, scale).log_prob(z), by_hand, rtol=1e-12)
    # one point by hand: N(0.5; 1, 2) in one dimension
    one = DiagonalNormal(torch.tensor([1.0]), torch.tensor([2.0])).log_prob(torch.tensor([0.5]))
    assert one.item() == pytest.approx(-0.5 * 0.25**2 - math.log(2.0) - 0.5 * math.log(2 * math.pi), rel=1e-6)


def test_diagonal_normal_expand_keeps_the_parameters_and_broadcasts():
    loc, scale = torch.zeros(3, 2), torch.ones(3, 2)
    d = DiagonalNormal(loc, scale).expand((5, 3))
    assert d.batch_shape == (5, 3) and d.event_shape == (2,)
    assert d.loc is loc  # not expanded: the normalizer is formed once per data point
    assert d.mean.shape == (5, 3, 2) and d.rsample().shape == (5, 3, 2)


def test_diagonal_normal_rsample_is_reparameterized_with_the_right_moments():
    torch.manual_seed(0)
    loc = torch.tensor([1.0, -2.0], requires_grad=True)
    scale = torch.tensor([0.5, 3.0], requires_grad=True)
    z = DiagonalNormal(loc, scale).rsample((200000,))
    assert torch.allclose(z.mean(0), loc.detach(), atol=0.03)
    assert torch.allclose(z.std(0), scale.detach(), rtol=0.01)
    z.mean(0).sum().backward()  # d mean / d loc = 1, d mean / d scale = mean(eps) ~ 0
    assert torch.allclose(loc.grad, torch.ones(2)) and scale.grad.abs().max() < 0.01


def test_diagonal_normal_needs_loc_and_scale_of_one_shape():
    with pytest.raises(ValueError, match="one shape"):
        DiagonalNormal(torch.zeros(3, 2), torch.ones(2))

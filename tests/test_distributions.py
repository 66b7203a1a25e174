import itertools

import pytest
import torch

from pyro_iwae.distributions import BernoulliPixels


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

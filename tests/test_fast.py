"""The stand-ins of :mod:`pyro_iwae.fast` compute what the stock pieces they replace compute."""

import itertools
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from pyro_iwae.fast import BernoulliPixels, DiagonalNormal, Tanh


def test_tanh_equals_torch_tanh_in_float32():
    x = torch.linspace(-30, 30, 100001)
    assert (Tanh()(x) - torch.tanh(x)).abs().max() < 2.5e-7
    assert Tanh()(torch.tensor([-100.0, 0.0, 100.0])).tolist() == [-1.0, 0.0, 1.0]


def test_tanh_gradient_is_one_minus_tanh_squared():
    x = torch.randn(50, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Tanh(), (x,))
    Tanh()(x).sum().backward()
    assert torch.allclose(x.grad, 1 - torch.tanh(x.detach()) ** 2, rtol=1e-12)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_tanh_without_autograd(mode):
    x = torch.randn(4, 3)
    with mode():
        assert torch.allclose(Tanh()(x), torch.tanh(x), atol=2.5e-7)


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


# a pass as the evaluator makes one: four 16 MiB tensors alive at once, then freed; the page faults of 20 passes
CHILD = """
import resource, sys, torch
from pyro_iwae.fast import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def one_pass():
    return [torch.ones(4, 2**20) for _ in range(4)]
one_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    one_pass()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, cwd=ROOT, check=True)
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_memory_is_reused_instead_of_faulted_back_in():
    kept = page_faults("keep")
    assert kept < 16384  # less than one pass's 64 MiB faulted in, in all 20 passes
    # by default glibc gives the 64 MiB back after every pass, and each pass faults it in again: 4 KiB a fault
    # (327,000 faults), or about 64 KiB where the kernel maps ahead (20,000); never as few as with the memory kept
    assert page_faults("default") > 2 * kept

import pytest
import torch

from pyro_iwae.networks import Tanh


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

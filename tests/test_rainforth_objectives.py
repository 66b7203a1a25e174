"""
MIWAE, CIWAE and PIWAE (Rainforth et al., 2018): each loss against a hand computation on the same
draws, each gradient against the IWAE and ELBO gradients it is made of, on the same draws.
"""

import math

import pyro
import pytest
import torch
from linear_gaussian import LinearGaussian

from pyro_iwae.models import VAE
from pyro_iwae.objectives import make_objective


@pytest.fixture
def vae_and_images():
    torch.manual_seed(0)
    vae = VAE(hidden_dims=(20,), latent_dims=(3,), x_dim=12)
    return vae, torch.bernoulli(torch.full((4, 12), 0.3))


def gradients(vae, objective, x, seed=1):
    """The loss and ``{name: gradient}`` of one ``loss_and_grads`` from ``seed``."""
    vae.zero_grad()
    pyro.set_rng_seed(seed)
    loss = objective.loss_and_grads(vae.model, vae.guide, x)
    return loss, {name: p.grad.clone() for name, p in vae.named_parameters()}


def log_weights(vae, objective, x, seed=1):
    """``[num_particles, batch_size]`` log-weights of the draws that ``objective`` makes from ``seed``."""
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return objective.importance_weights(vae.model, vae.guide, x).log_weights


def test_miwae_loss_is_the_mean_of_its_groups_iwae_bounds(vae_and_images):
    vae, x = vae_and_images
    miwae = make_objective("miwae", 3, num_groups=4)
    lw = log_weights(vae, miwae, x)
    assert lw.shape == (12, 4)
    # group m holds particles 3m, 3m + 1, 3m + 2
    by_hand = sum(lw[3 * m : 3 * m + 3].logsumexp(0) - math.log(3) for m in range(4)).sum() / 4
    pyro.set_rng_seed(1)
    assert miwae.loss(vae.model, vae.guide, x) == pytest.approx(-by_hand.item(), rel=1e-6)
    loss, grads = gradients(vae, miwae, x)
    assert loss == pytest.approx(-by_hand.item(), rel=1e-6)
    # every latent is reparameterized: the gradient is that of the bound by hand, on the same draws
    vae.zero_grad()
    pyro.set_rng_seed(1)
    lw = miwae.importance_weights(vae.model, vae.guide, x).log_weights
    (-sum(lw[3 * m : 3 * m + 3].logsumexp(0) - math.log(3) for m in range(4)).sum() / 4).backward()
    assert all(torch.allclose(grads[name], p.grad, rtol=1e-5, atol=1e-7) for name, p in vae.named_parameters())
    assert not torch.allclose(
        grads["encoder.0.loc.weight"],
        gradients(vae, make_objective("iwae", 12), x)[1]["encoder.0.loc.weight"],
        rtol=1e-3,
    )  # not IWAE's with all 12 particles


def test_miwae_with_one_group_is_iwae_and_with_one_particle_each_the_elbo(vae_and_images):
    vae, x = vae_and_images
    iwae_loss, iwae_grads = gradients(vae, make_objective("iwae", 6), x)
    one_group_loss, one_group_grads = gradients(vae, make_objective("miwae", 6, num_groups=1), x)
    assert one_group_loss == iwae_loss
    assert all(torch.equal(one_group_grads[name], grad) for name, grad in iwae_grads.items())
    elbo_loss, elbo_grads = gradients(vae, make_objective("elbo", 6), x)
    singles_loss, singles_grads = gradients(vae, make_objective("miwae", 1, num_groups=6), x)
    assert singles_loss == pytest.approx(elbo_loss, rel=1e-6)
    assert all(torch.allclose(singles_grads[name], grad, rtol=1e-4, atol=1e-6) for name, grad in elbo_grads.items())


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_ciwae_is_beta_elbo_plus_one_minus_beta_iwae(vae_and_images, beta):
    vae, x = vae_and_images
    ciwae = make_objective("ciwae", 5, beta=beta)
    lw = log_weights(vae, ciwae, x)
    by_hand = (beta * lw.mean(0) + (1 - beta) * (lw.logsumexp(0) - math.log(5))).sum()
    loss, grads = gradients(vae, ciwae, x)
    assert loss == pytest.approx(-by_hand.item(), rel=1e-6)
    _, elbo_grads = gradients(vae, make_objective("elbo", 5), x)
    _, iwae_grads = gradients(vae, make_objective("iwae", 5), x)
    for name, grad in grads.items():
        expected = beta * elbo_grads[name] + (1 - beta) * iwae_grads[name]
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-6), name


def test_piwae_trains_the_model_on_iwae_and_the_guide_on_miwae(vae_and_images):
    vae, x = vae_and_images
    loss, grads = gradients(vae, make_objective("piwae", 3, num_groups=2), x)
    iwae_loss, iwae_grads = gradients(vae, make_objective("iwae", 6), x)
    _, miwae_grads = gradients(vae, make_objective("miwae", 3, num_groups=2), x)
    assert loss == pytest.approx(iwae_loss, rel=1e-6)
    for name, grad in grads.items():
        expected = miwae_grads[name] if name.startswith("encoder.") else iwae_grads[name]
        assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-7), name
    # the two bounds give the model and the guide different gradients, so the test can tell them apart
    for name in ("encoder.0.loc.weight", "decoder_pixels.logits.weight"):
        assert not torch.allclose(miwae_grads[name], iwae_grads[name], rtol=1e-3), name


def test_piwae_refuses_a_vamp_prior_whose_encoder_belongs_to_model_and_guide():
    """The VampPrior's p(z) runs the guide's encoder: which bound its weights follow would be a guess."""
    vae = VAE(hidden_dims=(20,), latent_dims=(3,), x_dim=12, prior="vamp")
    with pytest.raises(ValueError, match=r"'encoder\$\$\$0.hidden.0.weight' is registered in both"):
        gradients(vae, make_objective("piwae", 3, num_groups=2), torch.bernoulli(torch.full((4, 12), 0.3)))


def test_options_go_to_the_objectives_that_take_them():
    with pytest.raises(ValueError, match="the iwae objective takes no num_groups"):
        make_objective("iwae", 5, num_groups=2)
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\], got 1.5"):
        make_objective("ciwae", 5, beta=1.5)
    with pytest.raises(ValueError, match="num_groups must be a whole number of at least 1, got 0"):
        make_objective("miwae", 5, num_groups=0)
    with pytest.raises(ValueError, match="num_groups must be a whole number of at least 1, got 2.5"):
        make_objective("miwae", 2, num_groups=2.5)  # it named num_particles, got 5.0


@pytest.mark.parametrize(
    "name, particles, options",
    [("miwae", 1, {"num_groups": 20000}), ("ciwae", 20000, {"beta": 1.0})],
)
def test_the_guide_gradient_of_the_elbo_corner_is_the_closed_form(name, particles, options):
    """
    MIWAE(M, 1) and CIWAE(beta = 1) are the ELBO: on a linear-Gaussian model their guide gradient, averaged
    over 20,000 draws in one call, is the gradient of the closed-form ELBO. (PIWAE's guide gradient is
    MIWAE's on the same draws: test_piwae_trains_the_model_on_iwae_and_the_guide_on_miwae.)
    """
    from test_gradient_estimators import LinearGaussianVAE

    vae = LinearGaussianVAE(guide_shift=0.3, guide_scale=1.5)
    x = LinearGaussian().sample_x(3).double()
    (-vae.closed_form_elbo(x).sum()).backward()
    expected = [p.grad.clone() for p in vae.guide_parameters()]
    vae.zero_grad()
    pyro.set_rng_seed(0)
    make_objective(name, particles, **options).loss_and_grads(vae.model, vae.guide, x)
    for estimate, exact in zip([p.grad for p in vae.guide_parameters()], expected):
        torch.testing.assert_close(estimate, exact, rtol=0.03, atol=0.03 * exact.abs().max().item())

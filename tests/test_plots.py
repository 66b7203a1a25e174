import numpy as np
import pyro
import pytest
import torch
from linear_gaussian import LinearGaussian

from pyro_iwae.models import ARCHITECTURES, VAE
from pyro_iwae.plots import image_grid, latent_traversal, log_densities_on_grid, reconstructions, samples


def test_image_grid_places_images_row_by_row():
    images = torch.arange(5).float()[:, None].expand(5, 784) / 4  # image i is filled with i / 4
    grid = image_grid(images, num_columns=2, padding=2)
    assert grid.shape == (3 * 30 + 2, 2 * 30 + 2)
    assert np.all(grid[2:30, 32:60] == 0.25)  # row 0, column 1: image 1
    assert np.all(grid[62:90, 2:30] == 1.0)  # row 2, column 0: image 4
    assert np.all(grid[62:90, 32:60] == 0.15)  # the empty sixth cell is padding


def mlp(layers, inputs):
    """The two tanh layers of a network block (``networks.tanh_mlp``), by hand."""
    return torch.tanh(layers[2](torch.tanh(layers[0](inputs))))


def gaussian(layer, inputs):
    """loc and scale of a ``networks.GaussianLayer``, by hand."""
    hidden = mlp(layer.hidden, inputs)
    return layer.loc(hidden), layer.log_scale(hidden).exp()


def pixel_probabilities(vae, z1):
    """sigmoid of the decoder's logits at ``z1``, by hand."""
    return torch.sigmoid(vae.decoder_pixels.logits(mlp(vae.decoder_pixels.hidden, z1)))


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return VAE(*ARCHITECTURES[2], mean_pixel=torch.full((784,), 0.2))


@torch.no_grad()
def test_reconstructions_are_the_decoder_mean_at_a_draw_from_the_guide(vae):
    x = torch.bernoulli(torch.full((6, 784), 0.2))
    pyro.set_rng_seed(3)
    images = reconstructions(vae.model, vae.guide, x)
    # the same draw by hand: z1 = loc(x) + scale(x) eps, then z2 from z1 (which the pixels do not read)
    pyro.set_rng_seed(3)
    loc, scale = gaussian(vae.encoder[0], x)
    z1 = loc + scale * torch.randn(6, 100)
    assert torch.allclose(images, pixel_probabilities(vae, z1), rtol=0, atol=1e-6)
    assert (images - pixel_probabilities(vae, loc)).abs().max() > 1e-3  # the test tells a draw from the mean


@torch.no_grad()
def test_samples_are_the_decoder_mean_at_a_draw_from_the_prior(vae):
    pyro.set_rng_seed(4)
    images = samples(vae.model, 5)
    # the same draw by hand: z2 ~ N(0, I), then z1 ~ p(z1 | z2)
    pyro.set_rng_seed(4)
    z2 = torch.randn(5, 50)
    loc, scale = gaussian(vae.decoder_latents[0], z2)
    z1 = loc + scale * torch.randn(5, 100)
    assert images.shape == (5, 784)
    assert torch.allclose(images, pixel_probabilities(vae, z1), rtol=0, atol=1e-6)
    assert (images - pixel_probabilities(vae, loc)).abs().max() > 1e-3  # the test tells a draw from the mean


@torch.no_grad()
def test_latent_traversal_moves_one_active_unit_per_row():
    # one layer: E_q[z1 | x] is the guide's loc, so the traversal is a hand computation
    torch.manual_seed(0)
    vae = VAE(mean_pixel=torch.full((784,), 0.2))
    x = torch.bernoulli(torch.full((20, 784), 0.2))
    traversal = latent_traversal(vae.model, vae.guide, x, "z1", num_units=3, num_steps=5)
    means, _ = gaussian(vae.encoder[0], x)  # [20, 50]
    center, spread = means.mean(0), means.std(0)
    units = spread.argsort(descending=True)[:3]  # the three units whose posterior mean varies most
    expected = []
    for unit in units:
        for offset in (-3.0, -1.5, 0.0, 1.5, 3.0):
            z = center.clone()
            z[unit] += offset * spread[unit]
            expected.append(pixel_probabilities(vae, z))
    assert torch.allclose(traversal, torch.stack(expected), rtol=0, atol=1e-6)
    # the rows meet at offset 0 (images 2, 7 and 12, the middle of each row) and differ away from it
    at_center = traversal[[2, 7, 12]]
    assert (at_center - at_center[0]).abs().max() < 1e-6 and (traversal[0] - traversal[5]).abs().max() > 1e-3


def test_the_posterior_on_a_grid_is_the_closed_form_one():
    """Linear-Gaussian model: p(x, z) normalized over a grid is the exact posterior N(loc, scale) there."""
    lg = LinearGaussian(latent_dim=2, guide_shift=0.3)
    x = lg.sample_x(1)
    axis = torch.linspace(-4, 4, 81, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    log_joint, log_q = log_densities_on_grid(lg.model, lg.guide, x, "z", grid)
    loc, scale = lg.posterior(x)
    exact = torch.distributions.Normal(loc[0], scale).log_prob(grid).sum(-1)
    assert torch.allclose(log_joint.softmax(0), exact.softmax(0), atol=1e-10)
    # log p(x, z) itself: log p(x) + log p(z | x), not only up to a constant
    assert torch.allclose(log_joint, lg.log_marginal(x) + exact, atol=1e-8)
    q_loc, q_scale = lg.guide_params(x)
    assert torch.allclose(log_q, torch.distributions.Normal(q_loc[0], q_scale).log_prob(grid).sum(-1), atol=1e-10)


def test_the_posterior_of_one_latent_needs_it_to_be_the_only_one():
    vae = VAE(*ARCHITECTURES[2])
    with pytest.raises(ValueError, match=r"'z1' alone needs it to be the only latent, but \['z2'\]"):
        log_densities_on_grid(vae.model, vae.guide, torch.zeros(1, 784), "z1", torch.zeros(4, 100))

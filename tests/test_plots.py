import numpy as np
import torch

from pyro_iwae.models import VAE
from pyro_iwae.plots import image_grid, latent_traversal, reconstructions, samples


def test_image_grid_places_images_row_by_row():
    images = torch.arange(5).float()[:, None].expand(5, 784) / 4  # image i is filled with i / 4
    grid = image_grid(images, num_columns=2, padding=2)
    assert grid.shape == (3 * 30 + 2, 2 * 30 + 2)
    assert np.all(grid[2:30, 32:60] == 0.25)  # row 0, column 1: image 1
    assert np.all(grid[62:90, 2:30] == 1.0)  # row 2, column 0: image 4
    assert np.all(grid[62:90, 32:60] == 0.15)  # the empty sixth cell is padding


def test_model_pictures_are_pixel_probabilities():
    vae = VAE(mean_pixel=torch.full((784,), 0.2))
    x = torch.bernoulli(torch.full((6, 784), 0.2))
    for images in (reconstructions(vae.model, vae.guide, x), samples(vae.model, 4)):
        assert images.shape[1] == 784 and ((0 <= images) & (images <= 1)).all()
    traversal = latent_traversal(vae.model, vae.guide, x, "z1", num_units=3, num_steps=5)
    assert traversal.shape == (15, 784)

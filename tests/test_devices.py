"""
A run moves between devices, and the evaluator gives the same numbers on any device.

These tests run on ``pytest --device`` (default: the CPU, as in CI); ``pytest --device cuda`` runs them on a GPU.
"""

import contextlib
import io
import warnings

import pytest
import torch

from pyro_iwae.checkpoints import RunDirectory, load_model
from pyro_iwae.evaluation import log_likelihood
from pyro_iwae.models import VAE
from pyro_iwae.objectives import make_objective
from pyro_iwae.training import make_optimizer, train


def binary_images(num=60, seed=0):
    """Three random binary prototypes, each pixel flipped with probability 0.05."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(3, 784, generator=generator).round().repeat(num // 3, 1)
    return (prototypes - (torch.rand(prototypes.shape, generator=generator) < 0.05).float()).abs()


def train_on(device, epochs, run_dir, resume=True):
    torch.manual_seed(0)
    vae = VAE().to(device)
    history = train(
        vae,
        make_objective("iwae", 3),
        binary_images(),
        [1e-3] * epochs,
        dynamic_binarization=False,
        run=RunDirectory(run_dir, {"k": 3, "layers": 1}),
        resume=resume,
        progress=False,
    )
    return vae, history


@contextlib.contextmanager
def warns_if(moves, match):
    """A warning that matches ``match`` if the run ``moves`` to another kind of device, else no warning at all."""
    if moves:
        with pytest.warns(UserWarning, match=match):
            yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_a_cpu_run_goes_on_on_the_device_and_back(tmp_path, device):
    train_on("cpu", 1, tmp_path, resume=False)
    moves = device.type != "cpu"
    with warns_if(moves, "written on a cpu device.*start afresh"):
        vae, history = train_on(device, 2, tmp_path)
    assert next(vae.parameters()).device.type == device.type and len(history) == 2
    with warns_if(moves, f"written on a {device.type} device"):
        _, history = train_on("cpu", 3, tmp_path)
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]
    on_device = load_model(tmp_path, device)
    assert all(p.device.type == device.type for p in on_device.parameters())


def test_a_checkpoint_from_another_kind_of_device_restarts_the_random_streams(tmp_path):
    """On the CPU alone: a checkpoint that says it was written on a GPU (as the GPU's would)."""
    train_on("cpu", 1, tmp_path, resume=False)
    written = (tmp_path / "checkpoint.pt").read_bytes()
    _, stayed = train_on("cpu", 2, tmp_path)  # the checkpoint's own random streams
    state = torch.load(io.BytesIO(written), weights_only=False)
    state["device"], state["data_generator"] = "cuda", torch.zeros(16, dtype=torch.uint8)  # a Philox state
    moved = []
    for _ in range(2):
        torch.save(state, tmp_path / "checkpoint.pt")
        with pytest.warns(UserWarning, match="written on a cuda device and training goes on on a cpu device"):
            vae, history = train_on("cpu", 2, tmp_path)
        moved.append(history[1]["loss"])
    assert moved[0] == moved[1]  # fresh streams from the seed and the epoch: the same each time
    assert moved[0] != stayed[1]["loss"]  # but not the checkpoint's
    # from the seed (0) plus the epochs done (1): the seed alone would draw epoch 1's noise and order again
    torch.save(state, tmp_path / "checkpoint.pt")
    vae, data_generator = VAE(), torch.Generator().manual_seed(0)  # as train seeds it
    with pytest.warns(UserWarning, match="written on a cuda device"):
        RunDirectory(tmp_path, {"k": 3, "layers": 1}).restore(
            vae, make_optimizer(vae.parameters(), lr=1e-3), data_generator
        )
    seed_plus_epochs = torch.Generator().manual_seed(1).get_state()
    assert torch.equal(data_generator.get_state(), seed_plus_epochs)
    assert torch.equal(torch.get_rng_state(), seed_plus_epochs)


def test_the_evaluator_gives_the_cpus_numbers_within_monte_carlo_error(device):
    torch.manual_seed(0)
    vae = VAE()
    x = binary_images(num=90)

    def estimate(on, seed):
        model = VAE().to(on)
        model.load_state_dict(vae.state_dict())
        return log_likelihood(model.model, model.guide, x.to(on), num_particles=500, seed=seed).log_likelihood.cpu()

    cpu, again, there = estimate("cpu", 0), estimate("cpu", 1), estimate(device, 2)
    # the spread of the difference of two CPU estimates: the Monte Carlo error of a mean difference
    standard_error = (again - cpu).std() / len(x) ** 0.5
    assert 0 < standard_error < 0.5
    assert abs((there - cpu).mean()) < 5 * standard_error

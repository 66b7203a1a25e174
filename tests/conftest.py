import os
import sys
from pathlib import Path

# One thread, here and in every script a test starts (set before torch is imported): the tests
# compare runs to the bit, and with several threads MKL's matrix products may add their partial
# sums in an order that depends on which thread finishes first (CI once saw a last-bit difference
# between two runs of one command).
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the tests import the example scripts as the grid does (``from mnist import main``), and the benchmarks' helpers
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(1, str(ROOT / "benchmarks"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default="cpu",
        help="the device that the tests taking the `device` fixture train and evaluate on, e.g. cuda (default: cpu)",
    )


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device of ``pytest --device`` (default: the CPU)."""
    device = torch.device(request.config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("pytest --device cuda, but torch finds no CUDA device")
    return device


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets: $PYRO_IWAE_DATA, else ../shared/data beside the checkout."""
    path = Path(os.environ.get("PYRO_IWAE_DATA") or ROOT.parent / "shared" / "data")
    if not (path / "MNIST").exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the datasets at {path}")
        pytest.skip(f"no datasets at {path}: set PYRO_IWAE_DATA")
    return path


@pytest.fixture(autouse=True)
def fresh_pyro(tmp_path_factory, monkeypatch):
    """
    An empty param store, a fixed seed, Pyro's validation on (whatever an earlier test left: examples/mnist.py
    turns it off), and a private cache directory for every test.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    monkeypatch.setenv("PYRO_IWAE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    with pyro.validation_enabled(True):
        yield

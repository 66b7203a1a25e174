import dataclasses
import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

from pyro_iwae import data
from pyro_iwae.data import DataError, batches, download_file, load_dataset


def write_idx(path, images, magic=0x00000803, count=None):
    header = struct.pack(">IIII", magic, len(images) if count is None else count, 28, 28)
    with gzip.open(path, "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())


def write_amat(path, images):
    path.write_text("".join(" ".join(str(v) for v in row) + "\n" for row in images))


@pytest.fixture
def tiny_sources(monkeypatch):
    """Shrink the expected image counts so that small synthetic files are valid."""
    for name, source in data._SOURCES.items():
        files = {split: (file_name, 3) for split, (file_name, _) in source.files.items()}
        monkeypatch.setitem(data._SOURCES, name, dataclasses.replace(source, files=files))


def use_mirror(monkeypatch, url):
    monkeypatch.setitem(data._SOURCES, "mnist", dataclasses.replace(data._SOURCES["mnist"], mirrors=(url,)))


def make_mnist_dir(root, images):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        write_idx(raw / name, images)
    return raw


def test_idx_images_are_read_as_intensities(tmp_path, tiny_sources):
    images = np.arange(3 * 784).reshape(3, 784) % 256
    make_mnist_dir(tmp_path, images)
    dataset = load_dataset("mnist", tmp_path, download=False)
    assert torch.equal(dataset.train, torch.from_numpy(images / 255).float())
    assert set(dataset.test.unique().tolist()) <= {0.0, 1.0}
    assert dataset.dynamic_binarization


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p, im: write_idx(p, im, magic=0x00000801), "magic number 0x00000801"),
        (lambda p, im: write_idx(p, im, count=5), "holds 5 images"),
        (lambda p, im: p.write_bytes(p.read_bytes()[:-20]), "not a readable gzip file"),
        (lambda p, im: p.write_bytes(b"not gzip at all"), "not a readable gzip file"),
        (lambda p, im: write_idx(p, im[:, :700]), "holds 2100 pixel bytes, expected 2352"),
    ],
)
def test_bad_idx_files_name_the_file(tmp_path, tiny_sources, corrupt, message):
    images = np.zeros((3, 784))
    raw = make_mnist_dir(tmp_path, images)
    corrupt(raw / "t10k-images-idx3-ubyte.gz", images)
    with pytest.raises(DataError, match=message) as error:
        load_dataset("mnist", tmp_path, download=False)
    assert "t10k-images-idx3-ubyte.gz" in str(error.value)


def test_amat_is_parsed_and_cached(tmp_path, tiny_sources):
    images = (np.arange(3 * 784).reshape(3, 784) % 3 == 0).astype(int)
    folder = tmp_path / "BinarizedMNIST"
    folder.mkdir()
    for split in ("train", "test"):
        write_amat(folder / f"binarized_mnist_{split}.amat", images)
    first = load_dataset("binarized-mnist", tmp_path, download=False)
    cached = load_dataset("binarized-mnist", tmp_path, download=False)
    assert torch.equal(first.train, torch.from_numpy(images).float())
    assert torch.equal(cached.train, first.train) and torch.equal(cached.test, first.test)
    assert not first.dynamic_binarization


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[:1] + [rows[1] + " 0"] + rows[2:], "line 2 holds 785 values"),
        (lambda rows: [rows[0].replace("0", "2", 1)] + rows[1:], "values other than 0 and 1"),
        (lambda rows: rows[:2], "holds 2 images, expected 3"),
    ],
)
def test_bad_amat_files_name_the_problem(tmp_path, tiny_sources, edit, message):
    folder = tmp_path / "BinarizedMNIST"
    folder.mkdir()
    rows = [" ".join(["0"] * 784)] * 3
    (folder / "binarized_mnist_train.amat").write_text("\n".join(edit(rows)) + "\n")
    write_amat(folder / "binarized_mnist_test.amat", np.zeros((3, 784), dtype=int))
    with pytest.raises(DataError, match=message) as error:
        load_dataset("binarized-mnist", tmp_path, download=False)
    assert "binarized_mnist_train.amat" in str(error.value)


def test_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
    use_mirror(monkeypatch, "file:///nonexistent/")
    with pytest.raises(DataError) as error:
        load_dataset("mnist", tmp_path / "empty")
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message and "t10k-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "--data-dir" in message and "PYRO_IWAE_DATA" in message and "download failed" in message
    assert not any((tmp_path / "empty").rglob("*.gz"))


def test_download_checks_the_checksum(tmp_path, data_dir):
    source = data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    destination = tmp_path / "MNIST" / "raw" / source.name
    with pytest.raises(DataError, match="checksum mismatch"):
        download_file([source.as_uri()], destination, "0" * 32)
    assert not destination.exists() and not list(destination.parent.iterdir())  # no partial file left
    download_file(["file:///nonexistent/x.gz", source.as_uri()], destination, md5)  # falls back to a mirror
    assert destination.read_bytes() == source.read_bytes()


def test_missing_files_are_downloaded(tmp_path, data_dir, monkeypatch):
    raw = data_dir / "MNIST" / "raw"
    use_mirror(monkeypatch, raw.as_uri() + "/")
    dataset = load_dataset("mnist", tmp_path, test_size=10)
    assert dataset.train.shape == (60000, 784)
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").read_bytes() == (
        raw / "train-images-idx3-ubyte.gz"
    ).read_bytes()


def test_real_datasets_match_their_published_statistics(data_dir):
    # ../shared/README.md: MNIST train pixel mean 33.318 / 255, fixed binarization train mean 0.1306
    mnist = load_dataset("mnist", data_dir)
    assert mnist.train.shape == (60000, 784) and mnist.test.shape == (10000, 784)
    assert mnist.train.mean().item() * 255 == pytest.approx(33.318, abs=1e-3)
    binarized = load_dataset("binarized-mnist", data_dir)
    assert binarized.train.shape == (50000, 784) and binarized.test.shape == (10000, 784)
    assert binarized.train.mean().item() == pytest.approx(0.1306, abs=1e-4)
    fashion = load_dataset("fashion-mnist", data_dir, train_size=100, test_size=50)
    assert fashion.train.shape == (100, 784) and fashion.test.shape == (50, 784)
    assert 0 <= fashion.train.min() and fashion.train.max() <= 1


def test_test_set_is_binarized_once_with_a_fixed_seed(data_dir):
    full = load_dataset("mnist", data_dir, train_size=10).test
    again = load_dataset("mnist", data_dir, train_size=10, test_size=200).test
    assert set(full.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(full[:200], again)
    # a binarization of intensities: mean close to the intensity mean (13.25% ink, +- a few 1e-4)
    assert full.mean().item() == pytest.approx(0.1325, abs=2e-3)


def test_dynamic_binarization_draws_new_pixels_each_time():
    intensities = torch.full((4000, 784), 0.3)
    generator = torch.Generator().manual_seed(0)
    first = torch.cat(list(batches(intensities, 1000, generator, dynamic_binarization=True)))
    second = torch.cat(list(batches(intensities, 1000, generator, dynamic_binarization=True)))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert first.mean().item() == pytest.approx(0.3, abs=3e-3)  # sd of the mean: 0.46 / sqrt(3.1e6)
    assert not torch.equal(first, second)
    fixed = list(batches(intensities, 1000, generator, dynamic_binarization=False))
    assert [b.shape[0] for b in fixed] == [1000] * 4 and torch.equal(torch.cat(fixed), intensities)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    assert str(data.resolve_data_dir()) == "data"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert data.resolve_data_dir() == tmp_path
    assert str(data.resolve_data_dir("elsewhere")) == "elsewhere"

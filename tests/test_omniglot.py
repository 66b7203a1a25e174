"""Omniglot: Burda et al.'s chardata.mat, read from small files written in its layout (the real one is not needed)."""

import dataclasses
import gzip
import struct
import urllib.error

import numpy as np
import pytest
import scipy.io
import torch
from mnist import parser as mnist_parser

from pyro_iwae import data
from pyro_iwae.data import DataError, download_file, file_checksum, load_dataset
from pyro_iwae.experiments.config import ConfigError, RunConfig

NUM_TRAIN, NUM_TEST = 3, 2  # unequal, so that mixing the splits up fails


def to_chardata(images):
    """``[n, 784]`` row-major images -> chardata.mat's ``[784, n]``: one image a column, each column-major."""
    return images.reshape(-1, 28, 28).transpose(0, 2, 1).reshape(-1, 784).T


def write_chardata(path, train, test, **variables):
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"data": to_chardata(train), "testdata": to_chardata(test), **variables})


def positions(num_images, offset=0):
    """Intensities in [0, 1) that encode (image, row, column): any other pixel order reads different values."""
    return (offset + np.arange(num_images * 784)).reshape(num_images, 784) / 10_000


def expect_tiny(monkeypatch, name):
    """Make dataset ``name`` expect NUM_TRAIN / NUM_TEST images, so that small files are valid."""
    source = data._SOURCES[name]
    files = {"train": (source.files["train"][0], NUM_TRAIN), "test": (source.files["test"][0], NUM_TEST)}
    monkeypatch.setitem(data._SOURCES, name, dataclasses.replace(source, files=files))


@pytest.fixture
def tiny_omniglot(monkeypatch):
    expect_tiny(monkeypatch, "omniglot")


def test_the_reader_undoes_matlabs_column_major_order(tmp_path, tiny_omniglot):
    train, test = positions(NUM_TRAIN), positions(NUM_TEST, offset=NUM_TRAIN * 784)
    path = tmp_path / "OMNIGLOT" / "chardata.mat"
    write_chardata(path, train, test)
    # Burda et al.'s datasets.py reads the file so: our layout is theirs
    raw = scipy.io.loadmat(path)
    burda = raw["data"].T.reshape((-1, 28, 28)).reshape((-1, 28 * 28), order="F")
    np.testing.assert_array_equal(burda, train)
    dataset = load_dataset("omniglot", tmp_path, download=False)
    assert torch.equal(dataset.train, torch.from_numpy(train).float())
    assert dataset.test.shape == (NUM_TEST, 784)
    # the test images are the binarization of "testdata", not of "data"
    assert torch.equal(dataset.test, data.binarize(torch.from_numpy(test).float()))


def test_omniglot_loads_as_mnist_does(tmp_path, tiny_omniglot, monkeypatch):
    """The same intensities give the same Dataset: same types, shapes, values, the same fixed test binarization."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(NUM_TRAIN, 784), dtype=np.uint8)
    intensities = pixels / np.float32(255)  # float32, as torch divides MNIST's bytes
    write_chardata(tmp_path / "OMNIGLOT" / "chardata.mat", intensities, intensities[:NUM_TEST])
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, images in (("train-images-idx3-ubyte.gz", pixels), ("t10k-images-idx3-ubyte.gz", pixels[:NUM_TEST])):
        with gzip.open(raw / name, "wb") as f:
            f.write(struct.pack(">IIII", 0x00000803, len(images), 28, 28) + images.tobytes())
    expect_tiny(monkeypatch, "mnist")
    expected = load_dataset("mnist", tmp_path, download=False)
    omniglot = load_dataset("omniglot", tmp_path, download=False)
    assert type(omniglot) is type(expected) and omniglot.name == "omniglot" and omniglot.dynamic_binarization
    for actual, wanted in ((omniglot.train, expected.train), (omniglot.test, expected.test)):
        assert actual.dtype == wanted.dtype == torch.float32 and torch.equal(actual, wanted)
    assert 0 <= omniglot.train.min() and omniglot.train.max() <= 1
    assert set(omniglot.test.unique().tolist()) <= {0.0, 1.0}
    sliced = load_dataset("omniglot", tmp_path, train_size=2, test_size=1, download=False)
    assert torch.equal(sliced.train, omniglot.train[:2]) and torch.equal(sliced.test, omniglot.test[:1])


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: write_chardata(p, positions(NUM_TRAIN + 1), positions(NUM_TEST)), r"shape \(784, 4\)"),
        (lambda p: scipy.io.savemat(p, {"data": np.zeros((784 // 2, NUM_TRAIN))}), r"shape \(392, 3\)"),
        (lambda p: scipy.io.savemat(p, {"images": np.zeros((784, NUM_TRAIN))}), "holds no variable 'data'"),
        (lambda p: write_chardata(p, 255 * positions(NUM_TRAIN), positions(NUM_TEST)), "expected intensities in"),
        (lambda p: p.write_bytes(b"<!DOCTYPE html><html>Not Found</html>" * 10), "not a readable .mat file"),
    ],
)
def test_a_wrong_file_is_refused(tmp_path, tiny_omniglot, write, message):
    path = tmp_path / "OMNIGLOT" / "chardata.mat"
    path.parent.mkdir()
    write(path)
    with pytest.raises(DataError, match=message) as error:
        load_dataset("omniglot", tmp_path, download=False)
    assert str(path) in str(error.value)


def test_missing_file_names_the_url_and_the_place(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as error:
        load_dataset("omniglot", tmp_path)
    message = str(error.value)
    url = "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat"
    assert message.count("chardata.mat: no network") == 1  # one file for both splits, tried once
    assert f"download failed: {url}" in message and f"by hand ({url})" in message
    assert str(tmp_path / "OMNIGLOT") in message and "--data-dir" in message and "PYRO_IWAE_DATA" in message
    assert not (tmp_path / "OMNIGLOT" / "chardata.mat").exists()


def test_git_blob_checksum_is_gits_object_id(tmp_path):
    # yburda/iwae's tree lists datasets/OMNIGLOT/README, 40 bytes, as blob 13c48a39...: the id that
    # checks chardata.mat is computed the same way
    readme = tmp_path / "README"
    readme.write_bytes(b"Directory for the OMNIGLOT 28x28 dataset")
    with readme.open("rb") as f:
        assert file_checksum(f, "git-blob-sha1") == "13c48a39df24b1f09a9a467faf83ceb009eccb1a"
    destination = tmp_path / "copy" / "README"
    with pytest.raises(DataError, match="checksum mismatch.*git-blob-sha1 13c48a39"):
        download_file([readme.as_uri()], destination, "0" * 40, "git-blob-sha1")
    assert not destination.exists()
    download_file([readme.as_uri()], destination, "13c48a39df24b1f09a9a467faf83ceb009eccb1a", "git-blob-sha1")
    assert destination.read_bytes() == readme.read_bytes()


def test_the_flags_accept_omniglot():
    config = RunConfig.from_args(mnist_parser().parse_args(["--dataset", "omniglot"]))
    assert config.dataset == "omniglot" and str(config.directory) == "runs/omniglot-iwae-k5-1layer"
    assert (data.num_images("omniglot", "train"), data.num_images("omniglot", "test")) == (24345, 8070)
    with pytest.raises(ConfigError, match="more than the 24345 training images"):
        RunConfig(dataset="omniglot", batch_size=24346)

"""
MNIST, Fashion-MNIST, the fixed binarization of MNIST and Omniglot, read without torchvision.

Files are looked up in torchvision's on-disk layout under a data directory (Omniglot in
Burda et al.'s, ``datasets/OMNIGLOT/chardata.mat`` in their repository)::

    <data_dir>/MNIST/raw/{train-images-idx3-ubyte,t10k-images-idx3-ubyte}.gz
    <data_dir>/FashionMNIST/raw/{train-images-idx3-ubyte,t10k-images-idx3-ubyte}.gz
    <data_dir>/BinarizedMNIST/binarized_mnist_{train,valid,test}.amat
    <data_dir>/OMNIGLOT/chardata.mat

Grey-scale datasets are binarized *dynamically* for training (each pixel is drawn
as Bernoulli(intensity) every time an image is served, as in Burda et al., 2016)
and *once*, with a fixed seed, for testing, so that every model is scored on the
same binary images.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_iwae.atomic import atomic_open

DATA_DIR_ENV = "PYRO_IWAE_DATA"
CACHE_DIR_ENV = "PYRO_IWAE_CACHE"
IMAGE_SIZE = 784
TEST_BINARIZATION_SEED = 0

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
#: the variable of ``chardata.mat`` that holds each split, as Burda et al.'s ``datasets.py`` reads it
CHARDATA_VARIABLES = {"train": "data", "test": "testdata"}
#: how each checksum algorithm hashes a file of ``size`` bytes: a hashlib object to feed its contents to
CHECKSUMS = {
    "md5": lambda size: hashlib.md5(),
    # git's object id of a file (``git hash-object``), as a repository's tree records it
    "git-blob-sha1": lambda size: hashlib.sha1(b"blob %d\0" % size),
}


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or not what it claims to be."""


@dataclass(frozen=True)
class _Source:
    folder: str  # relative to the data directory
    files: dict[str, tuple[str, int]]  # split -> (file name, number of images)
    checksums: dict[str, str]  # file name -> checksum of the published file
    mirrors: tuple[str, ...]
    dynamic_binarization: bool
    format: str  # "idx" (gzipped idx3-ubyte), "amat" (Larochelle & Murray's text) or "chardata" (Burda's .mat)
    checksum: str = "md5"  # the algorithm of ``checksums``: a key of CHECKSUMS


_SOURCES = {
    "mnist": _Source(
        folder="MNIST/raw",
        files={
            "train": ("train-images-idx3-ubyte.gz", 60000),
            "test": ("t10k-images-idx3-ubyte.gz", 10000),
        },
        checksums={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        dynamic_binarization=True,
        format="idx",
    ),
    "fashion-mnist": _Source(
        folder="FashionMNIST/raw",
        files={
            "train": ("train-images-idx3-ubyte.gz", 60000),
            "test": ("t10k-images-idx3-ubyte.gz", 10000),
        },
        checksums={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        dynamic_binarization=True,
        format="idx",
    ),
    "binarized-mnist": _Source(
        folder="BinarizedMNIST",
        files={
            "train": ("binarized_mnist_train.amat", 50000),
            "test": ("binarized_mnist_test.amat", 10000),
        },
        checksums={
            "binarized_mnist_train.amat": "db28b1a6ae0fe70cbd3da91acf46e477",
            "binarized_mnist_test.amat": "14e41ae11040adba6ab8cb291eda0dd8",
        },
        mirrors=("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",),
        dynamic_binarization=False,
        format="amat",
    ),
    # Burda et al.'s 28x28 Omniglot; see _read_chardata for what was taken from their code
    "omniglot": _Source(
        folder="OMNIGLOT",
        files={"train": ("chardata.mat", 24345), "test": ("chardata.mat", 8070)},
        # the blob of datasets/OMNIGLOT/chardata.mat in the tree of yburda/iwae's master (commit 78a6075)
        checksums={"chardata.mat": "016a3536ffe5e1d38e42563a18d7a78bfaf643ec"},
        mirrors=("https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/",),
        dynamic_binarization=True,
        format="chardata",
        checksum="git-blob-sha1",
    ),
}
DATASETS = tuple(_SOURCES)


@dataclass
class Dataset:
    """
    A train/test pair of flattened 28x28 images.

    :ivar train: ``[num_train, 784]`` float32 grey-scale intensities in [0, 1]
        (binary already when ``dynamic_binarization`` is False).
    :ivar test: ``[num_test, 784]`` float32 binary images, fixed once.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    dynamic_binarization: bool


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$PYRO_IWAE_DATA``, else ``./data``."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or "data")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    download: bool = True,
) -> Dataset:
    """
    Load a dataset, downloading missing files where the network allows.

    :param name: one of :data:`DATASETS`.
    :param train_size: keep the first ``train_size`` training images (all if None).
    :param test_size: keep the first ``test_size`` test images (all if None). The
        test set is binarized before slicing, so image ``i`` is the same binary
        image whatever ``test_size`` is.
    """
    if name not in _SOURCES:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    source = _SOURCES[name]
    folder = resolve_data_dir(data_dir) / source.folder
    _ensure_files(source, folder, download)
    train, test = (_read_split(source, folder, split) for split in ("train", "test"))
    for split, size, images in (("train", train_size, train), ("test", test_size, test)):
        if size is not None and size > images.shape[0]:
            raise DataError(
                f"--{split}-size {size} is more than the {images.shape[0]:,} {split} images of {name}:"
                f" ask for at most {images.shape[0]}, or leave it out to use them all"
            )
    if source.dynamic_binarization:
        test = binarize(test)
    return Dataset(name, train[:train_size], test[:test_size], source.dynamic_binarization)


def num_images(name: str, split: str) -> int:
    """The number of ``split`` (``"train"`` or ``"test"``) images of dataset ``name``."""
    return _SOURCES[name].files[split][1]


def binarize(images: torch.Tensor, seed: int = TEST_BINARIZATION_SEED) -> torch.Tensor:
    """
    Draw every pixel once as Bernoulli(intensity) with a generator seeded with ``seed``:
    the same binary images at every call. This is how :func:`load_dataset` fixes the test set;
    binarize the whole of a split and slice it afterwards, so that image ``i`` does not depend on
    how many images are kept.

    :param images: ``[num_images, 784]`` intensities in [0, 1] on the CPU.
    """
    return torch.bernoulli(images, generator=torch.Generator().manual_seed(seed))


def batches(
    images: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    dynamic_binarization: bool,
) -> Iterator[torch.Tensor]:
    """
    Yield shuffled ``[batch_size, 784]`` batches (the last may be smaller), each
    binarized afresh when ``dynamic_binarization`` is True, on the device of ``images``
    with ``generator``, which must be on that device.
    """
    order = torch.randperm(images.shape[0], generator=generator, device=images.device)
    for index in order.split(batch_size):
        batch = images[index]
        if dynamic_binarization:
            batch = torch.bernoulli(batch, generator=generator)
        yield batch


def _read_split(source: _Source, folder: Path, split: str) -> torch.Tensor:
    """
    The ``split`` images of ``source`` as a ``[num_images, 784]`` float32 tensor of
    intensities in [0, 1] (binary already when ``source.dynamic_binarization`` is False).
    """
    file_name, num_images = source.files[split]
    path = folder / file_name
    if source.format == "idx":
        return torch.from_numpy(_read_idx_images(path, num_images)).float().div_(255)
    if source.format == "amat":
        return torch.from_numpy(_read_amat_cached(path, num_images)).float()
    return torch.from_numpy(_read_chardata(path, CHARDATA_VARIABLES[split], num_images))


def _ensure_files(source: _Source, folder: Path, download: bool) -> None:
    missing = list(dict.fromkeys(name for name, _ in source.files.values() if not (folder / name).exists()))
    if not missing:
        return
    failure = ""
    if download:
        try:
            for file_name in missing:
                urls = [mirror + file_name for mirror in source.mirrors]
                download_file(urls, folder / file_name, source.checksums[file_name], source.checksum)
            return
        except DataError as error:
            failure = f" (download failed: {error})"
    raise DataError(
        f"missing dataset files in {folder}: {', '.join(missing)}{failure}. Download them by hand"
        f" ({', '.join(source.mirrors[0] + name for name in missing)}) and put them there, or point"
        f" data_dir= (--data-dir) or ${DATA_DIR_ENV} at a directory holding {source.folder}/."
    )


def download_file(urls: list[str], destination: Path, checksum: str, algorithm: str = "md5") -> None:
    """
    Download the first of ``urls`` that answers into ``destination``, with a
    progress bar. The file only appears once its checksum equals ``checksum``:
    an interrupted or corrupt download leaves nothing behind.

    :param algorithm: a key of :data:`CHECKSUMS`: ``"md5"``, or ``"git-blob-sha1"``
        for a file whose only published checksum is its git object id.
    """
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with (
                    atomic_open(destination, "w+b") as f,
                    tqdm(total=total, unit="B", unit_scale=True, desc=destination.name) as bar,
                ):
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
                    actual = file_checksum(f, algorithm)
                    if actual != checksum:
                        raise DataError(f"checksum mismatch for {url}: {algorithm} {actual}, expected {checksum}")
            return
        except OSError as error:  # URLError is an OSError
            errors.append(f"{url}: {getattr(error, 'reason', error)}")
    raise DataError("; ".join(errors))


def file_checksum(f: IO[bytes], algorithm: str = "md5") -> str:
    """The ``algorithm`` (a key of :data:`CHECKSUMS`) checksum of the whole of ``f``, open for reading."""
    digest = CHECKSUMS[algorithm](f.seek(0, os.SEEK_END))
    f.seek(0)
    while chunk := f.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _read_idx_images(path: Path, num_images: int) -> np.ndarray:
    """Read a gzipped idx3-ubyte file into a ``[num_images, 784]`` uint8 array."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is not a readable gzip file ({error}); delete it and download it again") from error
    if len(raw) < 16:
        raise DataError(f"{path} is too short to be an idx file")
    magic, count, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    if magic != IDX_IMAGES_MAGIC:
        raise DataError(f"{path} has idx magic number {magic:#010x}, expected {IDX_IMAGES_MAGIC:#010x} (images)")
    if (rows, cols) != (28, 28) or count != num_images:
        raise DataError(f"{path} holds {count} images of {rows}x{cols}, expected {num_images} of 28x28")
    if len(raw) != 16 + count * rows * cols:
        raise DataError(f"{path} holds {len(raw) - 16} pixel bytes, expected {count * rows * cols}")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, IMAGE_SIZE).copy()


def _read_amat(path: Path, num_images: int) -> np.ndarray:
    """
    Parse a Larochelle & Murray ``.amat`` file (one image a line, 784 values
    ``0``/``1`` separated by white space) into a ``[num_images, 784]`` uint8 array.
    """
    chars = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    is_space = chars <= ord(" ")  # space, tab, CR, LF
    values = chars[~is_space] - ord("0")
    if values.size and values.max() > 1:
        raise DataError(f"{path} holds values other than 0 and 1")
    line_of_value = np.cumsum(chars == ord("\n"))[~is_space]
    values_per_line = np.bincount(line_of_value)
    bad_lines = np.flatnonzero((values_per_line != 0) & (values_per_line != IMAGE_SIZE))
    if bad_lines.size:
        raise DataError(
            f"{path} line {bad_lines[0] + 1} holds {values_per_line[bad_lines[0]]} values,"
            f" expected {IMAGE_SIZE} (one 28x28 image a line)"
        )
    if np.count_nonzero(values_per_line) != num_images:
        raise DataError(f"{path} holds {np.count_nonzero(values_per_line)} images, expected {num_images}")
    return values.reshape(num_images, IMAGE_SIZE)


def _read_amat_cached(path: Path, num_images: int) -> np.ndarray:
    """:func:`_read_amat`, cached as packed bits under ``$PYRO_IWAE_CACHE`` (default ``~/.cache/pyro-iwae``)."""
    stat = path.stat()
    cache_dir = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "pyro-iwae")
    cache = cache_dir / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}.npy"
    if cache.exists():
        return np.unpackbits(np.load(cache), axis=1, count=IMAGE_SIZE)
    images = _read_amat(path, num_images)
    with atomic_open(cache) as f:
        np.save(f, np.packbits(images, axis=1))
    return images


def _read_chardata(path: Path, variable: str, num_images: int) -> np.ndarray:
    """
    Read one split of Burda et al.'s 28x28 Omniglot, ``chardata.mat``, into a
    ``[num_images, 784]`` float32 array of grey-scale intensities in [0, 1], each
    image a row of 28 pixels after another as in MNIST.

    What this takes from ``datasets.py`` of https://github.com/yburda/iwae
    (``binarized_shuffled_omniglot``, unchanged up to commit 78a6075 of master): the file is
    ``datasets/OMNIGLOT/chardata.mat`` of that repository (its README: "We used a
    version of the dataset resized to 28x28 pixels available in this repository"),
    read with ``scipy.io.loadmat``; ``variable`` is ``"data"`` (training) or
    ``"testdata"`` (test), a ``[784, num_images]`` matrix, one image a column,
    each stored a column of pixels after another (MATLAB's order), so Burda reads
    ``x.T.reshape((-1, 28, 28)).reshape((-1, 784), order="fortran")``; the values
    are intensities that are binarized dynamically (``BinarizedDatasetTheano``
    draws ``uniform <= x`` for every minibatch), as MNIST here. Burda's code also
    shuffles the 24,345 training images (seed 123) and keeps the last 1,345 for
    validation; here all of them are trained on, as all of MNIST's are.
    """
    import scipy.io  # takes half a second: only when Omniglot is read
    from scipy.io.matlab import MatReadError

    try:
        array = scipy.io.loadmat(path, variable_names=[variable]).get(variable)
    except (OSError, ValueError, EOFError, zlib.error, MatReadError) as error:
        raise DataError(f"{path} is not a readable .mat file ({error}); delete it and download it again") from error
    if array is None:
        raise DataError(
            f"{path} holds no variable {variable!r}: it is not Burda et al.'s chardata.mat; delete it and download it"
            " again"
        )
    if array.shape != (IMAGE_SIZE, num_images):
        raise DataError(
            f"{path} variable {variable!r} has shape {array.shape}, expected ({IMAGE_SIZE}, {num_images}) (one 28x28"
            " image a column): it is not Burda et al.'s chardata.mat; delete it and download it again"
        )
    images = array.T.reshape(num_images, 28, 28).transpose(0, 2, 1).reshape(num_images, IMAGE_SIZE)
    images = images.astype(np.float32)
    if not (images.min() >= 0 and images.max() <= 1):  # also refuses NaN
        raise DataError(
            f"{path} variable {variable!r} holds values in [{images.min()}, {images.max()}], expected intensities in"
            " [0, 1]"
        )
    return images

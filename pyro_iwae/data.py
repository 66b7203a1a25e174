"""
MNIST, Fashion-MNIST and the fixed binarization of MNIST, read without torchvision.

Files are looked up in torchvision's on-disk layout under a data directory::

    <data_dir>/MNIST/raw/{train-images-idx3-ubyte,t10k-images-idx3-ubyte}.gz
    <data_dir>/FashionMNIST/raw/{train-images-idx3-ubyte,t10k-images-idx3-ubyte}.gz
    <data_dir>/BinarizedMNIST/binarized_mnist_{train,valid,test}.amat

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

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_iwae.atomic import atomic_open

DATA_DIR_ENV = "PYRO_IWAE_DATA"
CACHE_DIR_ENV = "PYRO_IWAE_CACHE"
IMAGE_SIZE = 784
TEST_BINARIZATION_SEED = 0

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or not what it claims to be."""


@dataclass(frozen=True)
class _Source:
    folder: str  # relative to the data directory
    files: dict[str, tuple[str, int]]  # split -> (file name, number of images)
    md5: dict[str, str]  # file name -> md5 of the published file
    mirrors: tuple[str, ...]
    dynamic_binarization: bool


_SOURCES = {
    "mnist": _Source(
        folder="MNIST/raw",
        files={
            "train": ("train-images-idx3-ubyte.gz", 60000),
            "test": ("t10k-images-idx3-ubyte.gz", 10000),
        },
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        dynamic_binarization=True,
    ),
    "fashion-mnist": _Source(
        folder="FashionMNIST/raw",
        files={
            "train": ("train-images-idx3-ubyte.gz", 60000),
            "test": ("t10k-images-idx3-ubyte.gz", 10000),
        },
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        dynamic_binarization=True,
    ),
    "binarized-mnist": _Source(
        folder="BinarizedMNIST",
        files={
            "train": ("binarized_mnist_train.amat", 50000),
            "test": ("binarized_mnist_test.amat", 10000),
        },
        md5={
            "binarized_mnist_train.amat": "db28b1a6ae0fe70cbd3da91acf46e477",
            "binarized_mnist_test.amat": "14e41ae11040adba6ab8cb291eda0dd8",
        },
        mirrors=("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",),
        dynamic_binarization=False,
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
    read = _read_idx_images if source.dynamic_binarization else _read_amat_cached
    train, test = (
        torch.from_numpy(read(folder / file_name, num_images))
        for file_name, num_images in (source.files["train"], source.files["test"])
    )
    for split, size, images in (("train", train_size, train), ("test", test_size, test)):
        if size is not None and size > images.shape[0]:
            raise DataError(
                f"--{split}-size {size} is more than the {images.shape[0]:,} {split} images of {name}:"
                f" ask for at most {images.shape[0]}, or leave it out to use them all"
            )
    if source.dynamic_binarization:
        train = train.float().div_(255)
        test = binarize(test.float().div_(255))
    return Dataset(name, train[:train_size].float(), test[:test_size].float(), source.dynamic_binarization)


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
    binarized afresh when ``dynamic_binarization`` is True.
    """
    order = torch.randperm(images.shape[0], generator=generator)
    for index in order.split(batch_size):
        batch = images[index]
        if dynamic_binarization:
            batch = torch.bernoulli(batch, generator=generator)
        yield batch


def _ensure_files(source: _Source, folder: Path, download: bool) -> None:
    missing = [name for name, _ in source.files.values() if not (folder / name).exists()]
    if not missing:
        return
    failure = ""
    if download:
        try:
            for file_name in missing:
                urls = [mirror + file_name for mirror in source.mirrors]
                download_file(urls, folder / file_name, source.md5[file_name])
            return
        except DataError as error:
            failure = f" (download failed: {error})"
    raise DataError(
        f"missing dataset files in {folder}: {', '.join(missing)}{failure}. Put them there, or point"
        f" --data-dir / ${DATA_DIR_ENV} at a directory holding {source.folder}/ (torchvision's layout)."
    )


def download_file(urls: list[str], destination: Path, md5: str) -> None:
    """
    Download the first of ``urls`` that answers into ``destination``, with a
    progress bar. The file only appears once its MD5 equals ``md5``: an
    interrupted or corrupt download leaves nothing behind.
    """
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with (
                    atomic_open(destination) as f,
                    tqdm(total=total, unit="B", unit_scale=True, desc=destination.name) as bar,
                ):
                    digest = hashlib.md5()
                    while chunk := response.read(1 << 20):
                        digest.update(chunk)
                        f.write(chunk)
                        bar.update(len(chunk))
                    if digest.hexdigest() != md5:
                        raise DataError(f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}")
            return
        except OSError as error:  # URLError is an OSError
            errors.append(f"{url}: {getattr(error, 'reason', error)}")
    raise DataError("; ".join(errors))


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

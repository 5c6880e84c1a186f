"""Plain torch networks for encoders and decoders, and the one-hot encoding of class labels.

The MLP matches pyro-ppl's examples/vae/vae.py (one softplus hidden layer each way), so
results compare with it; the conv pair is for 28x28 images.
"""

from __future__ import annotations

import torch
from pyro.infer.util import is_validation_enabled
from torch import nn
from torch.nn import functional as F

MIN_SCALE = 1e-5
MLP_DEPTHS = {"mlp": 1, "mlp2": 2}  # softplus hidden layers each way
ARCHITECTURES = (*MLP_DEPTHS, "conv")


def _softplus_stack(first: nn.Linear, further: nn.ModuleList, inputs: torch.Tensor) -> torch.Tensor:
    hidden = F.softplus(first(inputs))
    for layer in further:
        hidden = F.softplus(layer(hidden))
    return hidden


class MLPEncoder(nn.Module):
    """x -> (loc, scale) of a diagonal Gaussian q(z|x), through ``hidden_layers`` softplus hidden layers."""

    def __init__(self, x_dim: int, hidden_dim: int, z_dim: int, hidden_layers: int = 1) -> None:
        super().__init__()
        self.hidden = nn.Linear(x_dim, hidden_dim)
        self.further = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(hidden_layers - 1))
        self.loc = nn.Linear(hidden_dim, z_dim)
        self.scale = nn.Linear(hidden_dim, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.context(x))

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer h(x): what (loc, scale), and a flow posterior, are computed from."""
        return _softplus_stack(self.hidden, self.further, x)

    def head(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) from the hidden layer."""
        return self.loc(context), F.softplus(self.scale(context)) + MIN_SCALE


class MLPDecoder(nn.Module):
    """z -> pixel logits, through ``hidden_layers`` softplus hidden layers."""

    def __init__(self, z_dim: int, hidden_dim: int, x_dim: int, hidden_layers: int = 1) -> None:
        super().__init__()
        self.hidden = nn.Linear(z_dim, hidden_dim)
        self.further = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(hidden_layers - 1))
        self.logits = nn.Linear(hidden_dim, x_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(_softplus_stack(self.hidden, self.further, z))


class MLPClassifier(MLPDecoder):
    """x -> class logits: the decoder's network (one softplus hidden layer) from pixels to classes."""

    def __init__(self, x_dim: int, hidden_dim: int, num_classes: int) -> None:
        super().__init__(x_dim, hidden_dim, num_classes)


class ConvEncoder(nn.Module):
    """28x28 image -> (loc, scale): two stride-2 convolutions (28 -> 14 -> 7), then an MLP head."""

    def __init__(self, hidden_dim: int, z_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1),
            nn.Softplus(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            nn.Softplus(),
            nn.Flatten(),
        )
        self.head = MLPEncoder(64 * 7 * 7, hidden_dim, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = x.reshape(-1, 1, 28, 28)
        loc, scale = self.head(self.features(images))
        return loc.reshape(*x.shape[:-1], -1), scale.reshape(*x.shape[:-1], -1)


class ConvDecoder(nn.Module):
    """z -> 28x28 pixel logits (flat): an MLP to 64x7x7, then two stride-2 transposed convolutions."""

    def __init__(self, z_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(
            nn.Linear(z_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, 64 * 7 * 7), nn.Softplus()
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.Softplus(),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        features = self.project(z.reshape(-1, z.shape[-1])).reshape(-1, 64, 7, 7)
        return self.upsample(features).reshape(*z.shape[:-1], 28 * 28)


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Class indices as one-hot rows, by comparison rather than ``F.one_hot`` (which reads the labels'
    range on the host, so a step using it cannot be captured); the range is checked while Pyro validates."""
    if is_validation_enabled() and y.numel() and not bool(((y >= 0) & (y < num_classes)).all()):
        raise ValueError(f"class labels must lie in 0..{num_classes - 1}; got values from {int(y.min())} to {int(y.max())}")
    return (y.long().unsqueeze(-1) == torch.arange(num_classes, device=y.device)).to(dtype)


def check_sizes(**sizes: int) -> None:
    """Raise a ValueError naming the first size that is not a positive integer."""
    for name, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {size!r}")


def build_encoder_decoder(arch: str, x_dim: int, hidden_dim: int, z_dim: int) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder of architecture ``"mlp"`` (one softplus hidden layer each way), ``"mlp2"``
    (two, as Kingma et al. 2014's M1) or ``"conv"`` (28x28 images only)."""
    check_sizes(x_dim=x_dim, hidden_dim=hidden_dim, z_dim=z_dim)
    if arch in MLP_DEPTHS:
        depth = MLP_DEPTHS[arch]
        return MLPEncoder(x_dim, hidden_dim, z_dim, depth), MLPDecoder(z_dim, hidden_dim, x_dim, depth)
    if arch == "conv":
        if x_dim != 28 * 28:
            raise ValueError(f"--arch conv is built for 28x28 images, got {x_dim} pixels; use --arch mlp")
        return ConvEncoder(hidden_dim, z_dim), ConvDecoder(z_dim, hidden_dim)
    raise ValueError(f"unknown architecture {arch!r}; use {', '.join(ARCHITECTURES)}")

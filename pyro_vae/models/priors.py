"""Priors p(z) for the VAE family: the standard Normal and the VampPrior of Tomczak & Welling (2018)."""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F


class StandardNormalPrior(nn.Module):
    """p(z) = Normal(0, I) over ``z_dim`` dimensions."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("_zero", torch.zeros(()), persistent=False)  # follows the model's device and dtype

    def forward(self, batch_size: int) -> dist.Distribution:
        loc = self._zero.expand(batch_size, self.z_dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)


class VampPrior(nn.Module):
    """The variational mixture of posteriors: p(z) = (1/K) sum_k q(z|u_k), K learned pseudo-inputs u_k
    in pixel space [0, 1] (Tomczak & Welling, 2018, eq. 9), the mixture a ``MixtureSameFamily``.

    Args:
        encode: x -> (loc, scale) of q(z|x): the guide's own encoder (not registered here, so its
            parameters belong to the guide once).
        num_pseudo_inputs: K.
        x_dim: values per datapoint.
        init_mean: mean of the Normal draws the pseudo-inputs start as (the paper's 0.05 for MNIST);
            they are clipped to [0, 1] by a hard tanh.
        init_std: standard deviation of those draws (the paper's 0.01).
    """

    def __init__(self, encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], num_pseudo_inputs: int,
                 x_dim: int, init_mean: float = 0.05, init_std: float = 0.01) -> None:
        super().__init__()
        if not isinstance(num_pseudo_inputs, int) or num_pseudo_inputs < 1:
            raise ValueError(f"pseudo_inputs must be an integer >= 1, got {num_pseudo_inputs!r}")
        self.encode = encode
        self.raw_pseudo_inputs = nn.Parameter(init_mean + init_std * torch.randn(num_pseudo_inputs, x_dim))

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs u_k, each in [0, 1]."""
        return F.hardtanh(self.raw_pseudo_inputs, 0.0, 1.0)

    def forward(self, batch_size: int) -> dist.Distribution:
        loc, scale = self.encode(self.pseudo_inputs())
        components = dist.Normal(loc, scale).to_event(1)
        weights = dist.Categorical(logits=torch.zeros(loc.shape[0], device=loc.device, dtype=loc.dtype))
        return dist.MixtureSameFamily(weights, components).expand([batch_size])

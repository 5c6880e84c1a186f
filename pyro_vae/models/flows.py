"""Normalizing-flow posteriors q(z|x) for the VAE family, built from ``pyro.distributions.transforms``."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn


class InverseAutoregressivePosterior(nn.Module):
    """q(z|x): a diagonal Gaussian N(loc(x), scale(x)) pushed through ``num_steps`` inverse
    autoregressive flow steps conditioned on the encoder's context h(x) (Kingma et al., 2016):
    z_t = mu_t(z_{t-1}, h) + sigma_t(z_{t-1}, h) * z_{t-1}, the variable order reversed between steps.

    Sampling runs each step in its parallel direction, and the log-density of a drawn z reuses the
    step's cached inverse, so a guide costs one pass per step. log q(z|x) has no closed-form KL to
    the prior: the ELBO's KL term is the Monte Carlo E_q[log q(z|x) - log p(z)].
    """

    def __init__(self, z_dim: int, context_dim: int, num_steps: int, hidden_dim: int) -> None:
        super().__init__()
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"flow_steps must be an integer >= 1, got {num_steps!r}")
        orders = [torch.arange(z_dim) if step % 2 == 0 else torch.arange(z_dim).flip(0) for step in range(num_steps)]
        width = max(hidden_dim, z_dim)  # a MADE layer needs at least one unit per variable
        self.steps = nn.ModuleList(
            ConditionalAffineAutoregressive(ConditionalAutoRegressiveNN(z_dim, context_dim, [width, width],
                                                                        permutation=order))
            for order in orders)

    def forward(self, loc: torch.Tensor, scale: torch.Tensor, context: torch.Tensor) -> dist.Distribution:
        transforms = [step.condition(context) for step in self.steps]
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), transforms)

    @torch.no_grad()
    def summary(self, loc: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """A point summary of q(z|x): the base distribution's mean carried through the flow."""
        z = loc
        for step in self.steps:
            z = step.condition(context)(z)
        return z

"""A VAE with two stochastic layers (Burda, Grosse & Salakhutdinov, 2016, section 5) as a Pyro model/guide pair."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.models.priors import StandardNormalPrior
from pyro_vae.nets import MIN_SCALE, check_sizes


class _GaussianLayer(nn.Module):
    """inputs -> (loc, scale) of a diagonal Gaussian through two tanh hidden layers (the IWAE paper's units)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, hidden_dim),
                                    nn.Tanh())
        self.loc = nn.Linear(hidden_dim, out_dim)
        self.scale = nn.Linear(hidden_dim, out_dim)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden(inputs)
        return self.loc(hidden), F.softplus(self.scale(hidden)) + MIN_SCALE


class TwoLayerVAE(nn.Module):
    """Two stochastic layers, the architecture of the IWAE paper's MNIST experiments.

    Generative story, for each image n::

        z2_n ~ Normal(0, I)                                  (z2_dim, 50 in the paper)
        z1_n ~ Normal(mu(z2_n), sigma(z2_n))                 (z1_dim, 100; two tanh layers of hidden2_dim)
        x_n  ~ Bernoulli(logits=decoder(z1_n))               (two tanh layers of hidden1_dim)

    Guide: ``z1_n ~ q(z1|x_n)``, then ``z2_n ~ q(z2|z1_n)``, diagonal Gaussians of the same shape of
    network. Sites ``"z1"``, ``"z2"`` and ``"x"`` sit in ``pyro.plate("data")``; KL terms of both
    layers are Monte Carlo (z1's prior depends on z2). Works with any objective, IWAE included.

    Args:
        x_dim: pixels per image.
        z1_dim, z2_dim: sizes of the lower and the upper stochastic layer.
        hidden1_dim: width of the networks between x and z1.
        hidden2_dim: width of the networks between z1 and z2.
    """

    def __init__(self, x_dim: int = 784, z1_dim: int = 100, z2_dim: int = 50, hidden1_dim: int = 200,
                 hidden2_dim: int = 100) -> None:
        super().__init__()
        check_sizes(x_dim=x_dim, z1_dim=z1_dim, z2_dim=z2_dim, hidden1_dim=hidden1_dim, hidden2_dim=hidden2_dim)
        self.x_dim, self.z1_dim, self.z2_dim = x_dim, z1_dim, z2_dim
        self.encoder1 = _GaussianLayer(x_dim, hidden1_dim, z1_dim)
        self.encoder2 = _GaussianLayer(z1_dim, hidden2_dim, z2_dim)
        self.prior1 = _GaussianLayer(z2_dim, hidden2_dim, z1_dim)
        self.decoder = nn.Sequential(nn.Linear(z1_dim, hidden1_dim), nn.Tanh(), nn.Linear(hidden1_dim, hidden1_dim),
                                     nn.Tanh(), nn.Linear(hidden1_dim, x_dim))
        self.top_prior = StandardNormalPrior(z2_dim)

    def top_prior_dist(self, batch_size: int) -> dist.Distribution:
        """p(z2) = Normal(0, I)."""
        return self.top_prior(batch_size)

    def lower_prior_dist(self, z2: torch.Tensor) -> dist.Distribution:
        """p(z1|z2)."""
        return dist.Normal(*self.prior1(z2)).to_event(1)

    def likelihood_dist(self, z1: torch.Tensor) -> dist.Distribution:
        """p(x|z1)."""
        return dist.Bernoulli(logits=self.decoder(z1)).to_event(1)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.top_prior_dist(x.shape[0]))
            z1 = pyro.sample("z1", self.lower_prior_dist(z2))
            return pyro.sample("x", self.likelihood_dist(z1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(*self.encoder1(x)).to_event(1))
            return pyro.sample("z2", dist.Normal(*self.encoder2(z1)).to_event(1))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E_q[z1|x], the lower layer's posterior mean (what ``decode`` takes)."""
        return self.encoder1(x)[0]

    @torch.no_grad()
    def decode(self, z1: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p(x|z1)."""
        return torch.sigmoid(self.decoder(z1))

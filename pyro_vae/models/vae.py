"""The variational autoencoder of Kingma & Welling (2014) as a Pyro model/guide pair."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.nets import build_encoder_decoder


class VAE(nn.Module):
    """Variational autoencoder.

    Generative story, for each image n::

        z_n ~ Normal(0, I)                       (prior, z_dim dimensions)
        x_n ~ Bernoulli(logits=decoder(z_n))     (or Gaussian / continuous Bernoulli)

    Guide (amortized): ``z_n ~ Normal(encoder(x_n))`` with a diagonal covariance.
    Sites ``"z"`` and ``"x"`` sit in ``pyro.plate("data")``; pixels are one event
    (``to_event(1)``), so log-densities are per image.

    Args:
        x_dim: pixels per image.
        z_dim: latent dimensions.
        hidden_dim: width of the hidden layers.
        arch: ``"mlp"`` or ``"conv"``.
        likelihood: ``"bernoulli"``, ``"gaussian"`` or ``"continuous-bernoulli"``
            (Loaiza-Ganem & Cunningham, 2019).
        gaussian_scale: fixed pixel standard deviation of the Gaussian likelihood; ``None``
            learns one scale shared by all pixels.
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 50,
        hidden_dim: int = 400,
        arch: str = "mlp",
        likelihood: str = "bernoulli",
        gaussian_scale: float | None = None,
    ) -> None:
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian", "continuous-bernoulli"):
            raise ValueError(f"unknown likelihood {likelihood!r}; use bernoulli, gaussian or continuous-bernoulli")
        if gaussian_scale is not None and (likelihood != "gaussian" or not gaussian_scale > 0):
            raise ValueError(f"gaussian_scale (--gaussian-scale) is a positive pixel std of likelihood 'gaussian'; got "
                             f"{gaussian_scale} with likelihood {likelihood!r}")
        self.x_dim, self.z_dim, self.likelihood = x_dim, z_dim, likelihood
        self.observes_binary_data = likelihood == "bernoulli"
        self.encoder, self.decoder = build_encoder_decoder(arch, x_dim, hidden_dim, z_dim)
        self.gaussian_scale = gaussian_scale
        if likelihood == "gaussian" and gaussian_scale is None:
            self.raw_gaussian_scale = nn.Parameter(torch.zeros(()))

    def prior_dist(self, batch_size: int) -> dist.Distribution:
        """p(z) = Normal(0, I)."""
        loc = torch.zeros(batch_size, self.z_dim, device=self._device())
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def likelihood_dist(self, z: torch.Tensor) -> dist.Distribution:
        """p(x|z) from the decoder's logits."""
        logits = self.decoder(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=logits).to_event(1)
        if self.likelihood == "continuous-bernoulli":
            return dist.ContinuousBernoulli(logits=logits).to_event(1)
        return dist.Normal(torch.sigmoid(logits), self.pixel_scale()).to_event(1)

    def posterior_dist(self, x: torch.Tensor) -> dist.Distribution:
        """q(z|x) from the encoder."""
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior_dist(x.shape[0]))
            return pyro.sample("x", self.likelihood_dist(z), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior_dist(x))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean E_q[z|x] of each image (``y`` is ignored)."""
        return self.posterior_dist(x).mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p(x|z) for each row of ``z`` (``y`` is ignored)."""
        return self.likelihood_dist(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x|z) at the posterior mean of q(z|x)."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def sample_images(self, num_images: int) -> torch.Tensor:
        """Means of p(x|z) for ``num_images`` draws z ~ p(z)."""
        return self.likelihood_dist(self.prior_dist(num_images).sample()).mean

    def pixel_scale(self) -> torch.Tensor | float:
        """Standard deviation of the Gaussian likelihood (fixed or learned)."""
        if self.gaussian_scale is not None:
            return self.gaussian_scale
        return F.softplus(self.raw_gaussian_scale) + 1e-3

    def _device(self) -> torch.device:
        return next(self.parameters()).device

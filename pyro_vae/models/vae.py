"""The variational autoencoder of Kingma & Welling (2014) as a Pyro model/guide pair, with a choice of
prior (standard Normal or VampPrior) and of posterior (diagonal Gaussian or inverse autoregressive flow)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.models.flows import InverseAutoregressivePosterior
from pyro_vae.models.priors import StandardNormalPrior, VampPrior
from pyro_vae.nets import MLPEncoder, build_encoder_decoder

PRIORS = ("standard", "vamp")
FLOWS = ("none", "iaf")


class VAE(nn.Module):
    """Variational autoencoder.

    Generative story, for each image n::

        z_n ~ p(z)                               (Normal(0, I), or the VampPrior; z_dim dimensions)
        x_n ~ Bernoulli(logits=decoder(z_n))     (or Gaussian / continuous Bernoulli)

    Guide (amortized): ``z_n ~ Normal(encoder(x_n))`` with a diagonal covariance, optionally pushed
    through ``flow_steps`` inverse autoregressive flow steps conditioned on the encoder's hidden layer.
    Sites ``"z"`` and ``"x"`` sit in ``pyro.plate("data")``; pixels are one event
    (``to_event(1)``), so log-densities are per image.

    Args:
        x_dim: pixels per image.
        z_dim: latent dimensions.
        hidden_dim: width of the hidden layers.
        arch: ``"mlp"``, ``"mlp2"`` (two hidden layers each way) or ``"conv"``.
        likelihood: ``"bernoulli"``, ``"gaussian"`` or ``"continuous-bernoulli"``
            (Loaiza-Ganem & Cunningham, 2019).
        gaussian_scale: fixed pixel standard deviation of the Gaussian likelihood; ``None``
            learns one scale shared by all pixels.
        prior: ``"standard"`` (Normal(0, I)) or ``"vamp"`` (the VampPrior of Tomczak & Welling,
            2018, :class:`~pyro_vae.models.priors.VampPrior`).
        pseudo_inputs: K, the VampPrior's number of learned pseudo-inputs.
        flow: ``"none"`` or ``"iaf"`` (:class:`~pyro_vae.models.flows.InverseAutoregressivePosterior`,
            MLP encoder only).
        flow_steps: the number of IAF steps.
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 50,
        hidden_dim: int = 400,
        arch: str = "mlp",
        likelihood: str = "bernoulli",
        gaussian_scale: float | None = None,
        prior: str = "standard",
        pseudo_inputs: int = 500,
        flow: str = "none",
        flow_steps: int = 2,
    ) -> None:
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian", "continuous-bernoulli"):
            raise ValueError(f"unknown likelihood {likelihood!r}; use bernoulli, gaussian or continuous-bernoulli")
        if gaussian_scale is not None and (likelihood != "gaussian" or not gaussian_scale > 0):
            raise ValueError(f"gaussian_scale (--gaussian-scale) is a positive pixel std of likelihood 'gaussian'; got "
                             f"{gaussian_scale} with likelihood {likelihood!r}")
        self.x_dim, self.z_dim, self.likelihood = x_dim, z_dim, likelihood
        self.observes_binary_data = likelihood == "bernoulli"
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r}; use {' or '.join(PRIORS)}")
        if flow not in FLOWS:
            raise ValueError(f"unknown flow {flow!r}; use {' or '.join(FLOWS)}")
        self.encoder, self.decoder = build_encoder_decoder(arch, x_dim, hidden_dim, z_dim)
        self.prior = (VampPrior(self.encoder.forward, pseudo_inputs, x_dim) if prior == "vamp"
                      else StandardNormalPrior(z_dim))
        self.flow = None
        if flow == "iaf":
            if not isinstance(self.encoder, MLPEncoder):
                raise ValueError("flow 'iaf' conditions on the MLP encoder's hidden layer; use arch 'mlp'")
            self.flow = InverseAutoregressivePosterior(z_dim, hidden_dim, flow_steps, hidden_dim)
        self.gaussian_scale = gaussian_scale
        if likelihood == "gaussian" and gaussian_scale is None:
            self.raw_gaussian_scale = nn.Parameter(torch.zeros(()))

    def prior_dist(self, batch_size: int) -> dist.Distribution:
        """p(z): Normal(0, I) or the VampPrior."""
        return self.prior(batch_size)

    def likelihood_dist(self, z: torch.Tensor) -> dist.Distribution:
        """p(x|z) from the decoder's logits."""
        logits = self.decoder(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=logits).to_event(1)
        if self.likelihood == "continuous-bernoulli":
            return dist.ContinuousBernoulli(logits=logits).to_event(1)
        return dist.Normal(torch.sigmoid(logits), self.pixel_scale()).to_event(1)

    def posterior_dist(self, x: torch.Tensor) -> dist.Distribution:
        """q(z|x) from the encoder (through the flow, if any)."""
        if self.flow is None:
            loc, scale = self.encoder(x)
            return dist.Normal(loc, scale).to_event(1)
        context = self.encoder.context(x)
        return self.flow(*self.encoder.head(context), context)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior_dist(x.shape[0]))
            return pyro.sample("x", self.likelihood_dist(z), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior_dist(x))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean E_q[z|x] of each image; with a flow, the base mean carried through it
        (``y`` is ignored)."""
        if self.flow is None:
            return self.posterior_dist(x).mean
        context = self.encoder.context(x)
        return self.flow.summary(self.encoder.head(context)[0], context)

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


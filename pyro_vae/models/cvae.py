"""The class-conditional VAE (Kingma et al. 2014's M2 with the label always observed) as a Pyro model/guide pair."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.nets import MLPDecoder, MLPEncoder, check_sizes, one_hot


def _concat_broadcast(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate on the last dimension after broadcasting the leading (batch, particle, enum) ones."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], dim=-1)


class ConditionalVAE(nn.Module):
    """Class-conditional VAE: a given class label y and a style z generate each image.

    Generative story, for each image n with its label y_n::

        z_n ~ Normal(0, I)
        x_n ~ Bernoulli(logits=decoder(z_n, onehot(y_n)))

    Guide (amortized): ``z_n ~ Normal(encoder(x_n, onehot(y_n)))``. The label is an input of both,
    not a random variable, so the ELBO bounds log p(x|y) and importance sampling estimates it.
    Sites ``"z"`` and ``"x"`` sit in ``pyro.plate("data")``.

    Args:
        x_dim: pixels per image.
        z_dim: style dimensions.
        hidden_dim: width of the hidden layers of encoder and decoder.
        num_classes: C, the number of labels.
    """

    needs_labels = True  # the toolkit passes the data's labels as y: the model is p(x|y)

    def __init__(self, x_dim: int = 784, z_dim: int = 50, hidden_dim: int = 400, num_classes: int = 10) -> None:
        super().__init__()
        check_sizes(x_dim=x_dim, z_dim=z_dim, hidden_dim=hidden_dim, num_classes=num_classes)
        self.x_dim, self.z_dim, self.num_classes = x_dim, z_dim, num_classes
        self.encoder = MLPEncoder(x_dim + num_classes, hidden_dim, z_dim)
        self.decoder = MLPDecoder(z_dim + num_classes, hidden_dim, x_dim)

    def prior_dist(self, batch_size: int) -> dist.Distribution:
        """p(z) = Normal(0, I)."""
        loc = torch.zeros(batch_size, self.z_dim, device=self._device())
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def likelihood_dist(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """p(x|y, z) from the decoder's logits."""
        return dist.Bernoulli(logits=self.decoder(_concat_broadcast(z, self._one_hot(y)))).to_event(1)

    def posterior_dist(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """q(z|x, y) from the encoder."""
        loc, scale = self.encoder(_concat_broadcast(x, self._one_hot(y)))
        return dist.Normal(loc, scale).to_event(1)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = self._require_labels(x, y)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior_dist(x.shape[0]))
            return pyro.sample("x", self.likelihood_dist(z, y), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = self._require_labels(x, y)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior_dist(x, y))

    @torch.no_grad()
    def sample_images(self, labels: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Means of p(x|y, z) for the given labels; ``z`` (one row per label) defaults to draws from p(z)."""
        labels = torch.as_tensor(labels, device=self._device())
        if z is None:
            z = self.prior_dist(len(labels)).sample()
        return self.likelihood_dist(z, labels).mean

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean E_q[z|x, y] of each image."""
        return self.posterior_dist(x, self._require_labels(x, y)).mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p(x|y, z) for each row of ``z`` and its label."""
        return self.likelihood_dist(z, self._require_labels(z, y)).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x|y, z) at the posterior mean of q(z|x, y)."""
        return self.decode(self.encode(x, y), y)

    def _require_labels(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """``y``, checked: one class index per row of ``x`` (images or latents)."""
        if y is None:
            raise ValueError(f"{type(self).__name__} generates x given its label y; pass y, a tensor of class "
                             f"indices 0..{self.num_classes - 1}, one per image")
        if y.shape != x.shape[:1]:
            raise ValueError(f"labels of shape {tuple(y.shape)} for {x.shape[0]} images; pass one class index per "
                             "image")
        return y

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return one_hot(y, self.num_classes, self._dtype())

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

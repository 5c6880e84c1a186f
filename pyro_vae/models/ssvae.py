"""The semi-supervised VAE "M2" of Kingma, Rezende, Mohamed & Welling (2014) as a Pyro model/guide pair."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from ..nets import MLPClassifier, MLPDecoder, MLPEncoder


def _concat_broadcast(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate on the last dimension after broadcasting the leading (batch, particle, enum) ones."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], dim=-1)


class SSVAE(nn.Module):
    """Semi-supervised VAE M2: a class label y and a style z generate each image.

    Generative story, for each image n::

        y_n ~ Categorical(1/C, ..., 1/C)                 (uniform over C classes; observed when labelled)
        z_n ~ Normal(0, I)
        x_n ~ Bernoulli(logits=decoder(z_n, onehot(y_n)))

    Guide: ``y_n ~ Categorical(logits=classifier(x_n))`` when y is not given, then
    ``z_n ~ Normal(encoder(x_n, onehot(y_n)))``. One model and one guide serve labelled batches
    (``y`` given) and unlabelled ones (``y=None``); training enumerates the unobserved y exactly
    (``config_enumerate`` applied from outside, :class:`pyro.infer.TraceEnum_ELBO`). The classifier
    q(y|x) also gets the auxiliary term ``aux_weight * log q(y|x)`` on labelled data through
    :meth:`classifier_model` (Kingma et al. 2014, eq. 9).

    Args:
        x_dim: pixels per image.
        z_dim: style dimensions.
        hidden_dim: width of the hidden layers of classifier, encoder and decoder.
        num_classes: C.
    """

    def __init__(self, x_dim: int = 784, z_dim: int = 50, hidden_dim: int = 400, num_classes: int = 10) -> None:
        super().__init__()
        self.x_dim, self.z_dim, self.num_classes = x_dim, z_dim, num_classes
        self.classifier = MLPClassifier(x_dim, hidden_dim, num_classes)
        self.encoder = MLPEncoder(x_dim + num_classes, hidden_dim, z_dim)
        self.decoder = MLPDecoder(z_dim + num_classes, hidden_dim, x_dim)

    def label_prior_dist(self, batch_size: int) -> dist.Distribution:
        """p(y) uniform over the classes."""
        logits = torch.zeros(batch_size, self.num_classes, device=self._device())
        return dist.Categorical(logits=logits)

    def prior_dist(self, batch_size: int) -> dist.Distribution:
        """p(z) = Normal(0, I)."""
        loc = torch.zeros(batch_size, self.z_dim, device=self._device())
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def likelihood_dist(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """p(x|y, z) from the decoder's logits."""
        return dist.Bernoulli(logits=self.decoder(_concat_broadcast(z, self._one_hot(y)))).to_event(1)

    def classifier_dist(self, x: torch.Tensor) -> dist.Distribution:
        """q(y|x)."""
        return dist.Categorical(logits=self.classifier(x))

    def posterior_dist(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """q(z|x, y) from the encoder."""
        loc, scale = self.encoder(_concat_broadcast(x, self._one_hot(y)))
        return dist.Normal(loc, scale).to_event(1)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", self.label_prior_dist(x.shape[0]), obs=y)
            z = pyro.sample("z", self.prior_dist(x.shape[0]))
            return pyro.sample("x", self.likelihood_dist(z, y), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", self.classifier_dist(x))
            return pyro.sample("z", self.posterior_dist(x, y))

    def classifier_model(self, x: torch.Tensor, y: torch.Tensor, aux_weight: float = 1.0) -> None:
        """The auxiliary classification term: ``y`` observed under q(y|x), log-density scaled by ``aux_weight``.

        Its ELBO (with :meth:`classifier_guide`, which has no latents) is ``aux_weight * log q(y|x)``.
        """
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=aux_weight):
            pyro.sample("y_aux", self.classifier_dist(x), obs=y)

    def classifier_guide(self, x: torch.Tensor, y: torch.Tensor, aux_weight: float = 1.0) -> None:
        """The (empty) guide of :meth:`classifier_model`."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y|x)."""
        return self.classifier(x).argmax(-1)

    @torch.no_grad()
    def sample_images(self, labels: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Means of p(x|y, z) for the given labels; ``z`` (one row per label) defaults to draws from p(z)."""
        if z is None:
            z = self.prior_dist(len(labels)).sample()
        return self.likelihood_dist(z, labels).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|y, z) at the classifier's label and the posterior mean of q(z|x, y)."""
        y = self.predict(x)
        return self.likelihood_dist(self.posterior_dist(x, y).mean, y).mean

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y.long(), self.num_classes).to(self._dtype())

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

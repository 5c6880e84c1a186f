"""The semi-supervised VAE "M2" of Kingma, Rezende, Mohamed & Welling (2014) as a Pyro model/guide pair."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_vae.data.datasets import Dataset
from pyro_vae.models.cvae import ConditionalVAE
from pyro_vae.models.semisupervised import SemiSupervisedPlan, check_semisupervised_settings
from pyro_vae.nets import MLPClassifier
from pyro_vae.runs.config import TrainConfig


class SSVAE(ConditionalVAE):
    """Semi-supervised VAE M2: a class label y and a style z generate each image.

    Generative story, for each image n::

        y_n ~ Categorical(1/C, ..., 1/C)                 (uniform over C classes; observed when labelled)
        z_n ~ Normal(0, I)
        x_n ~ Bernoulli(logits=decoder(z_n, onehot(y_n)))

    Guide: ``y_n ~ Categorical(logits=classifier(x_n))`` when y is not given, then
    ``z_n ~ Normal(encoder(x_n, onehot(y_n)))``. One model and one guide serve labelled batches
    (``y`` given) and unlabelled ones (``y=None``); training sums the unobserved y out exactly
    (enumerated from outside, :func:`~pyro_vae.inference.enumeration.enumerated_negative_elbo`). The classifier
    q(y|x) also gets the auxiliary term ``aux_weight * log q(y|x)`` on labelled data through
    :meth:`classifier_model` (Kingma et al. 2014, eq. 9).

    Training (:class:`~pyro_vae.models.semisupervised.SemiSupervisedPlan`) labels a class-balanced
    subset of ``labels`` training images and leaves the rest unlabelled.

    Args:
        x_dim: pixels per image.
        z_dim: style dimensions.
        hidden_dim: width of the hidden layers of classifier, encoder and decoder.
        num_classes: C.
        labels: labelled training images (needed for training only).
        aux_weight: weight of the classifier term log q(y|x) per labelled image.
        labelled_weighting: ``batch``, ``pass`` or ``interleave``, see
            :class:`~pyro_vae.models.semisupervised.SemiSupervisedPlan`.
    """

    needs_labels = False  # y is a latent here: scores are of p(x), the label proposed by q(y|x)

    def __init__(self, x_dim: int = 784, z_dim: int = 50, hidden_dim: int = 400, num_classes: int = 10,
                 labels: int | None = None, aux_weight: float = 50.0, labelled_weighting: str = "batch") -> None:
        check_semisupervised_settings(labels, aux_weight, labelled_weighting)
        classifier = MLPClassifier(x_dim, hidden_dim, num_classes)  # built first: the seeded initialisation
        super().__init__(x_dim, z_dim, hidden_dim, num_classes)      # of the published sweep stays the same
        self.classifier = classifier
        self.labels, self.aux_weight, self.labelled_weighting = labels, aux_weight, labelled_weighting

    def training_plan(self, settings: TrainConfig, dataset: Dataset, binarize: str) -> SemiSupervisedPlan:
        """Semi-supervised training with ``labels`` labelled images (see the class docstring)."""
        return SemiSupervisedPlan(self, settings, dataset, binarize)

    def label_prior_dist(self, batch_size: int) -> dist.Distribution:
        """p(y) uniform over the classes."""
        logits = torch.zeros(batch_size, self.num_classes, device=self._device())
        return dist.Categorical(logits=logits)

    def classifier_dist(self, x: torch.Tensor) -> dist.Distribution:
        """q(y|x)."""
        return dist.Categorical(logits=self.classifier(x))

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
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean E_q[z|x, y]; ``y`` defaults to the classifier's label."""
        return super().encode(x, self.predict(x) if y is None else y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x|y, z) at the posterior mean of q(z|x, y); ``y`` defaults to the classifier's label."""
        y = self.predict(x) if y is None else y
        return super().reconstruct(x, y)

"""Kingma et al.'s stacked semi-supervised model M1+M2 (2014, section 3.2) as one Pyro model/guide pair."""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from pyro_vae.data.batches import evaluation_split
from pyro_vae.data.datasets import Dataset
from pyro_vae.inference.evaluate import active_units, posterior_means
from pyro_vae.models.semisupervised import SemiSupervisedPlan, check_semisupervised_settings
from pyro_vae.nets import MIN_SCALE, check_sizes, one_hot
from pyro_vae.runs.config import TrainConfig


class M1M2(nn.Module):
    """M2 on the features of a trained VAE (M1), the features drawn afresh every time an image is used.

    Generative story, for each image n (M1's networks fixed, M2's learned)::

        y_n  ~ Categorical(1/C, ..., 1/C)                (observed when labelled)
        z2_n ~ Normal(0, I)
        u_n  ~ Normal(mu(y_n, z2_n), sigma(y_n, z2_n))   (M1's latent z restricted to its active units)
        x_n  ~ p_M1(x | z = u_n, the inactive units at M1's posterior mean)

    Guide: ``u_n ~ q_M1(z|x_n)`` (its active units), ``y_n ~ q(y|u_n)``, ``z2_n ~ q(z2|u_n, y_n)``.
    With M1 fixed, the ELBO's gradient for M2's networks is M2's objective on the features u ~ q_M1(z|x)
    (Kingma et al.'s M1+M2), and the ELBO bounds log p(x) of the whole stacked model, so the toolkit's
    estimators score it as any model of x. Units of M1 with Cov_x(E[z|x]) <= ``active_threshold`` on
    the run's validation images are dropped (Burda et al.'s criterion); they stay at their posterior mean.
    The images are presented as M1 saw them (binarized for a Bernoulli M1, grey for a continuous
    Bernoulli one). Sample sites: ``features`` (u), ``y`` and ``z`` (the style, the paper's z2: the latent that
    :meth:`encode` returns and :meth:`decode` takes, so the toolkit's figures draw it by its usual name).

    Args:
        m1_run: a finished VAE run directory (its best checkpoint is M1).
        hidden_dim: width of M2's networks.
        z2_dim: M2's style dimensions.
        num_classes: C.
        labels: labelled training images (class-balanced, drawn with the seed); see
            :class:`~pyro_vae.models.semisupervised.SemiSupervisedPlan` for this and the next two.
        aux_weight: alpha of the classifier term alpha * log q(y|x) per labelled image.
        labelled_weighting: ``batch``, ``pass`` or ``interleave``, how the labelled terms weigh.
        active_threshold: the variance below which an M1 unit counts as inactive.
    """

    needs_labels = False

    def __init__(self, m1_run: str, hidden_dim: int = 500, z2_dim: int = 50, num_classes: int = 10,
                 labels: int | None = None, aux_weight: float = 50.0, labelled_weighting: str = "batch",
                 active_threshold: float = 0.01) -> None:
        from pyro_vae.runs.run_dir import load_run  # a run directory is where M1 comes from

        super().__init__()
        check_sizes(hidden_dim=hidden_dim, z2_dim=z2_dim, num_classes=num_classes)
        check_semisupervised_settings(labels, aux_weight, labelled_weighting)
        m1_run_dir = Path(m1_run).expanduser().resolve()
        m1 = load_run(m1_run_dir)
        images, _ = evaluation_split(m1.dataset, "valid", m1.config.data.binarize, m1.config.train.seed)
        posterior = getattr(m1.model, "posterior_dist", None)
        if not callable(posterior) or not callable(getattr(m1.model, "likelihood_dist", None)) or not isinstance(
                getattr(posterior(images[:1]), "base_dist", None), dist.Normal):
            raise ValueError(f"M1 ({m1_run_dir}) must be a VAE with a diagonal Gaussian posterior_dist() and a "
                             f"likelihood_dist(); it is a {type(m1.model).__name__}")
        self.m1, self.m1_run_dir = m1.model.requires_grad_(False), m1_run_dir
        means = posterior_means(self.m1, images)
        active = means.double().var(0) > active_threshold
        if not active.any():
            raise ValueError(f"M1 ({m1_run_dir}) has no active unit (Cov_x E[z|x] > {active_threshold}); train it longer")
        self.register_buffer("active", active)
        self.register_buffer("inactive_means", means.mean(0))
        self.feature_dim, self.z2_dim, self.num_classes = int(active.sum()), z2_dim, num_classes
        self.x_dim = images[0].numel()  # values per image, as M1 models them
        self.observes_binary_data = getattr(m1.model, "observes_binary_data", True)  # x as M1's likelihood scores it
        self.m1_units = active_units(means, active_threshold)
        self.classifier = nn.Sequential(nn.Linear(self.feature_dim, hidden_dim), nn.Softplus(),
                                        nn.Linear(hidden_dim, num_classes))
        self.encoder = nn.Sequential(nn.Linear(self.feature_dim + num_classes, hidden_dim), nn.Softplus(),
                                     nn.Linear(hidden_dim, 2 * z2_dim))
        self.decoder = nn.Sequential(nn.Linear(z2_dim + num_classes, hidden_dim), nn.Softplus(),
                                     nn.Linear(hidden_dim, 2 * self.feature_dim))
        self.labels, self.aux_weight, self.labelled_weighting = labels, aux_weight, labelled_weighting

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a checkpoint, which carries its own copy of M1 and of its active units.

        M2's networks are sized by the active units of the M1 run as it is now; a checkpoint written
        when that run had a different number (it trained on since) is refused by name, not by a
        tensor size mismatch.
        """
        saved = state_dict.get("active")
        if saved is not None and saved.shape == self.active.shape and int(saved.sum()) != self.feature_dim:
            raise ValueError(f"this M1+M2 checkpoint was trained on {int(saved.sum())} active units of M1, but the M1 "
                             f"run {self.m1_run_dir} now has {self.feature_dim}: it was trained further after this run "
                             "started. Restore that M1 run as it was, or start a new M1+M2 run; keep an M1 that "
                             "M1+M2 runs use unchanged (train on in a copy)")
        return super().load_state_dict(state_dict, strict, assign)

    def train(self, mode: bool = True) -> "M1M2":
        super().train(mode)
        self.m1.eval()  # M1 is fixed, whatever mode M2 trains in
        return self

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return one_hot(y, self.num_classes, self.inactive_means.dtype)

    @staticmethod
    def _join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
        return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], dim=-1)

    def _gaussian(self, network: nn.Module, inputs: torch.Tensor) -> dist.Distribution:
        loc, raw_scale = network(inputs).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw_scale) + MIN_SCALE).to_event(1)

    def features_dist(self, x: torch.Tensor) -> dist.Distribution:
        """q_M1(z|x) on the active units."""
        m1_posterior = self.m1.posterior_dist(x)
        return dist.Normal(m1_posterior.base_dist.loc[..., self.active],
                           m1_posterior.base_dist.scale[..., self.active]).to_event(1)

    def _m1_latent(self, features: torch.Tensor) -> torch.Tensor:
        """M1's full z: the features on the active units, the posterior mean on the others."""
        z = self.inactive_means.expand(features.shape[:-1] + self.inactive_means.shape).clone()
        z[..., self.active] = features
        return z

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            prior_y = dist.Categorical(logits=x.new_zeros(x.shape[0], self.num_classes))
            y = pyro.sample("y", prior_y, obs=y)
            z2 = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z2_dim), 1.0).to_event(1))
            features = pyro.sample("features", self._gaussian(self.decoder, self._join(z2, self._one_hot(y))))
            return pyro.sample("x", self.m1.likelihood_dist(self._m1_latent(features)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            features = pyro.sample("features", self.features_dist(x))
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.classifier(features)))
            return pyro.sample("z", self._gaussian(self.encoder, self._join(features, self._one_hot(y))))

    def classifier_model(self, x: torch.Tensor, y: torch.Tensor, aux_weight: float = 1.0) -> None:
        """The auxiliary term: ``aux_weight * log q(y|u)`` with u ~ q_M1(z|x) drawn afresh."""
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=aux_weight):
            features = self.features_dist(x).sample()
            pyro.sample("y_aux", dist.Categorical(logits=self.classifier(features)), obs=y)

    def classifier_guide(self, x: torch.Tensor, y: torch.Tensor, aux_weight: float = 1.0) -> None:
        """The (empty) guide of :meth:`classifier_model`."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y|u) at the features' posterior mean."""
        return self.classifier(self.features_dist(x).mean).argmax(-1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The style E_q[z2|u, y] at M1's posterior mean u = E_q[u|x]; ``y`` defaults to the classifier's label."""
        features = self.features_dist(x).mean
        y = self.classifier(features).argmax(-1) if y is None else y
        return self._gaussian(self.encoder, self._join(features, self._one_hot(y))).mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean of p_M1(x|u) at the features' mean u = E[u|y, z2] (``z`` is z2)."""
        features = self._gaussian(self.decoder, self._join(z, self._one_hot(y))).mean
        return self.m1.likelihood_dist(self._m1_latent(features)).mean

    def training_plan(self, settings: TrainConfig, dataset: Dataset, binarize: str) -> SemiSupervisedPlan:
        """M2's semi-supervised training (labelled and unlabelled batches, y enumerated)."""
        return SemiSupervisedPlan(self, settings, dataset, binarize)


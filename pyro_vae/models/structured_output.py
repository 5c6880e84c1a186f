"""Structured-output prediction (Sohn, Lee & Yan, 2015): a deterministic baseline and the conditional VAE.

Both predict the unobserved pixels y of an image from its observed pixels x. The input ``x`` is
the image with unobserved pixels set to -1 (so "missing" differs from "black"); the output ``y``
is the whole binary image, of which only the pixels in ``target_mask`` are scored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.data.batches import BINARIZATION_SEED_OFFSETS, EpochBatches, fixed_binarization
from pyro_vae.data.datasets import Dataset
from pyro_vae.inference.evaluate import dataset_elbo_terms, mean_terms
from pyro_vae.inference.objectives import NegativeELBO, kl_weight_at, make_objective
from pyro_vae.nets import MIN_SCALE
from pyro_vae.runs.config import TrainConfig

MISSING = -1.0  # the value of an unobserved input pixel


def masked_inputs(images: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """The images with every unobserved pixel set to -1."""
    return torch.where(observed.to(images.device), images, torch.full_like(images, MISSING))


def evaluation_pairs(images: torch.Tensor, observed: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, outputs) of a held-out split: outputs are one seeded binarization of the grey images."""
    return masked_inputs(images, observed), fixed_binarization(images, "dynamic", seed)


class QuadrantBatches:
    """Shuffled (inputs, outputs) training batches; outputs binarized afresh each epoch (dynamic)."""

    def __init__(self, images: torch.Tensor, observed: torch.Tensor, batch_size: int, seed: int) -> None:
        # The grey images ride along as "labels", so each batch has its binary draw and its grey source.
        self._batches = EpochBatches(images, images, batch_size, "dynamic", seed)
        self.observed = observed.to(images.device)

    def __len__(self) -> int:
        return len(self._batches)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for binary, grey in self._batches.epoch(epoch):
            yield masked_inputs(grey, self.observed), binary


class StructuredOutputPlan:
    """Training of a structured-output model on grey images: each step the masked inputs and a fresh
    binarization of the whole image as output; held-out splits scored on one seeded binarization
    with ``VALID_PARTICLES`` samples, ``best.pt`` by validation ELBO of log p(y|x)."""

    selection_metric = "elbo"
    scored_splits = ("valid",)
    VALID_PARTICLES = 10

    def __init__(self, model: nn.Module, settings: TrainConfig, dataset: Dataset) -> None:
        self.model, self.settings, self.dataset = model, settings, dataset
        self.observed = ~model.target_mask
        self.loss_module = NegativeELBO(model, make_objective("elbo"))
        self.batches = QuadrantBatches(dataset.train_images, self.observed, settings.batch_size, settings.seed)

    def before_step(self, step: int, steps_per_epoch: int) -> None:
        self.loss_module.kl_weight = kl_weight_at(step, steps_per_epoch, 1.0, self.settings.kl_warmup_epochs)

    def score(self, split: str) -> dict[str, float]:
        inputs, outputs = evaluation_pairs(self.dataset.split(split)[0], self.observed,
                                           self.settings.seed + BINARIZATION_SEED_OFFSETS[split])
        terms = dataset_elbo_terms(self.model, inputs, outputs, batch_size=self.settings.eval_batch_size,
                                   num_particles=self.VALID_PARTICLES)
        return mean_terms(terms)

    @staticmethod
    def describe(record: dict[str, Any]) -> str:
        return f"train -ELBO {record['train']['loss']:.2f}  valid -ELBO {-record['valid']['elbo']:.2f}"




def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Two ReLU hidden layers, as in Sohn et al.'s MNIST networks."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                         nn.Linear(hidden_dim, out_dim))


class _GaussianNet(nn.Module):
    """inputs -> (loc, scale) of a diagonal Gaussian, through :func:`_mlp`."""

    def __init__(self, in_dim: int, hidden_dim: int, z_dim: int) -> None:
        super().__init__()
        self.net = _mlp(in_dim, hidden_dim, 2 * z_dim)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(inputs).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + MIN_SCALE


class _MaskedOutput(nn.Module):
    """Holds the mask of scored pixels and builds the masked Bernoulli likelihood of y.

    Trained on grey images by :class:`StructuredOutputPlan`, which binarizes the outputs itself.
    """

    observes_binary_data = False  # x are grey inputs; the plan draws the binary outputs y

    def training_plan(self, settings: TrainConfig, dataset: Dataset, binarize: str) -> StructuredOutputPlan:
        """Inputs masked from grey images, outputs binarized afresh each epoch (see the module docstring)."""
        return StructuredOutputPlan(self, settings, dataset)

    def __init__(self, target_mask: torch.Tensor) -> None:
        super().__init__()
        if target_mask.dtype != torch.bool or target_mask.dim() != 1:
            raise ValueError("target_mask must be a 1-D bool tensor, True where a pixel is to be predicted")
        self.register_buffer("target_mask", target_mask)

    def output_dist(self, logits: torch.Tensor) -> dist.Distribution:
        """Bernoulli over the pixels, log-density counted only where ``target_mask`` is True."""
        return dist.Bernoulli(logits=logits).mask(self.target_mask).to_event(1)

    def _check(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        width = self.target_mask.shape[0]
        if x.shape[-1] != width or (y is not None and y.shape != x.shape):
            raise ValueError(f"inputs {tuple(x.shape)} and outputs {None if y is None else tuple(y.shape)}: both "
                             f"must be (batch, {width}) images")


class QuadrantBaseline(_MaskedOutput):
    """Deterministic baseline: y ~ Bernoulli(logits=net(x)) on the unobserved pixels; no latent variable.

    The guide is empty, so the ELBO is exactly log p(y|x).
    """

    def __init__(self, target_mask: torch.Tensor, hidden_dim: int = 500) -> None:
        super().__init__(target_mask)
        self.net = _mlp(target_mask.shape[0], hidden_dim, target_mask.shape[0])

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, y)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", self.output_dist(self.net(x)), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """No latent variables: the empty guide."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities of the output."""
        return torch.sigmoid(self.net(x))


class StructuredOutputCVAE(_MaskedOutput):
    """Conditional VAE for structured output (Sohn, Lee & Yan, 2015).

    Generative story, for each input x_n::

        z_n ~ Normal(prior_net(x_n))                 (prior network p(z|x))
        y_n ~ Bernoulli(logits=generation_net(z_n))  (generation network p(y|x, z), masked)

    The input reaches the generation network only through z's prior, so z must carry the
    prediction; a generation network fed x as well learns the baseline's answer first and leaves
    z nearly unused (as pyro-ppl's tutorial, which also decodes from z alone).
    Guide: the recognition network ``z_n ~ Normal(recognition_net(x_n, y_n))`` sees the target
    pixels. :meth:`prior_guide` draws z from p(z|x) instead, the proposal of the cheaper Monte
    Carlo estimate of p(y|x) (Sohn et al.'s conditional log-likelihood by sampling the prior).
    """

    def __init__(self, target_mask: torch.Tensor, hidden_dim: int = 500, z_dim: int = 64) -> None:
        super().__init__(target_mask)
        pixels = target_mask.shape[0]
        self.z_dim = z_dim
        self.prior_net = _GaussianNet(pixels, hidden_dim, z_dim)
        self.recognition_net = _GaussianNet(2 * pixels, hidden_dim, z_dim)
        self.generation_net = _mlp(z_dim, hidden_dim, pixels)

    def prior_dist(self, x: torch.Tensor) -> dist.Distribution:
        """p(z|x)."""
        return dist.Normal(*self.prior_net(x)).to_event(1)

    def posterior_dist(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """q(z|x, y), from the input and the target pixels only."""
        return dist.Normal(*self.recognition_net(torch.cat([x, y * self.target_mask], dim=-1))).to_event(1)

    def likelihood_dist(self, z: torch.Tensor) -> dist.Distribution:
        """p(y|x, z) (x acts through z), scored on the target pixels."""
        return self.output_dist(self.generation_net(z))

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, y)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior_dist(x))
            return pyro.sample("y", self.likelihood_dist(z), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, y)
        if y is None:
            raise ValueError("the recognition network q(z|x, y) needs the target y; to predict, use prior_guide "
                             "or complete()")
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior_dist(x, y))

    def prior_guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ p(z|x): with it as proposal the importance weights are p(y|x, z)."""
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.prior_dist(x))

    @torch.no_grad()
    def complete(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Pixel probabilities of ``num_samples`` completions per input, z ~ p(z|x): shape (num_samples, batch, pixels)."""
        return torch.sigmoid(self.generation_net(self.prior_dist(x).sample((num_samples,))))


class PriorProposal:
    """The model of a :class:`StructuredOutputCVAE` paired with its prior network as guide, for the
    ``model``/``guide`` interface of :mod:`pyro_vae.inference.evaluate`: importance sampling with it is the
    Monte Carlo estimate log mean_k p(y|x, z_k), z_k ~ p(z|x)."""

    def __init__(self, cvae: StructuredOutputCVAE) -> None:
        self.model, self.guide = cvae.model, cvae.prior_guide

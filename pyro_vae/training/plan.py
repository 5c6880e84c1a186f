"""How a model is trained: the one small interface between a model family and the training loop.

The loop asks a model for ``model.training_plan(settings, dataset)`` when it has that method,
and uses :class:`ELBOPlan` (the chosen Pyro ELBO on mini-batches of the training images)
otherwise. A plan says what a step's batch is, which loss module the optimizer minimises, how a
held-out split is scored and which score picks ``best.pt``. M2's plan
(:class:`pyro_vae.models.semisupervised.SemiSupervisedPlan`) is one; a user's model can bring its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn

from pyro_vae.contract import labels_for_model
from pyro_vae.data.batches import EpochBatches, evaluation_split
from pyro_vae.data.datasets import Dataset
from pyro_vae.inference.evaluate import dataset_elbo_terms, mean_terms
from pyro_vae.inference.objectives import NegativeELBO, kl_weight_at, make_objective
from pyro_vae.runs.config import ConfigError, TrainConfig


class Batches(Protocol):
    """Training batches: ``len`` steps per epoch, each a tuple of tensors the loss module takes."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> Iterator[tuple]: ...


class LossModule(Protocol):
    """What the optimizer minimises: ``forward(*batch)`` is the loss summed over the batch's images.

    ``last_statistics()`` returns the last step's summed statistics as one tensor (kept on the
    device, summed over an epoch), ``epoch_summary(totals)`` turns an epoch's totals into the
    per-image numbers of ``metrics.jsonl`` and ``num_images(*batch)`` the images a loss is
    averaged over (the data-parallel share of a batch).
    """

    model: nn.Module

    def __call__(self, *batch: Any) -> torch.Tensor: ...

    def last_statistics(self) -> torch.Tensor: ...

    def epoch_summary(self, totals: list[float]) -> dict[str, float]: ...

    def num_images(self, *batch: Any) -> int: ...


class TrainingPlan(Protocol):
    """A model family's training: batches, loss, held-out scores and the score that picks ``best.pt``."""

    selection_metric: str  # key of score()'s result; higher is better
    scored_splits: tuple[str, ...]  # held-out splits scored after every epoch ("valid" first)
    loss_module: LossModule
    batches: Batches

    def before_step(self, step: int, steps_per_epoch: int) -> None: ...

    def score(self, split: str) -> dict[str, float]: ...

    def describe(self, record: dict[str, Any]) -> str: ...


class ELBOPlan:
    """Plain ELBO training (the default): the objective of ``settings`` (ELBO, mean-field ELBO or
    IWAE bound) on shuffled mini-batches, KL weight annealed by ``beta`` and the warm-up, held-out
    splits scored on one seeded binarization each, best checkpoint by validation ELBO."""

    selection_metric = "elbo"
    scored_splits = ("valid",)

    def __init__(self, model: nn.Module, settings: TrainConfig, dataset: Dataset, binarize: str) -> None:
        if getattr(model, "needs_labels", False) and dataset.train_labels is None:
            raise ConfigError(f"{type(model).__name__} models x given its label (needs_labels) but {dataset.name} "
                             "has no labels; train it on labelled data")
        self.model, self.settings, self.dataset, self.binarize = model, settings, dataset, binarize
        self.loss_module = NegativeELBO(model, make_objective(settings.objective, settings.num_particles, settings.gradient))
        self.batches = EpochBatches(dataset.train_images, labels_for_model(model, dataset.train_labels),
                                    settings.batch_size, binarize, settings.seed)

    def before_step(self, step: int, steps_per_epoch: int) -> None:
        self.loss_module.kl_weight = kl_weight_at(step, steps_per_epoch, self.settings.beta,
                                                  self.settings.kl_warmup_epochs)

    def score(self, split: str) -> dict[str, float]:
        """Mean ELBO terms per datapoint of ``split`` (nats)."""
        images, labels = evaluation_split(self.dataset, split, self.binarize, self.settings.seed)
        terms = dataset_elbo_terms(self.model, images, labels_for_model(self.model, labels),
                                   batch_size=self.settings.eval_batch_size)
        return mean_terms(terms)

    @staticmethod
    def describe(record: dict[str, Any]) -> str:
        train, valid = record["train"], record["valid"]
        return (f"train -ELBO {-train['elbo']:.2f} (recon {-train['reconstruction']:.2f} + KL {train['kl']:.2f})  "
                f"valid -ELBO {-valid['elbo']:.2f} (recon {-valid['reconstruction']:.2f} + KL {valid['kl']:.2f})")


def training_plan(model: nn.Module, settings: TrainConfig, dataset: Dataset, binarize: str) -> TrainingPlan:
    """The model's own plan (``model.training_plan(settings, dataset, binarize)``), else :class:`ELBOPlan`."""
    make_plan = getattr(model, "training_plan", None)
    if callable(make_plan):
        return make_plan(settings, dataset, binarize)
    return ELBOPlan(model, settings, dataset, binarize)

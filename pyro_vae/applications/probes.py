"""How well a model's latent means separate the classes: nearest-neighbour and linear probes.

A stacked semi-supervised model (M1+M2) can classify no better than its M1's features allow, so
the probes say which trained VAE to stack on before a long M1+M2 run: the posterior means of the
active units, standardised with the training images' statistics, scored on a held-out split by
1-nearest-neighbour with a few labels (the semi-supervised setting) and with all of them, and by
a logistic regression on all labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.data.batches import evaluation_split
from pyro_vae.data.datasets import Dataset
from pyro_vae.inference.evaluate import latent_means
from pyro_vae.models.semisupervised import balanced_labelled_indices


@dataclass(frozen=True)
class ProbeResult:
    """Accuracies (fractions) of the probes on the held-out split, and the units they read."""

    active_units: int
    nearest_neighbour_few_labels: float
    nearest_neighbour_all_labels: float
    logistic_all_labels: float


def nearest_neighbour_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                               test_labels: torch.Tensor, chunk_size: int = 1000) -> float:
    """Fraction of ``test`` rows whose nearest ``train`` row (Euclidean) has their label."""
    correct = 0
    for rows, labels in zip(test.split(chunk_size), test_labels.split(chunk_size)):
        nearest = torch.cdist(rows, train).argmin(1)
        correct += int((train_labels[nearest] == labels).sum())
    return correct / len(test)


def logistic_regression_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                                 test_labels: torch.Tensor, num_classes: int, max_iter: int = 200) -> float:
    """Fraction of ``test`` rows a multinomial logistic regression fitted to ``train`` (L-BFGS,
    unregularised) labels correctly."""
    linear = nn.Linear(train.shape[1], num_classes, dtype=train.dtype)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(train), train_labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((linear(test).argmax(1) == test_labels).float().mean())


@torch.no_grad()
def _standardised_means(model: nn.Module, dataset: Dataset, binarize: str, seed: int, split: str,
                        threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train_images, train_labels = evaluation_split(dataset, "train", binarize, seed)
    test_images, test_labels = evaluation_split(dataset, split, binarize, seed)
    train = torch.cat([latent_means(model, x) for x in train_images.split(1000)]).double()
    test = torch.cat([latent_means(model, x) for x in test_images.split(1000)]).double()
    active = train.var(0) > threshold
    mean, std = train[:, active].mean(0), train[:, active].std(0)
    return (train[:, active] - mean) / std, train_labels, (test[:, active] - mean) / std, test_labels


def probe_latents(model: nn.Module, dataset: Dataset, binarize: str, num_labels: int = 100, seed: int = 0,
                  split: str = "valid", threshold: float = 0.01) -> ProbeResult:
    """Probe the latent means (``encode``, else the guide's mean at ``z``) of ``model`` on ``dataset``.

    Args:
        model: a trained model of the images.
        dataset: labelled data with a training split and ``split``.
        binarize: how the images are binarized (once, seeded), as the run trained.
        num_labels: the class-balanced labelled training images of the few-labels probe (seeded).
        seed: seed of the binarization and of the labelled draw.
        split: the held-out split scored.
        threshold: units with Cov_x E[z|x] at or below it are left out (inactive).
    """
    if dataset.train_labels is None:
        raise ValueError(f"probing latents needs labels; {dataset.name} has none")
    train, train_labels, test, test_labels = _standardised_means(model, dataset, binarize, seed, split, threshold)
    num_classes = int(train_labels.max()) + 1
    few = balanced_labelled_indices(train_labels, num_labels, num_classes, seed)
    return ProbeResult(
        active_units=train.shape[1],
        nearest_neighbour_few_labels=nearest_neighbour_accuracy(train[few], train_labels[few], test, test_labels),
        nearest_neighbour_all_labels=nearest_neighbour_accuracy(train, train_labels, test, test_labels),
        logistic_all_labels=logistic_regression_accuracy(train, train_labels, test, test_labels, num_classes),
    )

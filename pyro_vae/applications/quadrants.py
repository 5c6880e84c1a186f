"""The MNIST quadrant task of Sohn, Lee & Yan (2015): given 1, 2 or 3 quadrants of a digit, predict the rest.

Quadrants are revealed in the order bottom-left, top-left, top-right (as in pyro-ppl's CVAE
tutorial), so the bottom-right quadrant is always predicted. Inputs keep the grey pixels of the
observed quadrants and hold -1 elsewhere; outputs are binary images (a fresh Bernoulli draw of the
grey image per training epoch, one seeded draw for held-out splits), scored only where unobserved.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pyro_vae.data.batches import EpochBatches, fixed_binarization
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.runs.config import TrainConfig
from pyro_vae.inference.evaluate import dataset_elbo_terms, dataset_log_likelihood
from pyro_vae.models.structured_output import PriorProposal, StructuredOutputCVAE
from pyro_vae.inference.objectives import NegativeELBO, make_objective
from pyro_vae.training.trainer import train_steps

logger = logging.getLogger(__name__)

QUADRANT_ORDER = ("bottom-left", "top-left", "top-right", "bottom-right")
MISSING = -1.0


def observed_mask(num_observed: int, side: int = 28) -> torch.Tensor:
    """Flat bool mask of the pixels in the first ``num_observed`` quadrants of :data:`QUADRANT_ORDER`."""
    if num_observed not in (1, 2, 3):
        raise ValueError(f"the quadrant task observes 1, 2 or 3 quadrants, got {num_observed}")
    if side % 2:
        raise ValueError(f"images of side {side} have no quadrants of equal size; use an even side such as 28")
    half = side // 2
    rows_and_columns = {"bottom-left": (slice(half, None), slice(None, half)),
                        "top-left": (slice(None, half), slice(None, half)),
                        "top-right": (slice(None, half), slice(half, None))}
    mask = torch.zeros(side, side, dtype=torch.bool)
    for quadrant in QUADRANT_ORDER[:num_observed]:
        mask[rows_and_columns[quadrant]] = True
    return mask.flatten()


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


@dataclass
class QuadrantFit:
    """The epoch whose validation -ELBO was best (its weights are loaded) and the per-epoch history."""

    best_epoch: int
    best_valid_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def fit_quadrant_model(
    model: nn.Module,
    train_images: torch.Tensor,
    valid_images: torch.Tensor,
    observed: torch.Tensor,
    checkpoint_path: str | Path,
    *,
    max_epochs: int = 30,
    patience: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    kl_warmup_epochs: int = 0,
    seed: int = 0,
    valid_particles: int = 10,
    progress: bool = False,
) -> QuadrantFit:
    """Train by SVI (Trace_ELBO, Adam) with early stopping on the validation -ELBO; never sees test.

    The best epoch's weights are written to ``checkpoint_path`` (atomically) and loaded back.
    ``kl_warmup_epochs`` anneals the KL weight from 0 to 1 (Bowman et al., 2016) so that the
    recognition network learns to carry the target's information in z before z pays for it;
    validation always scores the full ELBO. Stops after ``patience`` epochs past the warm-up
    without improvement, or at ``max_epochs``.
    """
    loss_module = NegativeELBO(model, make_objective("elbo"))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batches = QuadrantBatches(train_images, observed, batch_size, seed)
    valid_inputs, valid_outputs = evaluation_pairs(valid_images, observed, seed + 1)
    fit = QuadrantFit(best_epoch=0, best_valid_loss=math.inf)
    step = 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        totals, first_nonfinite_step = train_steps(epoch, step, loss_module, optimizer, batches,
                                                   TrainConfig(kl_warmup_epochs=kl_warmup_epochs), progress)
        if not math.isinf(first_nonfinite_step.item()):
            raise RuntimeError(f"training diverged in epoch {epoch} at step {int(first_nonfinite_step.item())}; "
                               f"the best weights so far are in {checkpoint_path}; try a smaller learning rate")
        step += len(batches)
        model.eval()
        valid_elbo = dataset_elbo_terms(model, valid_inputs, valid_outputs, num_particles=valid_particles)["elbo"]
        record = {"epoch": epoch, "train_loss": loss_module.epoch_summary(totals.tolist())["loss"],
                  "valid_loss": -valid_elbo.double().mean().item()}
        fit.history.append(record)
        improved = record["valid_loss"] < fit.best_valid_loss
        if improved:
            fit.best_epoch, fit.best_valid_loss = epoch, record["valid_loss"]
            save_checkpoint({"model": model.state_dict(), "epoch": epoch, "history": fit.history}, checkpoint_path)
        logger.info("  epoch %2d  train -ELBO %.2f  valid -ELBO %.2f%s", epoch, record["train_loss"],
                    record["valid_loss"], "  *" if improved else "")
        if epoch - max(fit.best_epoch, kl_warmup_epochs) >= patience:
            break
    model.load_state_dict(load_checkpoint(checkpoint_path, map_location=train_images.device)["model"])
    model.eval()
    return fit


def conditional_log_likelihoods(
    model: nn.Module,
    inputs: torch.Tensor,
    outputs: torch.Tensor,
    *,
    num_samples: int = 100,
    num_particles: int = 10,
    batch_size: int = 500,
) -> dict[str, torch.Tensor]:
    """Per-datapoint log p(y|x) estimates, in nats.

    ``elbo``: the ELBO with ``num_particles`` samples (exactly log p(y|x) for the baseline);
    for a :class:`StructuredOutputCVAE` also ``importance_sampled`` (K = ``num_samples`` draws of
    q(z|x, y)) and ``prior_monte_carlo`` (K draws of p(z|x): log mean_k p(y|x, z_k)).
    """
    values = {"elbo": dataset_elbo_terms(model, inputs, outputs, batch_size=batch_size,
                                         num_particles=num_particles)["elbo"]}
    if isinstance(model, StructuredOutputCVAE):
        options = dict(num_samples=num_samples, chunk_size=num_samples, batch_size=batch_size)
        values["importance_sampled"] = dataset_log_likelihood(model, inputs, outputs, **options)["log_likelihood"]
        values["prior_monte_carlo"] = dataset_log_likelihood(PriorProposal(model), inputs, outputs,
                                                             **options)["log_likelihood"]
    return values

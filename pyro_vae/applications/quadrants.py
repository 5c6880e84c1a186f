"""The MNIST quadrant task of Sohn, Lee & Yan (2015): given 1, 2 or 3 quadrants of a digit, predict the rest.

Quadrants are revealed in the order bottom-left, top-left, top-right (as in pyro-ppl's CVAE
tutorial), so the bottom-right quadrant is always predicted. Inputs keep the grey pixels of the
observed quadrants and hold -1 elsewhere; outputs are binary images (a fresh Bernoulli draw of the
grey image per training epoch, one seeded draw for held-out splits), scored only where unobserved.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pyro_vae.data.datasets import as_dataset
from pyro_vae.inference.evaluate import dataset_elbo_terms, dataset_log_likelihood
from pyro_vae.models.structured_output import (MISSING, PriorProposal, QuadrantBatches, StructuredOutputCVAE,
                                               evaluation_pairs, masked_inputs)
from pyro_vae.runs.layout import METRICS_FILE
from pyro_vae.training.trainer import fit

__all__ = ["MISSING", "QUADRANT_ORDER", "QuadrantBatches", "QuadrantFit", "conditional_log_likelihoods",
           "evaluation_pairs", "fit_quadrant_model", "masked_inputs", "observed_mask"]

logger = logging.getLogger(__name__)

QUADRANT_ORDER = ("bottom-left", "top-left", "top-right", "bottom-right")


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


@dataclass
class QuadrantFit:
    """The epoch whose validation -ELBO was best (its weights are loaded), the per-epoch history and the run."""

    best_epoch: int
    best_valid_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    run_dir: Path | None = None


def fit_quadrant_model(
    model: nn.Module,
    train_images: torch.Tensor,
    valid_images: torch.Tensor,
    observed: torch.Tensor,
    run_dir: str | Path,
    *,
    max_epochs: int = 30,
    patience: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    kl_warmup_epochs: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> QuadrantFit:
    """Train by SVI with :func:`pyro_vae.fit` (the model's :class:`StructuredOutputPlan`: Trace_ELBO,
    Adam, outputs binarized afresh each epoch) with early stopping on the validation -ELBO; never
    sees test. The run directory ``run_dir`` holds the checkpoints; the best epoch's weights are loaded.

    ``kl_warmup_epochs`` anneals the KL weight from 0 to 1 (Bowman et al., 2016) so that the
    recognition network learns to carry the target's information in z before z pays for it;
    validation always scores the full ELBO. Stops after ``patience`` epochs past the warm-up
    without improvement, or at ``max_epochs``.
    """
    if not torch.equal(observed.to(model.target_mask.device), ~model.target_mask):
        raise ValueError("observed must be the complement of the model's target_mask")
    data = as_dataset(train_images, valid=valid_images, device=train_images.device)
    result = fit(model, data, out=run_dir, epochs=max_epochs, patience=patience, batch_size=batch_size, lr=lr,
                 kl_warmup_epochs=kl_warmup_epochs, seed=seed, device=str(train_images.device.type),
                 progress=progress, overwrite=True)
    records = [json.loads(line) for line in (Path(run_dir) / METRICS_FILE).read_text().splitlines() if line.strip()]
    history = [{"epoch": r["epoch"], "train_loss": r["train"]["loss"], "valid_loss": -r["valid"]["elbo"]}
               for r in records]
    best = history[result.best_epoch - 1]  # the score that chose it, not the summary's rescoring
    return QuadrantFit(best_epoch=result.best_epoch, best_valid_loss=best["valid_loss"], history=history,
                       run_dir=Path(run_dir))


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

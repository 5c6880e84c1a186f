"""Anomaly scores from a trained model: per-image -ELBO and -log p(x), and the AUROC that separates two sets."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn

from pyro_vae.runs.config import ConfigError
from pyro_vae.data.datasets import load_dataset
from pyro_vae.inference.evaluate import dataset_elbo_terms, dataset_log_likelihood, mean_terms
from pyro_vae.data.batches import evaluation_split
from pyro_vae.runs.run_dir import load_run


def auroc(in_distribution: torch.Tensor, out_of_distribution: torch.Tensor) -> float:
    """Area under the ROC curve of a score that should be higher out of distribution:
    P(score_out > score_in) + P(tie) / 2 (the Mann-Whitney U statistic over n_in * n_out), ties
    ranked by their average rank."""
    if len(in_distribution) == 0 or len(out_of_distribution) == 0:
        raise ValueError("AUROC needs at least one score in each set")
    scores = torch.cat([in_distribution, out_of_distribution]).double()
    if not torch.isfinite(scores).all():
        raise ValueError("AUROC needs finite scores; some are NaN or infinite")
    order = scores.argsort()
    sorted_scores = scores[order]
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(0).double()
    average_rank = last_rank - (counts.double() - 1) / 2  # ranks from 1; tied scores share their mean
    ranks = torch.empty_like(scores)
    ranks[order] = average_rank[inverse]
    n_in, n_out = len(in_distribution), len(out_of_distribution)
    u_statistic = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return float(u_statistic / (n_in * n_out))


def anomaly_scores(model: nn.Module, images: torch.Tensor, *, num_samples: int = 1000, num_particles: int = 10,
                   batch_size: int = 100, progress: bool = False) -> dict[str, torch.Tensor]:
    """Per-image ``negative_elbo`` (``num_particles`` samples) and ``negative_log_likelihood``
    (importance sampling, K = ``num_samples``), in nats; higher means less like the training data."""
    terms = dataset_elbo_terms(model, images, None, batch_size=batch_size, num_particles=num_particles)
    log_likelihood = dataset_log_likelihood(model, images, None, num_samples=num_samples, batch_size=batch_size,
                                            progress=progress)["log_likelihood"]
    return {"negative_elbo": -terms["elbo"], "negative_log_likelihood": -log_likelihood}


def score_run(path: str | Path, other_dataset: str | None = None, *, data_dir: str = "data", download: bool = True,
              split: str = "test", num_samples: int = 1000, num_particles: int = 10, batch_size: int = 100,
              device: str = "auto", progress: bool = True) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Anomaly scores of a run's best checkpoint on its own ``split`` and, given ``other_dataset``, on
    that dataset's ``split`` too (binarized as the run's data), with the AUROC of each score for
    telling the other dataset from the run's own. Returns the summary and the per-image scores per set.
    """
    run = load_run(path, device)
    if getattr(run.model, "needs_labels", False):
        raise ConfigError(f"score needs a model of x alone; {type(run.model).__name__} models x given its label "
                          "(needs_labels)")
    config = run.config
    seed = config.train.seed
    pyro.set_rng_seed(seed)
    sets = {config.data.dataset: evaluation_split(run.dataset, split, config.data.binarize, seed)[0]}
    if other_dataset is not None:
        other = load_dataset(other_dataset, data_dir, seed=seed, download=download,
                             device=run.dataset.train_images.device)
        if other.train_images.shape[1] != run.dataset.train_images.shape[1]:
            raise ConfigError(f"{other_dataset} images have {other.train_images.shape[1]} pixels but the model was "
                              f"trained on {run.dataset.train_images.shape[1]}; score data of the same size")
        if other_dataset == config.data.dataset:
            raise ConfigError(f"--dataset {other_dataset} is the run's own dataset; name another one to compare")
        sets[other_dataset] = evaluation_split(other, split, config.data.binarize, seed)[0]
    scores = {name: anomaly_scores(run.model, images, num_samples=num_samples, num_particles=num_particles,
                                   batch_size=batch_size, progress=progress)
              for name, images in sets.items()}
    summary: dict[str, Any] = {"checkpoint": str(run.checkpoint_path), "split": split, "num_samples": num_samples,
                               "num_particles": num_particles, "binarization": config.data.binarize, "seed": seed,
                               "sets": {name: {"n": len(values["negative_elbo"]),
                                               **mean_terms(values)}
                                        for name, values in scores.items()}}
    if other_dataset is not None:
        own = scores[config.data.dataset]
        summary["auroc"] = {key: auroc(own[key], scores[other_dataset][key]) for key in own}
        summary["in_distribution"], summary["out_of_distribution"] = config.data.dataset, other_dataset
    return summary, scores


def write_scores_csv(scores: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    """One row per image: its set, its index in that set's split and its scores (nats)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        columns = list(next(iter(scores.values())))
        writer.writerow(["dataset", "index", *columns])
        for name, values in scores.items():
            rows = torch.stack([values[c].double().cpu() for c in columns], dim=1).tolist()
            writer.writerows([name, index, *(f"{v:.6f}" for v in row)] for index, row in enumerate(rows))

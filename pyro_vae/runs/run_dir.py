"""A trained run read back from its checkpoint: settings, model, data; and its scores on a split."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from torch import nn

from pyro_vae.data.batches import evaluation_batches, fixed_binarization
from pyro_vae.runs.checkpoint import CheckpointError, load_checkpoint
from pyro_vae.runs.config import ConfigError, RunConfig, config_differences
from pyro_vae.data.datasets import Dataset, load_dataset
from pyro_vae.devices import resolve_device
from pyro_vae.inference.evaluate import (active_units, bits_per_dim, dataset_elbo_terms, dataset_log_likelihood,
                       mean_and_standard_error, posterior_means)
from pyro_vae.models import build_model, latent_means
from pyro_vae.models.semisupervised import classification_accuracy

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"
# Held-out splits are scored on one fixed binarization each, so numbers compare across epochs and runs.
BINARIZATION_SEED_OFFSETS = {"train": 0, "valid": 1, "test": 2}
STANDARD_IWAE_KS = (1, 5, 50, 500, 5000)


def evaluation_split(
    dataset: Dataset, split: str, binarize: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images of ``split`` binarized as evaluation sees them (one seeded sample), and labels."""
    images, labels = dataset.split(split)
    return fixed_binarization(images, binarize, seed + BINARIZATION_SEED_OFFSETS[split]), labels


@dataclass
class LoadedRun:
    """A checkpoint's resolved settings, its model with the checkpoint's weights, and its data."""

    checkpoint_path: Path
    config: RunConfig
    model: nn.Module
    dataset: Dataset
    checkpoint: dict[str, Any]


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a model and its data from a run directory (its best checkpoint) or a checkpoint file.

    The checkpoint carries the run's resolved settings, so the data is loaded as it was trained.
    """
    path = Path(path)
    checkpoint_path = path / BEST_CHECKPOINT if path.is_dir() else path
    if path.is_dir() and not checkpoint_path.is_file() and not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path} is not a run directory: no {CONFIG_FILE} or {BEST_CHECKPOINT} in it")
    device = resolve_device(device) if isinstance(device, str) else device
    checkpoint = load_checkpoint(checkpoint_path, map_location=device)
    config = RunConfig.from_dict(checkpoint["config"])
    if path.is_dir():
        differences = config_differences(RunConfig.load(path / CONFIG_FILE), config,
                                         ignore=("train.epochs", "distributed"))
        if differences:
            raise ConfigError(f"{checkpoint_path} was trained with other settings than {path / CONFIG_FILE} "
                              f"says ({'; '.join(differences)}); restore the run's config.json")
    model = build_model(config.model).to(device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    data = config.data
    dataset = load_dataset(data.dataset, data.data_dir, valid_size=data.valid_size, seed=config.train.seed,
                           download=data.download, device=device)
    return LoadedRun(checkpoint_path=checkpoint_path, config=config, model=model, dataset=dataset,
                     checkpoint=checkpoint)


def iwae_ks_for(num_samples: int) -> list[int]:
    """The standard k of the IWAE bounds (1, 5, 50, 500, 5000) that divide K, and K itself."""
    return sorted({k for k in STANDARD_IWAE_KS if k <= num_samples and num_samples % k == 0} | {num_samples})


def estimate_run(
    path: str | Path,
    split: str = "test",
    *,
    num_samples: int = 5000,
    num_particles: int = 10,
    chunk_size: int = 500,
    batch_size: int = 100,
    device: str = "auto",
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Score a run's best checkpoint (or a checkpoint file) on ``split``.

    Returns the summary (means in nats per image, standard errors, IWAE bounds, bits per dimension,
    active units; the protocol: dataset, binarization, split, K, seed) and the per-datapoint values.
    """
    started = time.perf_counter()
    run = load_run(path, device)
    seed = run.config.train.seed
    pyro.set_rng_seed(seed)
    images, labels = evaluation_split(run.dataset, split, run.config.data.binarize, seed)
    semisupervised = run.config.model.model == "ssvae"
    accuracy = classification_accuracy(run.model, images, labels, batch_size) if semisupervised else None
    if semisupervised:  # score log p(x): the label is a latent, proposed by q(y|x)
        labels = None
    per_datapoint = dataset_elbo_terms(run.model, images, labels, batch_size=batch_size,
                                       num_particles=num_particles, progress=progress)
    ks = iwae_ks_for(num_samples)
    per_datapoint.update(dataset_log_likelihood(run.model, images, labels, num_samples=num_samples,
                                                chunk_size=chunk_size, batch_size=batch_size, iwae_ks=ks,
                                                progress=progress))
    log_likelihood, log_likelihood_se = mean_and_standard_error(per_datapoint["log_likelihood"])
    summary: dict[str, Any] = {
        "checkpoint": str(run.checkpoint_path),
        "epoch": run.checkpoint["epoch"],
        "dataset": run.config.data.dataset,
        "binarization": run.config.data.binarize,
        "split": split,
        "n": len(images),
        "num_samples": num_samples,
        "num_particles": num_particles,
        "seed": seed,
        "log_likelihood_of": "log p(x|y)" if run.config.model.model == "cvae" else "log p(x)",
    }
    for key in ("elbo", "reconstruction", "kl", "kl_monte_carlo"):
        summary[key], summary[f"{key}_se"] = mean_and_standard_error(per_datapoint[key])
    summary.update(
        log_likelihood=log_likelihood,
        log_likelihood_se=log_likelihood_se,
        nll=-log_likelihood,
        bits_per_dim=bits_per_dim(-log_likelihood, images.shape[1]),
        active_units=active_units(posterior_means(run.model, images, labels, batch_size)),
        iwae_bounds={str(k): per_datapoint[f"iwae_{k}"].double().mean().item() for k in ks},
        seconds=time.perf_counter() - started,
    )
    if semisupervised:
        summary["accuracy"] = accuracy
    return summary, per_datapoint


def write_per_datapoint_csv(per_datapoint: dict[str, torch.Tensor], path: Path) -> None:
    """One row per datapoint (index and every per-datapoint value, nats), for your own statistics."""
    columns = list(per_datapoint)
    rows = torch.stack([per_datapoint[c].double().cpu() for c in columns], dim=1).tolist()
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", *columns])
        writer.writerows([index, *(f"{v:.6f}" for v in row)] for index, row in enumerate(rows))


def summarize_terms(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean over datapoints of each per-datapoint term."""
    return {key: value.double().mean().item() for key, value in terms.items()}


def write_embeddings(run: LoadedRun, split: str, path: Path, batch_size: int = 1000) -> torch.Tensor:
    """Write E_q[z|x] of every image of ``split`` (dataset order) and return them.

    ``.npy``: the (images, z_dim) array, and the labels, if any, in ``<stem>.labels.npy``;
    ``.csv``: a header ``index,label,z0,z1,...`` and one row per image.
    """
    path = Path(path)
    if path.suffix not in (".npy", ".csv"):
        raise ConfigError(f"--out {path}: write embeddings to a .npy or .csv file")
    images, labels = evaluation_split(run.dataset, split, run.config.data.binarize, run.config.train.seed)
    conditioned = run.config.model.model == "cvae"
    means = torch.cat([latent_means(run.model, x, y if conditioned else None)
                       for x, y in evaluation_batches(images, labels, batch_size)]).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, means.numpy())
        if labels is not None:
            np.save(path.with_name(f"{path.stem}.labels.npy"), labels.cpu().numpy())
        return means
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "label", *(f"z{d}" for d in range(means.shape[1]))])
        label_values = labels.tolist() if labels is not None else [""] * len(means)
        writer.writerows([index, label, *(f"{v:.6f}" for v in row)]
                         for index, (label, row) in enumerate(zip(label_values, means.tolist())))
    return means

"""A trained run read back from its run directory: settings, model, data; its scores on a split."""

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

from pyro_vae.contract import (ModelContractError, build_configured_model, labels_for_model, model_spec,
                               resolve_target)
from pyro_vae.data.batches import evaluation_batches, evaluation_split
from pyro_vae.data.datasets import Dataset, as_dataset, load_dataset
from pyro_vae.devices import resolve_device
from pyro_vae.inference.ais import bdmc
from pyro_vae.inference.estimators import get_estimator
from pyro_vae.models.semisupervised import classification_accuracy
from pyro_vae.inference.evaluate import (active_units, bits_per_dim, dataset_elbo_terms, latent_means,
                                         mean_and_standard_error, posterior_means)
from pyro_vae.runs.checkpoint import CheckpointError, load_checkpoint
from pyro_vae.runs.config import ConfigError, RunConfig, config_differences
from pyro_vae.runs.layout import BEST_CHECKPOINT, CONFIG_FILE


@dataclass
class LoadedRun:
    """A checkpoint's resolved settings, its model with the checkpoint's weights, and its data."""

    checkpoint_path: Path
    config: RunConfig
    model: nn.Module
    dataset: Dataset
    checkpoint: dict[str, Any]


def load_run(path: str | Path, device: str | torch.device = "cpu", *, model: nn.Module | None = None,
             data: Any = None) -> LoadedRun:
    """Rebuild a model and its data from a run directory (its best checkpoint) or a checkpoint file.

    The model is rebuilt from the import path and keyword arguments the run recorded; pass ``model``
    (an instance of the same class) where they cannot be (a class defined in a notebook). The data
    is loaded as it was trained; a run trained on data of your own needs that data as ``data``.
    """
    path = Path(path).expanduser()
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
    model = _run_model(config, model).to(device)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise ModelContractError(f"{checkpoint_path}: the weights do not fit {type(model).__name__} "
                                 f"({str(error).splitlines()[0]}); build the model with the run's arguments") from None
    model.eval()
    return LoadedRun(checkpoint_path=checkpoint_path, config=config, model=model,
                     dataset=_run_data(config, data, device), checkpoint=checkpoint)


def _run_model(config: RunConfig, model: nn.Module | None) -> nn.Module:
    if model is not None:
        target = model_spec(model).target
        if resolve_target(target) != resolve_target(config.model.model):
            raise ModelContractError(f"the run trained {config.model.model} but model= is a {target}")
        return model
    if config.model.args is None:
        raise ModelContractError(f"the run recorded {config.model.model} without its arguments (the model was built "
                                 "before fit); pass load_run(..., model=YourModel(...))")
    return build_configured_model(config.model, int(np.prod(config.data.shape)))


def _run_data(config: RunConfig, data: Any, device: torch.device) -> Dataset:
    """The run's data: given, or loaded by name as it was trained."""
    settings = config.data
    if data is not None:
        return as_dataset(data, valid_size=settings.valid_size, seed=config.train.seed, device=device)
    if settings.dataset == "custom":
        raise ConfigError("the run was trained on data passed to fit() in Python; pass the same data to "
                          "load_run(..., data=...) or estimate_run(..., data=...)")
    seed = config.train.seed if settings.valid_seed is None else settings.valid_seed
    return load_dataset(settings.dataset, settings.data_dir, valid_size=settings.valid_size, seed=seed,
                        download=settings.download, device=device)


def estimate_run(
    path: str | Path,
    split: str = "test",
    *,
    estimator: str = "is",
    num_samples: int = 5000,
    num_particles: int = 10,
    chunk_size: int = 500,
    batch_size: int = 100,
    device: str = "auto",
    progress: bool = True,
    model: nn.Module | None = None,
    data: Any = None,
    estimator_options: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Score a run's best checkpoint (or a checkpoint file) on ``split`` with a registered ``estimator``
    (``estimator_options``: its own settings, such as AIS's ``num_steps``).

    Returns the summary (means in nats per datapoint, standard errors, bounds, bits per dimension,
    active units where the guide has a site ``z``; the protocol: dataset, binarization, split,
    estimator, K, seed) and the per-datapoint values. ``model`` and ``data`` as in :func:`load_run`.
    """
    started = time.perf_counter()
    estimate = get_estimator(estimator)
    run = load_run(path, device, model=model, data=data)
    seed = run.config.train.seed
    pyro.set_rng_seed(seed)
    images, all_labels = evaluation_split(run.dataset, split, run.config.data.binarize, seed)
    labels = labels_for_model(run.model, all_labels)
    per_datapoint = dataset_elbo_terms(run.model, images, labels, batch_size=batch_size,
                                       num_particles=num_particles, progress=progress)
    options = dict(estimator_options or {})
    per_datapoint.update(estimate(run.model, images, labels, num_samples=num_samples, chunk_size=chunk_size,
                                  batch_size=batch_size, progress=progress, **options))
    log_likelihood, log_likelihood_se = mean_and_standard_error(per_datapoint["log_likelihood"])
    summary: dict[str, Any] = {
        "checkpoint": str(run.checkpoint_path),
        "epoch": run.checkpoint["epoch"],
        "model": run.config.model.model,
        "dataset": run.config.data.dataset,
        "binarization": run.config.data.binarize,
        "split": split,
        "n": len(images),
        "estimator": estimator,
        "estimator_options": options,
        "num_samples": num_samples,
        "num_particles": num_particles,
        "seed": seed,
        "log_likelihood_of": "log p(x|y)" if labels is not None else "log p(x)",
    }
    for key in ("elbo", "reconstruction", "kl", "kl_monte_carlo"):
        summary[key], summary[f"{key}_se"] = mean_and_standard_error(per_datapoint[key])
    summary.update(
        log_likelihood=log_likelihood,
        log_likelihood_se=log_likelihood_se,
        nll=-log_likelihood,
        bits_per_dim=bits_per_dim(-log_likelihood, images.shape[1]),
        active_units=_active_units(run.model, images, labels, batch_size),
        iwae_bounds={key.removeprefix("iwae_"): value.double().mean().item()
                     for key, value in per_datapoint.items() if key.startswith("iwae_")},
    )
    if "ais_acceptance" in per_datapoint:
        summary["acceptance_rate"] = per_datapoint["ais_acceptance"].double().mean().item()
    if callable(getattr(run.model, "predict", None)) and all_labels is not None:
        summary["accuracy"] = classification_accuracy(run.model, images, all_labels, batch_size)
    summary["seconds"] = time.perf_counter() - started
    return summary, per_datapoint


def bdmc_run(path: str | Path, num_images: int, *, num_steps: int = 100, num_chains: int = 16,
             leapfrog_steps: int = 10, init: str = "guide", device: str = "auto", progress: bool = True
             ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Bidirectional Monte Carlo (:func:`pyro_vae.bdmc`) for a run's best checkpoint on ``num_images``
    datapoints simulated from it: mean lower and upper bounds of log p(x), their gap, the settings and
    the seconds it took; and the per-datapoint bounds."""
    started = time.perf_counter()
    run = load_run(path, device)
    pyro.set_rng_seed(run.config.train.seed)
    result = bdmc(run.model, num_images, run.dataset.x_dim, num_steps=num_steps, num_chains=num_chains,
                  leapfrog_steps=leapfrog_steps, init=init, progress=progress)
    per_datapoint = {"bdmc_lower": result.lower, "bdmc_upper": result.upper, "bdmc_gap": result.gap}
    summary: dict[str, Any] = {
        "checkpoint": str(run.checkpoint_path), "epoch": run.checkpoint["epoch"], "model": run.config.model.model,
        "estimator": "bdmc", "num_images": num_images, "simulated_from": "the model (binary samples of x)",
        "estimator_options": {"num_steps": num_steps, "num_chains": num_chains, "leapfrog_steps": leapfrog_steps,
                              "init": init},
        "seed": run.config.train.seed,
        **{key.removeprefix("bdmc_"): value.double().mean().item() for key, value in per_datapoint.items()},
        "seconds": time.perf_counter() - started,
    }
    return summary, per_datapoint


def _active_units(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int) -> int | None:
    """Active units of the guide's site ``z`` (None, with a notice, for a guide without one)."""
    try:
        return active_units(posterior_means(model, images, labels, batch_size))
    except ValueError:
        return None


def write_per_datapoint_csv(per_datapoint: dict[str, torch.Tensor], path: Path) -> None:
    """One row per datapoint (index and every per-datapoint value, nats), for your own statistics."""
    columns = list(per_datapoint)
    rows = torch.stack([per_datapoint[c].double().cpu() for c in columns], dim=1).tolist()
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", *columns])
        writer.writerows([index, *(f"{v:.6f}" for v in row)] for index, row in enumerate(rows))


def write_embeddings(run: LoadedRun, split: str, path: Path, batch_size: int = 1000) -> torch.Tensor:
    """Write a summary z of every datapoint of ``split`` (dataset order; see
    :func:`~pyro_vae.inference.evaluate.latent_means`) and return them.

    ``.npy``: the (datapoints, z_dim) array, and the labels, if any, in ``<stem>.labels.npy``;
    ``.csv``: a header ``index,label,z0,z1,...`` and one row per datapoint.
    """
    path = Path(path)
    if path.suffix not in (".npy", ".csv"):
        raise ConfigError(f"--out {path}: write embeddings to a .npy or .csv file")
    images, labels = evaluation_split(run.dataset, split, run.config.data.binarize, run.config.train.seed)
    means = torch.cat([latent_means(run.model, x, labels_for_model(run.model, y))
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

"""Resolve a run's data settings (``auto`` dataset and binarization) and load its images."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from pyro_vae.runs.config import DataConfig
from pyro_vae.data.datasets import Dataset, DatasetUnavailable, load_dataset

logger = logging.getLogger(__name__)


def load_run_data(config: DataConfig, seed: int, device: torch.device) -> tuple[Dataset, DataConfig]:
    """Load the configured dataset and return it with settings resolved: ``auto`` replaced by the
    dataset used, ``data_dir`` made absolute (so the run can be evaluated from anywhere), the
    datapoints' shape recorded. The binarization is resolved by training, which knows the model.

    ``dataset="auto"`` is MNIST when its files are in ``data_dir`` or can be downloaded, else the
    bundled ``mnist-sample`` (with a notice).
    """
    name = config.dataset
    options = dict(valid_size=config.valid_size, seed=seed, download=config.download, device=device)
    if name == "auto":
        try:
            dataset = load_dataset("mnist", config.data_dir, **options)
        except DatasetUnavailable:
            logger.warning("notice: MNIST is neither in %s nor downloadable; using the bundled mnist-sample "
                           "instead (pass --data-dir DIR to use a local copy)", config.data_dir)
            dataset = load_dataset("mnist-sample", config.data_dir, **options)
    else:
        dataset = load_dataset(name, config.data_dir, **options)
    resolved = dataclasses.replace(
        config, dataset=dataset.name, data_dir=str(Path(config.data_dir).resolve()),
        valid_size=len(dataset.valid_images), shape=list(dataset.shape), valid_seed=dataset.valid_seed,
    )
    return dataset, resolved

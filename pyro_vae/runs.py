"""A trained run read back from its directory: settings, model, data, and evaluation of a split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .batches import fixed_binarization
from .checkpoint import load_checkpoint
from .config import RunConfig
from .data import Dataset, load_dataset
from .devices import resolve_device
from .evaluate import dataset_elbo_terms, mean_and_standard_error
from .models import build_model

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"
# Held-out splits are scored on one fixed binarization each, so numbers compare across epochs and runs.
BINARIZATION_SEED_OFFSETS = {"train": 0, "valid": 1, "test": 2}


def evaluation_split(
    dataset: Dataset, split: str, binarize: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images of ``split`` binarized as evaluation sees them (one seeded sample), and labels."""
    images, labels = dataset.split(split)
    return fixed_binarization(images, binarize, seed + BINARIZATION_SEED_OFFSETS[split]), labels


@dataclass
class LoadedRun:
    """A run's resolved settings, its model with a checkpoint's weights, and its data."""

    run_dir: Path
    config: RunConfig
    model: nn.Module
    dataset: Dataset
    checkpoint: dict[str, Any]


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", which: str = "best") -> LoadedRun:
    """Rebuild a run's model from ``checkpoints/{which}.pt`` and load its data as it was trained."""
    run_dir = Path(run_dir)
    config = RunConfig.load(run_dir / CONFIG_FILE)
    device = resolve_device(device) if isinstance(device, str) else device
    checkpoint = load_checkpoint(run_dir / "checkpoints" / f"{which}.pt", map_location=device)
    model = build_model(config.model).to(device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    data = config.data
    dataset = load_dataset(data.dataset, data.data_dir, valid_size=data.valid_size, seed=config.train.seed,
                           download=data.download, device=device)
    return LoadedRun(run_dir=run_dir, config=config, model=model, dataset=dataset, checkpoint=checkpoint)


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    num_particles: int = 1,
    batch_size: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """ELBO and its terms (nats per image, with standard errors) of a run's best checkpoint."""
    run = load_run(run_dir, device)
    seed = run.config.train.seed
    torch.manual_seed(seed)
    images, labels = evaluation_split(run.dataset, split, run.config.data.binarize, seed)
    terms = dataset_elbo_terms(run.model, images, labels, batch_size=batch_size or run.config.train.eval_batch_size,
                               num_particles=num_particles, progress=True)
    results: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "dataset": run.config.data.dataset,
        "binarization": run.config.data.binarize,
        "split": split,
        "n": len(images),
        "epoch": run.checkpoint["epoch"],
        "num_particles": num_particles,
        "seed": seed,
    }
    for key, values in terms.items():
        results[key], results[f"{key}_se"] = mean_and_standard_error(values)
    return results


def summarize_terms(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean over datapoints of each per-datapoint term."""
    return {key: value.double().mean().item() for key, value in terms.items()}


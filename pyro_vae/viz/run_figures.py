"""The figures that fit a run's model, written as PNGs into the run's ``figures/`` folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from pyro_vae.viz import plots
from pyro_vae.data.batches import evaluation_batches
from pyro_vae.data.corruption import masked_block, salt_and_pepper
from pyro_vae.models import latent_means
from pyro_vae.models.cvae import ConditionalVAE
from pyro_vae.runs.run_dir import METRICS_FILE, LoadedRun, evaluation_split

FIGURES_DIR = "figures"
DPI = 110


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG (parent folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def first_of_each_class(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` images taking the classes in turn: the first 0, the first 1, ..., then the second 0."""
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels)  # where each image's class begins in the sort
    rank_in_class = torch.empty_like(order)
    rank_in_class[order] = torch.arange(len(labels), device=labels.device) - starts
    key = rank_in_class * (int(labels.max()) + 1) + labels
    return key.argsort()[:count]


def snapshot_figures(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, seed: int = 0
                     ) -> dict[str, Figure]:
    """Reconstructions of ``images`` and samples from the prior: what training draws as it goes."""
    was_training = model.training
    model.eval()
    figures = {"reconstructions": plots.reconstructions_figure(model, images, labels),
               "samples": plots.samples_figure(model, 64, None, seed)}
    model.train(was_training)
    return figures


def training_snapshot(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, out_dir: Path,
                      suffix: str = "", seed: int = 0) -> list[Path]:
    """:func:`snapshot_figures` written as ``reconstructions{suffix}.png`` and ``samples{suffix}.png``."""
    return [save_figure(figure, out_dir / f"{name}{suffix}.png")
            for name, figure in snapshot_figures(model, images, labels, seed).items()]


def write_run_figures(run: LoadedRun, run_dir: Path, out_dir: Path | None = None, num_images: int = 10,
                      latent_method: str = "pca", max_scatter_points: int = 5000) -> list[Path]:
    """Every figure that fits the run's model, from its best checkpoint and its test split.

    All models: reconstructions, samples, latent scatter, interpolation, traversals, denoising,
    training curves. A 2-D latent VAE also gets the decoded manifold; conditional models
    (CVAE, M2) a class-conditional grid. Returns the written paths.
    """
    out_dir = out_dir or run_dir / FIGURES_DIR
    model, config = run.model, run.config
    seed = config.train.seed
    images, labels = evaluation_split(run.dataset, "test", config.data.binarize, seed)
    chosen = first_of_each_class(labels, num_images) if labels is not None else torch.arange(num_images)
    x, y = images[chosen], None if labels is None else labels[chosen]
    conditioned = isinstance(model, ConditionalVAE) and config.model.model == "cvae"
    y_for_model = y if conditioned else None
    paths = training_snapshot(model, x, y_for_model, out_dir, seed=seed)

    scatter_images = images[:max_scatter_points]
    scatter_labels = None if labels is None else labels[:max_scatter_points]
    means = torch.cat([latent_means(model, batch, batch_labels if conditioned else None)
                       for batch, batch_labels in evaluation_batches(scatter_images, scatter_labels, 1000)])
    paths.append(save_figure(plots.latent_scatter(means, scatter_labels, latent_method, seed),
                             out_dir / "latent_space.png"))
    half = len(x) // 2
    paths.append(save_figure(plots.interpolation_figure(model, x[:half], x[half:2 * half], 10,
                                                        None if y_for_model is None else y_for_model[:half]),
                             out_dir / "interpolation.png"))
    most_active = means.double().var(0).argsort(descending=True)[:min(10, means.shape[1])].tolist()
    paths.append(save_figure(plots.traversal_figure(model, x[:1], most_active,
                                                    y=None if y_for_model is None else y_for_model[:1]),
                             out_dir / "traversals.png"))
    corrupted = torch.cat([salt_and_pepper(x[:half], 0.1, seed), masked_block(x[half:], 10, seed=seed)])
    paths.append(save_figure(plots.denoising_figure(model, x, corrupted, y_for_model), out_dir / "denoising.png"))
    if isinstance(model, ConditionalVAE):
        paths.append(save_figure(plots.class_conditional_grid(model, seed=seed), out_dir / "class_conditional.png"))
    elif model.z_dim == 2:
        paths.append(save_figure(plots.manifold_grid(model), out_dir / "manifold.png"))
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        if records:
            paths.append(save_figure(plots.training_curves(records), out_dir / "training_curves.png"))
    return paths

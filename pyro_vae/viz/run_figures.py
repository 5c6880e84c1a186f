"""The figures that fit a run's model, written as PNGs into the run's ``figures/`` folder.

Each figure is drawn when the model and the data allow it; otherwise it is skipped with one
logged line saying why (no ``decode``, data that are not images, a latent that is not 2-D).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from pyro_vae.contract import labels_for_model
from pyro_vae.data.batches import evaluation_batches, evaluation_split
from pyro_vae.data.corruption import masked_block, salt_and_pepper
from pyro_vae.data.datasets import Dataset
from pyro_vae.inference.evaluate import latent_means
from pyro_vae.runs.layout import FIGURES_DIR, METRICS_FILE
from pyro_vae.runs.run_dir import LoadedRun
from pyro_vae.viz import plots

logger = logging.getLogger(__name__)
DPI = 110


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG (parent folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def write_figures(figures: dict[str, Figure], run_dir: Path, suffix: str = "", out_dir: Path | None = None
                  ) -> list[Path]:
    """Save each figure as ``NAME{suffix}.png`` in ``out_dir`` (default ``run_dir/figures``)."""
    out_dir = out_dir or run_dir / FIGURES_DIR
    return [save_figure(figure, out_dir / f"{name}{suffix}.png") for name, figure in figures.items()]


def first_of_each_class(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` images taking the classes in turn: the first 0, the first 1, ..., then the second 0."""
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels)  # where each image's class begins in the sort
    rank_in_class = torch.empty_like(order)
    rank_in_class[order] = torch.arange(len(labels), device=labels.device) - starts
    key = rank_in_class * (int(labels.max()) + 1) + labels
    return key.argsort()[:count]


def _shown(images: torch.Tensor, labels: torch.Tensor | None, count: int) -> torch.Tensor:
    """Which datapoints figures show: one per class in turn where labelled, else the first ``count``."""
    return first_of_each_class(labels, count) if labels is not None else torch.arange(min(count, len(images)))


def _draw(figures: dict[str, Figure], name: str, draw: Callable[[], Figure]) -> None:
    """Add ``draw()`` as ``name``, or log one line saying why the model or data cannot have it.

    A figure never ends a run: beyond the ValueErrors that say what a model lacks, any error of a
    model's own methods is logged with its type, and the figure skipped.
    """
    try:
        figures[name] = draw()
    except ValueError as error:
        logger.info("figure %s skipped: %s", name, error)
    except Exception as error:  # noqa: BLE001 - a user's model may fail in any way; the run's results stand
        logger.warning("figure %s skipped: %s: %s", name, type(error).__name__, str(error).splitlines()[0] if str(error) else "")


def snapshot_figures(model: nn.Module, dataset: Dataset, images: torch.Tensor, labels: torch.Tensor | None,
                     seed: int = 0, count: int = 10) -> dict[str, Figure]:
    """Reconstructions of ``count`` of ``images`` and samples from the prior: what training draws as it goes."""
    figures: dict[str, Figure] = {}
    image_shape = dataset.image_shape
    if image_shape is None:
        logger.info("figures skipped: the data are not images (datapoints of shape %s)", tuple(dataset.shape))
        return figures
    chosen = _shown(images, labels, count)
    y = labels_for_model(model, None if labels is None else labels[chosen])
    was_training = model.training
    model.eval()
    _draw(figures, "reconstructions", lambda: plots.reconstructions_figure(model, images[chosen], y, image_shape))
    _draw(figures, "samples", lambda: plots.samples_figure(model, 64, None, seed, dataset.x_dim, image_shape))
    model.train(was_training)
    return figures


def write_run_figures(run: LoadedRun, run_dir: Path, out_dir: Path | None = None, num_images: int = 10,
                      latent_method: str = "pca", max_scatter_points: int = 5000) -> list[Path]:
    """Every figure that fits the run's model, from its best checkpoint and its test split (valid without one).

    Reconstructions, samples, latent scatter, interpolation, traversals, denoising, training curves;
    a 2-D latent also gets the decoded manifold, a class-conditional model its class grid and analogies. Returns
    the written paths.
    """
    model, config, dataset = run.model, run.config, run.dataset
    seed = config.train.seed
    split = "test" if "test" in dataset.splits else "valid"
    images, labels = evaluation_split(dataset, split, config.data.binarize, seed)
    figures = snapshot_figures(model, dataset, images, labels, seed, num_images)
    model_labels = labels_for_model(model, labels)
    scatter_images = images[:max_scatter_points]
    scatter_labels = None if labels is None else labels[:max_scatter_points]
    scatter_model_labels = None if model_labels is None else model_labels[:max_scatter_points]
    means = torch.cat([latent_means(model, x, y)
                       for x, y in evaluation_batches(scatter_images, scatter_model_labels, 1000)])
    _draw(figures, "latent_space", lambda: plots.latent_scatter(means, scatter_labels, latent_method, seed))
    image_shape = dataset.image_shape
    if image_shape is not None:
        chosen = _shown(images, labels, num_images)
        x, y = images[chosen], None if model_labels is None else model_labels[chosen]
        half = len(x) // 2
        _draw(figures, "interpolation", lambda: plots.interpolation_figure(
            model, x[:half], x[half:2 * half], 10, None if y is None else y[:half], image_shape))
        most_active = means.double().var(0).argsort(descending=True)[:min(10, means.shape[1])].tolist()
        _draw(figures, "traversals", lambda: plots.traversal_figure(
            model, x[:1], most_active, y=None if y is None else y[:1], image_shape=image_shape))
        corrupted = torch.cat([salt_and_pepper(x[:half], 0.1, seed), masked_block(x[half:], 10, image_shape, seed)])
        _draw(figures, "denoising", lambda: plots.denoising_figure(model, x, corrupted, y, image_shape))
        if hasattr(model, "num_classes"):
            _draw(figures, "class_conditional", lambda: plots.class_conditional_grid(
                model, seed=seed, x_dim=dataset.x_dim, image_shape=image_shape))
            _draw(figures, "analogies", lambda: plots.analogies_figure(model, x, y, image_shape))
        elif means.shape[1] == 2:
            _draw(figures, "manifold", lambda: plots.manifold_grid(model, image_shape=image_shape))
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        _draw(figures, "training_curves", lambda: plots.training_curves(records))
    return write_figures(figures, run_dir, out_dir=out_dir)

"""Figures as matplotlib objects (no pyplot, no display needed); the caller decides where to save them."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from .models.cvae import ConditionalVAE
from .models.vae import VAE


def image_grid(images: torch.Tensor, num_rows: int, image_shape: tuple[int, int] = (28, 28),
               row_labels: list[str] | None = None, title: str | None = None) -> Figure:
    """Images (flat, values in [0, 1]) in a grid of ``num_rows`` rows, black on white as digits are drawn."""
    num_columns = -(-len(images) // num_rows)
    height, width = image_shape
    canvas = torch.ones(num_rows * height, num_columns * width)
    for index, image in enumerate(images.detach().float().cpu()):
        row, column = divmod(index, num_columns)
        canvas[row * height:(row + 1) * height, column * width:(column + 1) * width] = image.reshape(height, width)
    figure = Figure(figsize=(0.5 * num_columns + (0.6 if row_labels else 0.2), 0.5 * num_rows + 0.4))
    axes = figure.add_subplot()
    axes.imshow(canvas.numpy(), cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_xticks([])
    if row_labels:
        axes.set_yticks([(row + 0.5) * height for row in range(num_rows)], labels=row_labels)
        axes.tick_params(length=0)
    else:
        axes.set_yticks([])
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


@torch.no_grad()
def class_conditional_grid(model: ConditionalVAE, num_columns: int = 10, seed: int = 0) -> Figure:
    """Means of p(x|y, z): one row per class y, one style z ~ p(z) per column, shared down the column."""
    styles = _prior_draws(model, num_columns, seed)
    labels = torch.arange(model.num_classes, device=styles.device).repeat_interleave(num_columns)
    images = model.sample_images(labels, styles.repeat(model.num_classes, 1))
    return image_grid(images, model.num_classes, row_labels=[str(c) for c in range(model.num_classes)],
                      title="p(x | y, z): a row per class y, a style z per column")


@torch.no_grad()
def samples_figure(model: VAE | ConditionalVAE, num_images: int = 64, label: int | None = None,
                   seed: int = 0) -> Figure:
    """Means of p(x|z) (or of p(x|y=label, z)) for ``num_images`` draws z ~ p(z), in a square-ish grid.

    A label-conditioned model without ``label`` gives :func:`class_conditional_grid` instead.
    """
    conditional = isinstance(model, ConditionalVAE)
    if label is not None and not conditional:
        raise ValueError(f"--label needs a model that generates a chosen class (cvae or ssvae); this one is a "
                         f"{type(model).__name__}, drop --label")
    if conditional and label is None:
        return class_conditional_grid(model, num_columns=max(1, num_images // model.num_classes), seed=seed)
    z = _prior_draws(model, num_images, seed)
    if conditional:
        if not 0 <= label < model.num_classes:
            raise ValueError(f"--label {label} is not a class of this model; use 0..{model.num_classes - 1}")
        labels = torch.full((num_images,), label, dtype=torch.long, device=z.device)
        images, title = model.sample_images(labels, z), f"p(x | y={label}, z), z ~ p(z)"
    else:
        images, title = model.sample_images(num_images, z), "p(x | z), z ~ p(z)"
    return image_grid(images, num_rows=max(1, round(num_images ** 0.5)), title=title)


def _prior_draws(model: VAE | ConditionalVAE, num: int, seed: int) -> torch.Tensor:
    """``num`` seeded draws from p(z) = N(0, I), on the model's device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num, model.z_dim, generator=generator).to(next(model.parameters()).device)

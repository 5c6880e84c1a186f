"""Figures as matplotlib objects (no pyplot, no display needed); the caller decides where to save them.

Images are drawn as digits are, black ink on white, on the fixed range [0, 1] of pixel
probabilities. Figures use only the model contract (:mod:`pyro_vae.models`): prior draws come from
running the model, so a learned prior is drawn as it is; ``decode(z, y=None)`` is needed for the
figures that decode chosen latents, and raises a ValueError naming the method otherwise.
Conditional models take the images' labels ``y``; a model with ``predict(x)`` (M2) uses its
classifier's label when ``y`` is not given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from matplotlib.figure import Figure

import pyro
from pyro import poutine
from torch import nn

from pyro_vae.inference.evaluate import latent_means

Model = nn.Module


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


def _x_dim(model: Model, x_dim: int | None) -> int:
    if x_dim is None:
        x_dim = getattr(model, "x_dim", None)
    if x_dim is None:
        raise ValueError(f"{type(model).__name__} has no x_dim attribute; pass x_dim, the values per datapoint")
    return x_dim


def _device(model: Model) -> torch.device:
    return next(model.parameters()).device


def _model_trace(model: Model, num: int, seed: int, x_dim: int | None, y: torch.Tensor | None = None):
    """A trace of ``model.model`` on ``num`` placeholder datapoints: its latent sites hold draws from the
    prior (seeded, the global random state untouched), its observed sites p(x|z) of those draws."""
    placeholder = torch.zeros(num, _x_dim(model, x_dim), device=_device(model))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        pyro.set_rng_seed(seed)
        return poutine.trace(model.model).get_trace(placeholder, y)


def prior_latents(model: Model, num: int, seed: int = 0, x_dim: int | None = None, y: torch.Tensor | None = None,
                  site: str = "z") -> torch.Tensor:
    """``num`` seeded draws of the latent ``site`` from the model's own prior (running the model)."""
    trace = _model_trace(model, num, seed, x_dim, y)
    if site not in trace.nodes:
        raise ValueError(f"the model of {type(model).__name__} has no sample site {site!r}")
    return trace.nodes[site]["value"]


def _require_decode(model: Model, figure: str) -> None:
    if not callable(getattr(model, "decode", None)):
        raise ValueError(f"{figure} needs a decode(z, y=None) method, which {type(model).__name__} does not have")


def _is_class_conditional(model: Model) -> bool:
    return hasattr(model, "num_classes") and callable(getattr(model, "decode", None))


@torch.no_grad()
def class_conditional_grid(model: Model, num_columns: int = 10, seed: int = 0, x_dim: int | None = None,
                           image_shape: tuple[int, int] = (28, 28)) -> Figure:
    """Means of p(x|y, z): one row per class y, one style z ~ p(z) per column, shared down the column."""
    if not _is_class_conditional(model):
        raise ValueError(f"the class-conditional grid needs num_classes and decode(z, y), which "
                         f"{type(model).__name__} does not have")
    labels = torch.arange(model.num_classes, device=_device(model)).repeat_interleave(num_columns)
    styles = prior_latents(model, num_columns, seed, x_dim, y=labels[:num_columns])
    images = model.decode(styles.repeat(model.num_classes, 1), labels)
    return image_grid(images, model.num_classes, image_shape, row_labels=[str(c) for c in range(model.num_classes)],
                      title="p(x | y, z): a row per class y, a style z per column")


@torch.no_grad()
def analogies_figure(model: Model, x: torch.Tensor, y: torch.Tensor | None = None,
                     image_shape: tuple[int, int] = (28, 28)) -> Figure:
    """Kingma et al.'s analogies (2014, fig. 1): a row per image, the image first, then the means of
    p(x|y=c, z) for every class c at the image's style z = E_q[z|x, y], y its label (given, else the
    classifier's). A model that separates class from style keeps each row's style across the classes."""
    if not _is_class_conditional(model):
        raise ValueError(f"analogies need num_classes and decode(z, y), which {type(model).__name__} does not have")
    y = _labels_for_decoding(model, x, y)
    styles = latent_means(model, x, y)
    classes = torch.arange(model.num_classes, device=styles.device)
    decoded = model.decode(styles.repeat_interleave(model.num_classes, 0), classes.repeat(len(x)))
    rows = torch.cat([x[:, None].to(decoded.dtype), decoded.reshape(len(x), model.num_classes, -1)], dim=1)
    return image_grid(rows.reshape(-1, rows.shape[-1]), len(x), image_shape,
                      title=f"analogies: an image, then its style z with y = 0..{model.num_classes - 1}")


@torch.no_grad()
def samples_figure(model: Model, num_images: int = 64, label: int | None = None, seed: int = 0,
                   x_dim: int | None = None, image_shape: tuple[int, int] = (28, 28)) -> Figure:
    """Means of p(x|z) (or of p(x|y=label, z)) for ``num_images`` draws z ~ p(z), in a square-ish grid.

    A class-conditional model without ``label`` gives :func:`class_conditional_grid` instead; a model
    with ``sample_images(num_images)`` draws its own; any other model is run on placeholder data, its
    latents drawn from its prior, and the means of its observed site shown.
    """
    rows = max(1, round(num_images ** 0.5))
    if label is not None:
        if not _is_class_conditional(model):
            raise ValueError(f"--label needs a model that generates a chosen class (num_classes and decode(z, y)); "
                             f"{type(model).__name__} is not one, drop --label")
        if not 0 <= label < model.num_classes:
            raise ValueError(f"--label {label} is not a class of this model; use 0..{model.num_classes - 1}")
        labels = torch.full((num_images,), label, dtype=torch.long, device=_device(model))
        z = prior_latents(model, num_images, seed, x_dim, y=labels)
        return image_grid(model.decode(z, labels), rows, image_shape, title=f"p(x | y={label}, z), z ~ p(z)")
    if _is_class_conditional(model):
        return class_conditional_grid(model, max(1, num_images // model.num_classes), seed, x_dim, image_shape)
    if callable(getattr(model, "sample_images", None)):
        with torch.random.fork_rng(devices=[]):
            pyro.set_rng_seed(seed)
            images = model.sample_images(num_images)
    else:
        trace = _model_trace(model, num_images, seed, x_dim)
        observed = [site for site in trace.nodes.values() if site["type"] == "sample" and site["is_observed"]]
        if len(observed) != 1:
            raise ValueError(f"samples need one observed site or a sample_images method; {type(model).__name__} has "
                             f"{len(observed)} observed sites")
        images = observed[0]["fn"].mean
    return image_grid(images, rows, image_shape, title="p(x | z), z ~ p(z)")


def _labels_for_decoding(model: Model, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor | None:
    """The labels a model decodes with: the given ones, else its classifier's (``predict``), if it has one."""
    predict = getattr(model, "predict", None)
    if y is None and callable(predict):
        return predict(x)
    return y


@torch.no_grad()
def reconstructions_figure(model: Model, x: torch.Tensor, y: torch.Tensor | None = None,
                           image_shape: tuple[int, int] = (28, 28)) -> Figure:
    """Inputs (top row) over their reconstructions (bottom row): the mean of p(x|z) at z = E_q[z|x]
    with ``decode``, else at one draw z ~ q(z|x) (the guide replayed into the model)."""
    if callable(getattr(model, "decode", None)):
        y = _labels_for_decoding(model, x, y)
        reconstructions, at = model.decode(latent_means(model, x, y), y), "z = E_q[z|x]"
    else:
        guide_trace = poutine.trace(model.guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, y)
        observed = [site for site in model_trace.nodes.values() if site["type"] == "sample" and site["is_observed"]]
        reconstructions, at = observed[0]["fn"].mean, "z ~ q(z|x)"
    return image_grid(torch.cat([x, reconstructions]), 2, image_shape, row_labels=["input", "recon."],
                      title=f"inputs and reconstructions, mean of p(x | {at})")


def _principal_components(points: torch.Tensor, num: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Projections of ``points`` on their first ``num`` principal axes, and each axis' share of variance."""
    centred = points.double() - points.double().mean(0)
    _, singular_values, right = torch.linalg.svd(centred, full_matrices=False)
    explained = singular_values.square() / singular_values.square().sum()
    return (centred @ right[:num].T).float(), explained[:num]


def _tsne(points: torch.Tensor, seed: int) -> torch.Tensor:
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ValueError("t-SNE needs scikit-learn (pip install scikit-learn); use method='pca' without it") from None
    return torch.as_tensor(TSNE(n_components=2, random_state=seed, init="pca").fit_transform(points.double().numpy()))


def latent_scatter(means: torch.Tensor, labels: torch.Tensor | None = None, method: str = "pca",
                   seed: int = 0) -> Figure:
    """Posterior means E_q[z|x] as points coloured by label: 2-D latents directly, more through PCA
    (``method="pca"``, axes showing the variance they explain) or t-SNE (``method="tsne"``, scikit-learn)."""
    if method not in ("pca", "tsne"):
        raise ValueError(f"method {method!r} is not one of: pca, tsne")
    means = means.detach().cpu()
    if means.shape[1] == 1:
        raise ValueError("a 1-D latent space has no scatter plot; train with --z-dim >= 2")
    if means.shape[1] == 2:
        points, axis_labels, title = means, ("z[0]", "z[1]"), "E_q[z|x] of test images"
    elif method == "pca":
        points, explained = _principal_components(means)
        axis_labels = tuple(f"PC {i + 1} ({100 * float(share):.0f}% of variance)" for i, share in enumerate(explained))
        title = f"E_q[z|x] of test images, first 2 principal components of {means.shape[1]}-D"
    else:
        points, axis_labels = _tsne(means, seed), ("t-SNE 1", "t-SNE 2")
        title = f"E_q[z|x] of test images, t-SNE of {means.shape[1]}-D"
    figure = Figure(figsize=(6.4, 5.4))
    axes = figure.add_subplot()
    colours = None if labels is None else labels.cpu().numpy()
    scatter = axes.scatter(points[:, 0].numpy(), points[:, 1].numpy(), c=colours, cmap="tab10", s=3, alpha=0.7,
                           vmin=-0.5, vmax=9.5)
    if labels is not None:
        colour_bar = figure.colorbar(scatter, ax=axes, ticks=range(10))
        colour_bar.set_label("label")
    axes.set_xlabel(axis_labels[0])
    axes.set_ylabel(axis_labels[1])
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


@torch.no_grad()
def manifold_grid(model: Model, num_per_side: int = 20, image_shape: tuple[int, int] = (28, 28)) -> Figure:
    """Means of p(x|z) over a grid of 2-D latents at evenly spaced quantiles of N(0, 1) per axis
    (Kingma & Welling, 2014, fig. 4), z[0] left to right and z[1] bottom to top."""
    _require_decode(model, "the decoded manifold")
    if getattr(model, "needs_labels", False) or hasattr(model, "num_classes") or getattr(model, "z_dim", None) != 2:
        raise ValueError(f"the decoded manifold needs an unconditional model with a 2-D latent (z_dim 2); "
                         f"{type(model).__name__} has z_dim {getattr(model, 'z_dim', None)}")
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, num_per_side))
    z1, z0 = torch.meshgrid(quantiles.flip(0), quantiles, indexing="ij")  # top row: largest z[1]
    z = torch.stack([z0.reshape(-1), z1.reshape(-1)], dim=1).to(next(model.parameters()).device)
    return image_grid(model.decode(z), num_per_side, image_shape,
                      title="p(x | z) over z at N(0, 1) quantiles 0.05..0.95 (z[0] across, z[1] up)")


@torch.no_grad()
def interpolation_figure(model: Model, x_start: torch.Tensor, x_end: torch.Tensor, num_steps: int = 10,
                         y_start: torch.Tensor | None = None, image_shape: tuple[int, int] = (28, 28)) -> Figure:
    """One row per pair: means of p(x|z) along the straight line from E_q[z|x_start] to E_q[z|x_end].

    A conditional model decodes the whole row with the start image's label.
    """
    _require_decode(model, "interpolation")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 (the two ends), got {num_steps}")
    y = _labels_for_decoding(model, x_start, y_start)
    start, end = latent_means(model, x_start, y), latent_means(model, x_end, y)
    weights = torch.linspace(0, 1, num_steps, device=start.device)
    z = start[:, None] + weights[None, :, None] * (end - start)[:, None]  # (pairs, steps, z_dim)
    labels = None if y is None else y.repeat_interleave(num_steps)
    images = model.decode(z.reshape(-1, z.shape[-1]), labels)
    return image_grid(images, len(x_start), image_shape,
                      title=f"latent interpolation between test images, {num_steps} steps")


@torch.no_grad()
def traversal_figure(model: Model, x: torch.Tensor, dims: Sequence[int], values: Sequence[float] = (
        -3, -2.25, -1.5, -0.75, 0, 0.75, 1.5, 2.25, 3), y: torch.Tensor | None = None,
                     image_shape: tuple[int, int] = (28, 28)) -> Figure:
    """For one image: a row per latent dimension in ``dims``, that coordinate of E_q[z|x] set to each of
    ``values`` (the others held), decoded to the mean of p(x|z)."""
    _require_decode(model, "traversals")
    if x.shape[0] != 1:
        raise ValueError(f"a traversal starts from one image; pass x of shape (1, pixels), got {tuple(x.shape)}")
    y = _labels_for_decoding(model, x, y)
    z = latent_means(model, x, y)[0]
    bad = [d for d in dims if not 0 <= d < z.shape[0]]
    if bad:
        raise ValueError(f"latent dimensions {bad} do not exist; use 0..{z.shape[0] - 1}")
    grid = z.repeat(len(dims), len(values), 1)
    for row, dim in enumerate(dims):
        grid[row, :, dim] = torch.as_tensor(values, dtype=z.dtype, device=z.device)
    labels = None if y is None else y.expand(len(dims) * len(values))
    images = model.decode(grid.reshape(-1, z.shape[0]), labels)
    return image_grid(images, len(dims), image_shape, row_labels=[f"z[{d}]" for d in dims],
                      title=f"traversals: z[d] set to {values[0]:g} .. {values[-1]:g}, the rest at E_q[z|x]")


def training_curves(records: list[dict[str, Any]]) -> Figure:
    """Per-epoch curves from ``metrics.jsonl``: -ELBO, reconstruction and KL, train and validation;
    for M2 its loss and its validation and test accuracy."""
    epochs = [record["epoch"] for record in records]
    if not records:
        raise ValueError("no epochs to plot: metrics.jsonl is empty")
    semisupervised = "accuracy" in records[0]["valid"]
    if semisupervised:
        panels = [("loss per unlabelled image (nats)", [("train", "train", "loss", 1)]),
                  ("-ELBO, y summed out (nats)", [("valid", "valid", "elbo", -1)]),
                  ("accuracy of q(y|x)", [("valid", "valid", "accuracy", 1), ("test", "test", "accuracy", 1)])]
    else:
        panels = [("-ELBO (nats per image)", [("train", "train", "elbo", -1), ("valid", "valid", "elbo", -1)]),
                  ("-E_q[log p(x|z)] (nats)", [("train", "train", "reconstruction", -1),
                                               ("valid", "valid", "reconstruction", -1)]),
                  ("KL(q(z|x) || p(z)) (nats)", [("train", "train", "kl", 1), ("valid", "valid", "kl", 1)])]
    figure = Figure(figsize=(4.0 * len(panels), 3.2))
    for index, (title, curves) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for label, split, key, sign in curves:
            axes.plot(epochs, [sign * record[split][key] for record in records], label=label, marker="." if
                      len(epochs) < 30 else None)
        axes.set_xlabel("epoch")
        axes.set_title(title, fontsize=9)
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def validation_error_curves(curves: dict[str, Sequence[tuple[int, float]]]) -> Figure:
    """Validation error (%) against epoch, one line per run (``{name: [(epoch, error), ...]}``), the best
    epoch of each marked: how long the runs of a sweep took to converge."""
    figure = Figure(figsize=(5.6, 4.0))
    axes = figure.add_subplot()
    for name, curve in curves.items():
        epochs, errors = zip(*curve)
        line, = axes.plot(epochs, errors, label=name, linewidth=1.2)
        best = min(range(len(errors)), key=errors.__getitem__)
        axes.scatter([epochs[best]], [errors[best]], color=line.get_color(), s=18, zorder=3)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation error (%)")
    axes.set_title("validation error by epoch (dot: the best epoch, the one tested)", fontsize=9)
    axes.legend(fontsize=7, ncols=2)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def accuracy_vs_labels(errors: dict[int, Sequence[float]], published: dict[str, dict[int, float]] | None = None,
                       model_name: str = "M2") -> Figure:
    """A semi-supervised model's test error (%) against the number of labels: each seed as a dot, the
    mean as a line, and published results as dashed lines."""
    figure = Figure(figsize=(5.6, 4.0))
    axes = figure.add_subplot()
    counts = sorted(errors)
    for count in counts:
        axes.scatter([count] * len(errors[count]), errors[count], color="tab:blue", s=12, alpha=0.6)
    axes.plot(counts, [sum(errors[c]) / len(errors[c]) for c in counts], color="tab:blue", marker="o",
              label=f"pyro-vae {model_name} (mean; dots: seeds)")
    for name, results in (published or {}).items():
        known = sorted(results)
        axes.plot(known, [results[c] for c in known], linestyle="--", marker="x", label=name)
    axes.set_xscale("log")
    axes.set_xticks(counts, labels=[str(c) for c in counts])
    axes.minorticks_off()
    axes.set_xlabel("labelled training images")
    axes.set_ylabel("test error (%)")
    axes.set_title(f"semi-supervised {model_name}", fontsize=9)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


@torch.no_grad()
def denoising_figure(model: Model, clean: torch.Tensor, corrupted: torch.Tensor, y: torch.Tensor | None = None,
                     image_shape: tuple[int, int] = (28, 28)) -> Figure:
    """Rows: clean images, their corrupted versions, and the reconstructions of the corrupted ones."""
    _require_decode(model, "denoising")
    y = _labels_for_decoding(model, corrupted, y)
    restored = model.decode(latent_means(model, corrupted, y), y)
    return image_grid(torch.cat([clean, corrupted, restored]), 3, image_shape,
                      row_labels=["clean", "corrupted", "recon."], title="denoising: reconstructing corrupted inputs")

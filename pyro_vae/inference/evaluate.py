"""The ELBO and its terms on held-out data, every density read from traces of the model and guide."""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext

import pyro
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from torch import nn
from tqdm.auto import tqdm

from pyro_vae.data.batches import evaluation_batches
from pyro_vae.inference.traces import log_weights_from_traces, sample_sites, trace_particles


@torch.no_grad()
def elbo_terms(
    model_obj: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, num_particles: int = 1
) -> dict[str, torch.Tensor]:
    """Per-datapoint ELBO and its terms, in nats, from ``num_particles`` samples of the guide.

    Returns a dict of tensors of shape (batch,):
        ``reconstruction``: E_q[log p(x|z)], summed over observed sites (Monte Carlo);
        ``kl``: KL(q(z|x) || p(z)), analytic where the guide and prior allow, else Monte Carlo;
        ``kl_monte_carlo``: E_q[log q(z|x) - log p(z)];
        ``elbo``: ``reconstruction - kl``.
    """
    model_trace, guide_trace = trace_particles(model_obj.model, model_obj.guide, x, y, num_particles)
    reconstruction = sum(
        site["unscaled_log_prob"] for _, site in sample_sites(model_trace) if site["is_observed"]
    ).mean(0)
    kl_monte_carlo = torch.zeros_like(reconstruction)
    kl = torch.zeros_like(reconstruction)
    for name, guide_site in sample_sites(guide_trace):
        model_site = model_trace.nodes[name]
        site_kl = (guide_site["unscaled_log_prob"] - model_site["unscaled_log_prob"]).mean(0)
        kl_monte_carlo = kl_monte_carlo + site_kl
        try:
            kl = kl + kl_divergence(guide_site["fn"], model_site["fn"]).mean(0)
        except NotImplementedError:
            kl = kl + site_kl
    return {
        "elbo": reconstruction - kl,
        "reconstruction": reconstruction,
        "kl": kl,
        "kl_monte_carlo": kl_monte_carlo,
    }


def dataset_elbo_terms(
    model_obj: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int = 1000,
    num_particles: int = 1,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """:func:`elbo_terms` for every image of a split, concatenated in dataset order."""
    return over_batches(lambda x, y: elbo_terms(model_obj, x, y, num_particles), images, labels, batch_size,
                         "ELBO", progress)


def over_batches(score, images, labels, batch_size: int, description: str, progress: bool):
    """Apply ``score(x, y) -> {name: per-datapoint tensor}`` batch by batch; concatenate per name."""
    parts: dict[str, list[torch.Tensor]] = {}
    total = -(-len(images) // batch_size)
    batches = evaluation_batches(images, labels, batch_size)
    for x, y in tqdm(batches, total=total, desc=description, leave=False, disable=not progress or None):
        for key, value in score(x, y).items():
            parts.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in parts.items()}


def mean_terms(per_datapoint: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean over datapoints of each per-datapoint value (float64)."""
    return {key: value.double().mean().item() for key, value in per_datapoint.items()}


def mean_and_standard_error(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error over datapoints."""
    values = values.double()
    if values.numel() < 2:
        return values.mean().item(), float("nan")
    return values.mean().item(), (values.std() / values.numel() ** 0.5).item()


@torch.no_grad()
def log_importance_weights(
    model_obj: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 5000,
    chunk_size: int = 500,
) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for K = ``num_samples`` draws z_k ~ q(z|x), shape (K, batch).

    Particles are vectorized by a plate and drawn ``chunk_size`` at a time, so memory grows
    with ``chunk_size * batch``, not with K. Pyro validates the first chunk (when validation is
    on) and not the others, which re-run the same model, guide and data.
    """
    chunks = []
    for start in range(0, num_samples, chunk_size):
        with nullcontext() if start == 0 else pyro.validation_enabled(False):
            traces = trace_particles(model_obj.model, model_obj.guide, x, y, min(chunk_size, num_samples - start))
        chunks.append(log_weights_from_traces(*traces).expand(-1, x.shape[0]))
    return torch.cat(chunks)


def log_likelihood_from_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """The importance-sampled log p(x) = logsumexp_k(log w_k) - log K per datapoint."""
    return torch.logsumexp(log_weights.double(), 0) - math.log(log_weights.shape[0])


def iwae_bounds(log_weights: torch.Tensor, ks: Iterable[int]) -> dict[int, torch.Tensor]:
    """Per-datapoint IWAE bounds L_k (Burda et al., 2016) for each k dividing K, from the same samples.

    The K weights are cut into K/k disjoint groups; L_k is the mean over groups of the group's
    log-mean-weight, an unbiased estimate of the bound. L_1 is the ELBO, L_K the IS estimate.
    """
    num_samples = log_weights.shape[0]
    bounds = {}
    for k in ks:
        if num_samples % k:
            raise ValueError(f"k={k} does not divide the {num_samples} samples; use divisors of K")
        groups = log_weights.double().reshape(num_samples // k, k, -1)
        bounds[k] = (torch.logsumexp(groups, 1) - math.log(k)).mean(0)
    return bounds


def log_likelihood(
    model_obj: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 5000,
    chunk_size: int = 500,
) -> torch.Tensor:
    """Per-datapoint importance-sampled log p(x) with q(z|x) as proposal, K = ``num_samples``.

    Its expectation is the IWAE bound L_K <= log p(x), which tightens as K grows.
    """
    return log_likelihood_from_weights(log_importance_weights(model_obj, x, y, num_samples, chunk_size))


@torch.no_grad()
def posterior_means(model_obj: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                    batch_size: int = 1000, site: str = "z", num_samples: int = 100) -> torch.Tensor:
    """E_q[z|x] for every image, from the guide's distribution at ``site``: its mean where it has one in
    closed form, else the average of ``num_samples`` draws (a flow, a mixture)."""
    means = []
    for x, y in evaluation_batches(images, labels, batch_size):
        guide_trace = poutine.trace(model_obj.guide).get_trace(x, y)
        if site not in guide_trace.nodes:
            raise ValueError(f"the guide of {type(model_obj).__name__} has no sample site {site!r}")
        try:
            means.append(guide_trace.nodes[site]["fn"].mean)
        except NotImplementedError:
            with pyro.plate("posterior_draws", num_samples, dim=-2):
                draws = poutine.trace(model_obj.guide).get_trace(x, y).nodes[site]["value"]
            means.append(draws.mean(0))
    return torch.cat(means)


def latent_means(model_obj: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """A summary z of each datapoint: the model's ``encode(x, y)`` where it has one, else
    :func:`posterior_means` of the guide's site ``z``."""
    encode = getattr(model_obj, "encode", None)
    if callable(encode):
        return encode(x, y)
    return posterior_means(model_obj, x, y, batch_size=len(x))


@torch.no_grad()
def class_elbos(model_obj: nn.Module, x: torch.Tensor, num_particles: int = 1) -> torch.Tensor:
    """ELBO(x, y=c) of every datapoint with every class c, shape (batch, num_classes): the model and
    guide run with each label in turn, ``num_particles`` draws of the guide each."""
    num_classes = getattr(model_obj, "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"{type(model_obj).__name__} has no num_classes attribute (an int >= 2); per-class ELBOs "
                         "need a model whose model(x, y) and guide(x, y) take a class label y")
    columns = []
    for label in range(num_classes):
        y = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
        traces = trace_particles(model_obj.model, model_obj.guide, x, y, num_particles)
        columns.append(log_weights_from_traces(*traces).expand(-1, x.shape[0]).mean(0))
    return torch.stack(columns, -1)


def generative_accuracy(model_obj: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                        num_particles: int = 1, batch_size: int = 1000) -> float:
    """Fraction of images whose label has the highest :func:`class_elbos`: how well the generative
    model p(x|y, z) alone tells the classes apart, whatever the classifier q(y|x) says. Near chance
    (1/C) when the class is carried by z and y is ignored, as in an M2 that learns little from
    unlabelled images."""
    correct = 0
    for x, y in evaluation_batches(images, labels, batch_size):
        correct += int((class_elbos(model_obj, x, num_particles).argmax(-1) == y).sum())
    return correct / len(images)


def active_units(means: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions u with Cov_x(E_q[z_u|x]) > ``threshold`` (Burda et al., 2016)."""
    return int((means.double().var(0) > threshold).sum())


def bits_per_dim(nats_per_image: float, num_pixels: int) -> float:
    """A negative log-likelihood in nats per image as bits per pixel."""
    return nats_per_image / (num_pixels * math.log(2))


def dataset_log_likelihood(
    model_obj: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    num_samples: int = 5000,
    chunk_size: int = 500,
    batch_size: int = 100,
    iwae_ks: Iterable[int] = (),
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-datapoint ``log_likelihood`` (K = ``num_samples``) and ``iwae_k`` bounds, dataset order."""
    iwae_ks = tuple(iwae_ks)

    def score(x, y):
        log_weights = log_importance_weights(model_obj, x, y, num_samples, chunk_size)
        bounds = iwae_bounds(log_weights, iwae_ks)
        return {"log_likelihood": log_likelihood_from_weights(log_weights),
                **{f"iwae_{k}": bound for k, bound in bounds.items()}}

    return over_batches(score, images, labels, batch_size, f"log p(x), K={num_samples}", progress)

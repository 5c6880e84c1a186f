"""Traces of a model replayed on its guide: the one source of every density the toolkit reports."""

from __future__ import annotations

from collections.abc import Iterable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites


def trace_particles(model, guide, x: torch.Tensor, y: torch.Tensor | None, num_particles: int):
    """Traces of ``guide`` and of ``model`` replayed on it, ``num_particles`` draws vectorized by a
    plate at dim -2 (models put their data plate at dim -1).

    Plates' own subsample sites are pruned; every sample site's ``log_prob`` has shape
    (num_particles, batch).
    """
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return model_trace, guide_trace


def sample_sites(trace) -> Iterable[tuple[str, dict]]:
    return ((name, site) for name, site in trace.nodes.items() if site["type"] == "sample")


def log_weights_from_traces(model_trace, guide_trace) -> torch.Tensor:
    """log p(x, z) - log q(z|x) per particle and datapoint, from traces of :func:`trace_particles`."""
    log_joint = sum(site["unscaled_log_prob"] for _, site in sample_sites(model_trace))
    log_guide = sum(site["unscaled_log_prob"] for _, site in sample_sites(guide_trace))
    return log_joint - log_guide

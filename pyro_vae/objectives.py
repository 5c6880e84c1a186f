"""Training objectives: Pyro ELBOs that also report the ELBO's terms from the traces they score.

The optimizer minimises the loss of the chosen Pyro ELBO. The same model and guide traces the
ELBO scored are kept, so the reconstruction term E_q[log p(x|z)] and the Monte Carlo KL
log q(z|x) - log p(z) are read off them for free: no second forward pass, no re-derived density.
"""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn


class _KeepsTraces:
    """Mixin for a Pyro ELBO: remember the (model, guide) traces of the last loss evaluation."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.traces: list = []

    def differentiable_loss(self, model, guide, *args, **kwargs):
        self.traces = []
        return super().differentiable_loss(model, guide, *args, **kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        self.traces.append((model_trace, guide_trace))
        return model_trace, guide_trace

    def last_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums over the batch of log p(x|z) and of log q(z|x) - log p(z), averaged over particles.

        Unscaled log-densities: a KL weight (beta) changes the loss, not the reported terms.
        """
        reconstruction = kl = 0.0
        for model_trace, guide_trace in self.traces:
            reconstruction = reconstruction + model_trace.nodes["x"]["unscaled_log_prob"].sum()
            kl = kl + (guide_trace.nodes["z"]["unscaled_log_prob"] - model_trace.nodes["z"]["unscaled_log_prob"]).sum()
        num_particles = self.num_particles if self.vectorize_particles else len(self.traces)
        return reconstruction.detach() / num_particles, kl.detach() / num_particles


class RecordedTrace_ELBO(_KeepsTraces, Trace_ELBO):
    """:class:`pyro.infer.Trace_ELBO` that keeps its traces for reporting the ELBO's terms."""


class RecordedTraceMeanField_ELBO(_KeepsTraces, TraceMeanField_ELBO):
    """:class:`pyro.infer.TraceMeanField_ELBO` (analytic KL) that keeps its traces."""


OBJECTIVES = {"elbo": RecordedTrace_ELBO, "meanfield": RecordedTraceMeanField_ELBO}


def make_objective(name: str, num_particles: int = 1):
    """The Pyro ELBO called ``name`` (``"elbo"`` or ``"meanfield"``), particles vectorized."""
    try:
        elbo_class = OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; use {' or '.join(OBJECTIVES)}") from None
    return elbo_class(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)


class NegativeELBO(nn.Module):
    """The loss as a module: ``forward(x, y)`` is the ELBO's differentiable loss summed over the batch.

    Holding the model makes its parameters this module's, so a torch optimizer, an LR scheduler,
    DistributedDataParallel or a compiler can wrap it like any other loss module.
    """

    def __init__(self, model: nn.Module, elbo) -> None:
        super().__init__()
        self.model = model
        self.elbo = elbo

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.elbo.differentiable_loss(self.model.model, self.model.guide, x, y)

"""The ELBO with the guide's one discrete latent summed out exactly, in a form a step recording can replay.

Pyro's ``TraceEnum_ELBO`` sums discrete latents out by tensor contraction: general (any number of
discrete sites, in model or guide), but each step reads a tensor's value in Python (the
zero-probability mask of ``Dice.compute_expectation``), so a training step that uses it cannot be
recorded as a graph and replayed (:mod:`pyro_vae.training.capture`) and Pyro's Python runs every
step. The semi-supervised models have one discrete latent, the class y, drawn in the guide from
q(y|x) and enumerated in parallel; their ELBO is then a short weighted sum,

    ELBO(x) = sum_y q(y|x) [log p(x, y, z_y) - log q(z_y|x, y) - log q(y|x)],  z_y ~ q(z|x, y),

with the terms that do not depend on y (sites upstream of it) counted once. :func:`enumerated_negative_elbo`
computes that sum from Pyro's own traces of the model and of the enumerated guide: the value and the
gradients equal ``TraceEnum_ELBO.differentiable_loss`` on the same random draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.inference.closed_form_kl import elbo_terms
from pyro_vae.inference.traces import sample_sites


def enumerated_negative_elbo(model: Callable, guide: Callable, *args: Any, max_plate_nesting: int = 1,
                             analytic_kl: bool = False, **kwargs: Any) -> torch.Tensor:
    """-ELBO summed over the batch, one sample of the continuous latents, the guide's discrete site enumerated.

    Args:
        model: a Pyro model whose latents are all drawn by the guide too.
        guide: its guide, with exactly one discrete sample site that is not observed (it is
            enumerated in parallel whatever its ``infer`` says); its other latents reparameterized.
        *args: passed to both.
        max_plate_nesting: the plates the model and guide nest at most (the enumeration uses the
            dimension to their left).
        analytic_kl: KL(q || p) in closed form at the latent sites where it is exact (see
            :func:`pyro_vae.inference.closed_form_kl.closed_form_kls`), Monte Carlo elsewhere.
        **kwargs: passed to both.

    Raises:
        ValueError: when the guide has no enumerable site or more than one, when a latent of the model
            is not in the guide, or when another latent of the guide has no reparameterized sampler.
    """
    enumeration_dim = -1 - max_plate_nesting
    guide_trace = poutine.trace(poutine.enum(config_enumerate(guide, "parallel"),
                                             first_available_dim=enumeration_dim)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
    enumerated = [name for name, site in sample_sites(guide_trace) if site["infer"].get("_enumerate_dim") is not None]
    if len(enumerated) != 1:
        raise ValueError(f"enumerated_negative_elbo sums out exactly one discrete site of the guide; this guide "
                         f"enumerates {enumerated or 'none'}. Use pyro.infer.TraceEnum_ELBO for other structures")
    missing = [name for name, site in sample_sites(model_trace)
               if not site["is_observed"] and name not in guide_trace.nodes]
    not_reparameterized = [name for name, site in sample_sites(guide_trace)
                           if name != enumerated[0] and not site["is_observed"] and not site["fn"].has_rsample]
    if missing or not_reparameterized:
        raise ValueError(f"enumerated_negative_elbo needs every latent of the model in the guide (missing: "
                         f"{missing or 'none'}) and the guide's other latents reparameterized (not: "
                         f"{not_reparameterized or 'none'}); use pyro.infer.TraceEnum_ELBO")
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    weights = guide_trace.nodes[enumerated[0]]["unscaled_log_prob"].exp()  # q(y|x), the enumerated values at dim -2

    def expected(log_prob: torch.Tensor) -> torch.Tensor:
        """A term summed over the batch, averaged over y under q where it depends on y."""
        if log_prob.dim() >= -enumeration_dim and log_prob.shape[enumeration_dim] > 1:
            return (weights * log_prob).sum()
        return log_prob.sum()

    return -sum(expected(term) for term in elbo_terms(model_trace, guide_trace, analytic_kl))

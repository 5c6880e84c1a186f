"""The ELBO's latent terms in closed form where a model and its guide allow it exactly.

A latent site z adds E_q[log p(z|.) - log q(z|.)] to the ELBO. When the guide's and the model's
distributions at z have a registered closed-form KL and every latent the model draws before z is
drawn before z by the guide too, that term equals -E_q[KL(q(z|.) || p(z|.))] over the earlier draws:
the same objective, with less variance. Pyro's ``TraceMeanField_ELBO`` assumes this of every site
(it only warns when the model and the guide draw in different orders); here a site that fails the
test keeps its Monte Carlo term. A stacked model such as M1+M2, whose guide draws the features z1
first and whose model draws them last, from p(z1|y, z2), so keeps an exact objective: closed form
for z2, Monte Carlo for z1.
"""

from __future__ import annotations

import torch
from pyro.distributions.util import scale_and_mask
from torch.distributions import kl_divergence  # Pyro's distributions register theirs here

from pyro_vae.inference.traces import sample_sites


def closed_form_kls(model_trace, guide_trace) -> dict[str, torch.Tensor]:
    """KL(q || p) of each latent site where it is exact, scaled and masked as the site's log-densities.

    Args:
        model_trace: the model replayed on ``guide_trace``, log-densities computed.
        guide_trace: the guide's trace; its enumerated sites (if any) keep their exact log-density terms.

    Returns:
        site name -> KL with the shape of the site's log-density (enumerated dimensions included).
    """
    guide_position = {name: position for position, (name, _) in enumerate(sample_sites(guide_trace))}
    # a latent the guide lacks is drawn by the replayed model, after every guide draw
    drawn_late = len(guide_position)
    drawn_earlier_by_model: list[str] = []
    kls = {}
    for name, model_site in sample_sites(model_trace):
        if model_site["is_observed"]:
            continue
        position = guide_position.get(name, drawn_late)
        in_order = all(guide_position.get(earlier, drawn_late) < position for earlier in drawn_earlier_by_model)
        drawn_earlier_by_model.append(name)
        guide_site = guide_trace.nodes.get(name)
        if not in_order or guide_site is None or guide_site["infer"].get("_enumerate_dim") is not None:
            continue
        try:
            kl = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:  # no closed form for this pair: Monte Carlo
            continue
        shape = torch.broadcast_shapes(model_site["log_prob"].shape, guide_site["log_prob"].shape)
        if kl.shape == shape:
            kls[name] = scale_and_mask(kl, guide_site["scale"], guide_site["mask"])
    return kls


def elbo_terms(model_trace, guide_trace, analytic_kl: bool) -> list[torch.Tensor]:
    """The ELBO as unsummed terms: log p of each model site, -log q of each latent guide site, and for a
    site with an exact closed form (``analytic_kl``, see :func:`closed_form_kls`) -KL(q || p) instead of its
    two log-densities. Both traces need their log-densities computed."""
    kls = closed_form_kls(model_trace, guide_trace) if analytic_kl else {}
    terms = [site["log_prob"] for name, site in sample_sites(model_trace) if name not in kls]
    terms += [-site["log_prob"] for name, site in sample_sites(guide_trace)
              if not site["is_observed"] and name not in kls]
    return terms + [-kl for kl in kls.values()]

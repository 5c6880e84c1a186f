"""Training objectives: Pyro ELBOs that also report the ELBO's terms from the traces they score.

The optimizer minimises the loss of the chosen objective. The model and guide traces that the
objective scored are kept, so the reconstruction term E_q[log p(x|z)] and the Monte Carlo KL
log q(z|x) - log p(z) are read off them for free: no second forward pass, no re-derived density.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.util import is_identically_zero
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from torch import nn

from pyro_vae.inference.closed_form_kl import elbo_terms
from pyro_vae.inference.traces import log_weights_from_traces, sample_sites, trace_particles


def _terms_from_traces(traces: list, num_particles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over the batch of log p(x|z) and of log q(z|x) - log p(z), averaged over particles.

    Unscaled log-densities: a KL weight (beta) changes the loss, not the reported terms.
    """
    reconstruction = kl = 0.0
    for model_trace, guide_trace in traces:
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or "unscaled_log_prob" not in site:
                continue
            if site["is_observed"]:
                reconstruction = reconstruction + site["unscaled_log_prob"].sum()
            else:
                kl = kl + (guide_trace.nodes[name]["unscaled_log_prob"] - site["unscaled_log_prob"]).sum()
    if not torch.is_tensor(kl):  # a model without latent variables, such as a deterministic baseline
        kl = torch.zeros_like(reconstruction)
    return reconstruction.detach() / num_particles, kl.detach() / num_particles


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
        """Reconstruction and KL sums of the last loss evaluation (see :func:`_terms_from_traces`)."""
        num_particles = self.num_particles if self.vectorize_particles else len(self.traces)
        return _terms_from_traces(self.traces, num_particles)


class RecordedTrace_ELBO(_KeepsTraces, Trace_ELBO):
    """:class:`pyro.infer.Trace_ELBO` that keeps its traces for reporting the ELBO's terms.

    When every latent site of the guide is reparameterized, the loss is sum log q(z|x) - sum log p(x, z)
    over the traces' sites, computed on the device: the same value and gradient as Pyro's, without
    its reading of every site's log-density to the host (a synchronisation per step on a GPU, and a
    step that could not be captured as a graph, see :mod:`pyro_vae.training.capture`). Guides with
    non-reparameterized sites get Pyro's score-function estimator as it is.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        self.traces = []
        traces = list(self._get_traces(model, guide, args, kwargs))
        if _score_function_sites(traces):
            return _pyro_surrogate_loss(self, traces)
        elbo = sum(model_trace.log_prob_sum() - guide_trace.log_prob_sum() for model_trace, guide_trace in traces)
        return -elbo / self.num_particles


def _score_function_sites(traces: list) -> list[str]:
    """Names of the guides' sample sites that need a score-function term (not reparameterized), sorted."""
    return sorted({name for _, guide_trace in traces for name, site in sample_sites(guide_trace)
                   if not is_identically_zero(site["score_parts"].score_function)})


def _pyro_surrogate_loss(elbo: Trace_ELBO, traces: list) -> torch.Tensor:
    """Pyro's Trace_ELBO loss (value of the ELBO, gradient of its surrogate) over already-run traces."""
    loss = surrogate = 0.0
    for model_trace, guide_trace in traces:
        particle_loss, particle_surrogate = elbo._differentiable_loss_particle(model_trace, guide_trace)
        loss, surrogate = loss + particle_loss / elbo.num_particles, surrogate + particle_surrogate / elbo.num_particles
    return loss + (surrogate - surrogate.detach())


class RecordedTraceMeanField_ELBO(RecordedTrace_ELBO):
    """The ELBO with KL(q || p) in closed form at every latent site where that is exact, Monte Carlo at the
    others (see :mod:`pyro_vae.inference.closed_form_kl`); keeps its traces.

    Where the model and the guide draw their latents in the same order (a VAE) its loss is
    :class:`pyro.infer.TraceMeanField_ELBO`'s; where they do not (M1+M2's features, drawn first by the
    guide and last by the model), Pyro's closed form would be biased at the out-of-order sites and
    this objective keeps their Monte Carlo term. Computed on the device, like :class:`RecordedTrace_ELBO`.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        self.traces = []
        traces = list(self._get_traces(model, guide, args, kwargs))
        not_reparameterized = _score_function_sites(traces)
        if not_reparameterized:
            raise ValueError(f"the mean-field (closed-form KL) objective needs reparameterized guide latents; "
                             f"{', '.join(not_reparameterized)} are not: use --objective elbo")
        elbo = sum(term.sum() for model_trace, guide_trace in traces
                   for term in elbo_terms(model_trace, guide_trace, analytic_kl=True))
        return -elbo / self.num_particles


GRADIENTS = ("standard", "dreg", "stl")


class _GuideOf(nn.Module):
    """The guide method of a model module as a module's forward, for ``torch.func.functional_call``."""

    def __init__(self, owner: nn.Module) -> None:
        super().__init__()
        self.owner = owner

    def forward(self, x: torch.Tensor, y: torch.Tensor | None):
        return self.owner.guide(x, y)


class IWAE_ELBO:
    """The importance-weighted bound L_k of Burda et al. (2016), per datapoint, k vectorized particles.

    ``differentiable_loss`` is -sum_n [logsumexp_k log w_nk - log k] with
    log w = log p(x, z) - log q(z|x) from traces of the model replayed on the guide; gradients
    flow by reparameterization. For one datapoint it equals ``pyro.infer.RenyiELBO(alpha=0)``,
    which has no differentiable loss and, over a batch, weights the whole batch jointly.

    ``gradient`` chooses the guide's gradient estimator (the model's is the same for all, and so
    is the loss's value):

    - ``"standard"``: the gradient of L_k itself;
    - ``"dreg"``: doubly reparameterized (Tucker et al., 2019): log q is evaluated with the guide's
      parameters held fixed, so they get gradient only through the draws z, and the gradient
      reaching each draw z_i is scaled by its normalized weight once more (sum_i w~_i^2 d log w_i/dz_i
      dz_i/dphi), an unbiased estimate of the same gradient with lower variance;
    - ``"stl"`` ("sticking the landing", Roeder et al., 2017), for k = 1: the path term alone, whose
      variance vanishes when q(z|x) is the exact posterior (DReG with k = 1 is the same estimator).

    The path estimators need a reparameterized guide that is a method of an ``nn.Module`` (flows
    included): log q is re-evaluated at the same draws by replaying the guide with its module's
    parameters detached (``torch.func.functional_call``).
    """

    def __init__(self, num_particles: int, gradient: str = "standard") -> None:
        if gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {gradient!r}; use {', '.join(GRADIENTS)}")
        if gradient == "stl" and num_particles != 1:
            raise ValueError(f"the 'stl' gradient is for one particle; with {num_particles} use 'dreg', its "
                             "importance-weighted form")
        self.num_particles, self.gradient = num_particles, gradient
        self.traces: list = []

    def differentiable_loss(self, model, guide, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        model_trace, guide_trace = trace_particles(model, guide, x, y, self.num_particles)
        self.traces = [(model_trace, guide_trace)]
        if self.gradient == "standard":
            log_weights = log_weights_from_traces(model_trace, guide_trace)
        else:
            log_weights = self._path_log_weights(model_trace, guide_trace, guide, x, y)
        return -(torch.logsumexp(log_weights, 0) - math.log(self.num_particles)).sum()

    def _path_log_weights(self, model_trace, guide_trace, guide, x: torch.Tensor, y: torch.Tensor | None
                          ) -> torch.Tensor:
        """log p(x, z) - log q(z|x) with q's parameters held fixed; for DReG the gradient reaching each
        draw z is scaled by its normalized weight."""
        owner = getattr(guide, "__self__", None)
        if not isinstance(owner, nn.Module):
            raise ValueError(f"the {self.gradient!r} gradient replays the guide with its parameters held fixed, so the "
                             "guide must be a method of an nn.Module")
        latents = {name: site for name, site in sample_sites(guide_trace)}
        not_reparameterized = [name for name, site in latents.items() if not site["fn"].has_rsample]
        if not_reparameterized:
            raise ValueError(f"the {self.gradient!r} gradient needs reparameterized guide sites; "
                             f"{', '.join(not_reparameterized)} are not")
        fixed = {name: value.detach() for name, value in _GuideOf(owner).named_parameters()}
        with pyro.plate("particles", self.num_particles, dim=-2):
            replayed = poutine.trace(poutine.replay(functional_call_guide(owner, fixed), trace=guide_trace)
                                     ).get_trace(x, y)
        replayed = prune_subsample_sites(replayed)
        replayed.compute_log_prob()
        log_joint = sum(site["unscaled_log_prob"] for _, site in sample_sites(model_trace))
        log_guide_fixed = sum(site["unscaled_log_prob"] for _, site in sample_sites(replayed))
        log_weights = log_joint - log_guide_fixed
        if self.gradient == "dreg":
            normalized = torch.softmax(log_weights.detach(), dim=0)
            for site in latents.values():
                site["value"].register_hook(_scaled_by(normalized))
        return log_weights

    def last_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _terms_from_traces(self.traces, self.num_particles)


def functional_call_guide(owner: nn.Module, parameters: dict[str, torch.Tensor]):
    """``owner.guide`` run with ``parameters`` (names as in ``_GuideOf(owner)``) in place of its own."""
    wrapper = _GuideOf(owner)

    def guide(x: torch.Tensor, y: torch.Tensor | None = None):
        return torch.func.functional_call(wrapper, parameters, (x, y))

    return guide


def _scaled_by(weights: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * weights.reshape(weights.shape + (1,) * (grad.dim() - weights.dim()))

    return hook


OBJECTIVES = {"elbo": RecordedTrace_ELBO, "meanfield": RecordedTraceMeanField_ELBO, "iwae": IWAE_ELBO}


def make_objective(name: str, num_particles: int = 1, gradient: str = "standard"):
    """The objective called ``name`` (``"elbo"``, ``"meanfield"`` or ``"iwae"``), particles vectorized,
    with the guide's gradient estimator ``gradient`` (see :class:`IWAE_ELBO`; ``stl`` makes the ELBO
    its one-particle IWAE form)."""
    if name == "iwae" or gradient != "standard":
        if name == "meanfield":
            raise ValueError(f"the {gradient!r} gradient evaluates log q at the draws; use objective elbo or iwae")
        return IWAE_ELBO(num_particles, gradient)
    try:
        elbo_class = OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; use {', '.join(OBJECTIVES)}") from None
    return elbo_class(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)


class ScaleLatents(Messenger):
    """Multiply the log-density of every latent sample site by ``scale``, in model and guide alike.

    Under it the ELBO becomes E_q[log p(x|z)] - scale * KL(q(z|x) || p(z)): the beta-VAE objective
    (Higgins et al., 2017) and the weight that KL warm-up anneals (Bowman et al., 2016).
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


class NegativeELBO(nn.Module):
    """The loss as a module: ``forward(x, y)`` is the objective's differentiable loss summed over the batch.

    Holding the model makes its parameters this module's, so a torch optimizer, an LR scheduler,
    DistributedDataParallel or a compiler can wrap it like any other loss module. ``kl_weight``
    scales the latent sites (beta, KL warm-up).
    """

    def __init__(self, model: nn.Module, elbo, kl_weight: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.elbo = elbo
        # the weight as a tensor too, read by the step: a captured step replays it as an input
        device = next(model.parameters(), torch.empty(0)).device
        self.register_buffer("kl_weight_tensor", torch.tensor(float(kl_weight), device=device), persistent=False)
        self.kl_weight = kl_weight

    @property
    def kl_weight(self) -> float:
        return self._kl_weight

    @kl_weight.setter
    def kl_weight(self, value: float) -> None:
        self._kl_weight = float(value)
        self.kl_weight_tensor.fill_(self._kl_weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with ScaleLatents(self.kl_weight_tensor):
            loss = self.elbo.differentiable_loss(self.model.model, self.model.guide, x, y)
        self._last_loss, self._last_num_images = loss.detach(), x.shape[0]
        return loss

    @staticmethod
    def num_images(x: torch.Tensor, y: torch.Tensor | None = None) -> int:
        return x.shape[0]

    def last_statistics(self) -> torch.Tensor:
        """The last batch's summed loss, log p(x|z) and KL (see :func:`_terms_from_traces`), and its size."""
        reconstruction, kl = self.elbo.last_terms()
        return torch.stack([self._last_loss, reconstruction, kl, torch.full_like(kl, self._last_num_images)])

    @staticmethod
    def epoch_summary(totals: list[float]) -> dict[str, float]:
        """Per-image means of an epoch's summed statistics; ``elbo`` is unweighted by beta."""
        loss, reconstruction, kl, count = totals
        return {"loss": loss / count, "elbo": (reconstruction - kl) / count, "reconstruction": reconstruction / count,
                "kl": kl / count}


def kl_weight_at(step: int, steps_per_epoch: int, beta: float, warmup_epochs: int) -> float:
    """The KL weight of training step ``step`` (0-based): linear from 0 to ``beta`` over the warm-up."""
    if warmup_epochs == 0:
        return beta
    return beta * min(1.0, (step + 1) / (warmup_epochs * steps_per_epoch))

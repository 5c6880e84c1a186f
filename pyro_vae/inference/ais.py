"""Annealed importance sampling (Neal, 2001) of log p(x) for any model/guide pair, with HMC transitions.

Densities come from traces of the model (conditioned on x and on the latent values) and of the guide,
so a user's model is scored as it is written. Chains and datapoints are batched: a plate of
``num_chains`` at dim -2 around the model's data plate. The path anneals from the guide,
q(z|x)^(1-b) p(x, z)^b, or from the prior, p(z) p(x|z)^b, b rising from 0 to 1 on a sigmoid or
linear schedule (Wu et al., 2017); each step first adds (b_t - b_{t-1}) times the annealed term at
the current state to the log-weight, then moves the state by HMC (``pyro.ops.integrator``) that
leaves the new intermediate density invariant. Step sizes, one per datapoint and annealing step,
are tuned on a pilot run towards an acceptance rate and then frozen for the reported run, which
keeps the estimate of p(x) unbiased. The latent sites must be continuous with real support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.ops.integrator import velocity_verlet
from pyro.poutine.util import prune_subsample_sites
from torch import nn
from tqdm.auto import tqdm

from pyro_vae.inference.estimators import register_estimator
from pyro_vae.inference.evaluate import over_batches
from pyro_vae.inference.traces import sample_sites, trace_particles

SCHEDULES = ("sigmoid", "linear")
# Chains of the pilot run that tunes the step sizes (one per datapoint and step, so a few chains
# suffice): the pilot then costs PILOT_CHAINS / num_chains of the reported run, not as much again.
PILOT_CHAINS = 2
INITS = ("guide", "prior")


@dataclass
class AISResult:
    """Per-datapoint log p(x) estimates, and the mean acceptance rate of the reported run's HMC moves."""

    log_likelihood: torch.Tensor
    acceptance_rate: float


def annealing_schedule(num_steps: int, schedule: str = "sigmoid", sharpness: float = 4.0) -> torch.Tensor:
    """b_0 = 0 < b_1 < ... < b_T = 1; ``sigmoid``: sigmoid(sharpness (2t/T - 1)) rescaled to [0, 1]."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use {' or '.join(SCHEDULES)}")
    steps = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    if schedule == "linear":
        return steps
    curve = torch.sigmoid(sharpness * (2 * steps - 1))
    return (curve - curve[0]) / (curve[-1] - curve[0])


class _Densities:
    """log p(z), log p(x|z) and log q(z|x) of latent values shaped (chains, batch, ...), from traces."""

    def __init__(self, model_obj: nn.Module, x: torch.Tensor, y: torch.Tensor | None, num_chains: int) -> None:
        self.model_obj, self.x, self.y, self.num_chains = model_obj, x, y, num_chains

    def _trace(self, function, values: dict[str, torch.Tensor]):
        with pyro.plate("chains", self.num_chains, dim=-2):
            trace = poutine.trace(poutine.condition(function, data=values)).get_trace(self.x, self.y)
        trace = prune_subsample_sites(trace)
        trace.compute_log_prob()
        return trace

    def model_terms(self, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(z), log p(x|z)), each (chains, batch)."""
        trace = self._trace(self.model_obj.model, values)
        prior = sum(site["log_prob"] for name, site in sample_sites(trace) if name in values)
        likelihood = sum(site["log_prob"] for name, site in sample_sites(trace) if name not in values)
        return prior, likelihood

    def guide_term(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """log q(z|x), (chains, batch)."""
        trace = self._trace(self.model_obj.guide, values)
        return sum(site["log_prob"] for name, site in sample_sites(trace) if name in values)


def _check_latents(guide_trace) -> list[str]:
    names = []
    for name, site in sample_sites(guide_trace):
        support = site["fn"].support
        while hasattr(support, "base_constraint"):
            support = support.base_constraint
        if site["fn"].has_enumerate_support or support is not torch.distributions.constraints.real:
            raise ValueError(f"AIS moves latent sites by HMC, so they must be continuous with real support; {name!r} "
                             f"has support {site['fn'].support}")
        names.append(name)
    return names


def _initial_state(model_obj: nn.Module, x: torch.Tensor, y: torch.Tensor | None, num_chains: int, init: str):
    """Draws z_0 from the path's start: q(z|x) (exactly as importance sampling draws them) or p(z)."""
    model_trace, guide_trace = trace_particles(model_obj.model, model_obj.guide, x, y, num_chains)
    names = _check_latents(guide_trace)
    if init == "guide":
        return {name: guide_trace.nodes[name]["value"].detach() for name in names}
    with pyro.plate("chains", num_chains, dim=-2):
        prior_trace = poutine.trace(poutine.block(model_obj.model, hide=[n for n, s in sample_sites(model_trace)
                                                                         if s["is_observed"]])).get_trace(x, y)
    return {name: prior_trace.nodes[name]["value"].detach() for name in names}


def _run(model_obj, x, y, *, betas, num_chains, leapfrog_steps, init, step_sizes, target_acceptance, adapt,
         state=None, progress: str | None = None):
    """One AIS pass along ``betas`` (rising: forward; falling: the reverse chain of BDMC) from ``state``
    (default: draws from the path's start); returns the log-weights (chains, batch), the step sizes used
    per step and the acceptance rate. ``progress``: a progress bar (with its ETA) of that description."""
    densities = _Densities(model_obj, x, y, num_chains)
    state = _initial_state(model_obj, x, y, num_chains, init) if state is None else state

    def annealed_terms(values):
        prior, likelihood = densities.model_terms(values)
        base = densities.guide_term(values) if init == "guide" else prior
        return base, prior + likelihood, likelihood

    def log_density(values, beta):
        base, joint, likelihood = annealed_terms(values)
        return (1 - beta) * base + beta * joint if init == "guide" else base + beta * likelihood

    log_weights = torch.zeros(num_chains, x.shape[0], dtype=torch.float64, device=x.device)
    step_size = torch.full((1, x.shape[0]), 0.1, device=x.device)
    used, accepted = [], []
    with torch.no_grad():
        base, joint, likelihood = annealed_terms(state)
    for t in tqdm(range(1, len(betas)), desc=progress, leave=False, disable=progress is None or None):
        beta, previous = float(betas[t]), float(betas[t - 1])
        annealed = (joint - base) if init == "guide" else likelihood
        log_weights += (beta - previous) * annealed.double()
        if step_sizes is not None:
            step_size = step_sizes[t - 1]
        state, acceptance = _hmc_move(state, lambda values: log_density(values, beta), step_size, leapfrog_steps)
        used.append(step_size.clone())
        accepted.append(acceptance.mean())
        if adapt:  # pilot run: steer each datapoint's step size towards the target acceptance rate
            step_size = step_size * torch.where(acceptance.mean(0, keepdim=True) > target_acceptance, 1.05, 0.95)
        with torch.no_grad():
            base, joint, likelihood = annealed_terms(state)
    return log_weights, used, float(torch.stack(accepted).mean()) if accepted else 1.0


def _hmc_move(state, log_density, step_size, leapfrog_steps):
    """One HMC transition per chain and datapoint (unit mass), Metropolis-corrected; returns the new state and
    the acceptance indicator (chains, batch)."""
    energies = {}

    def potential(values):
        energy = -log_density(values)
        energies["last"] = energy.detach()
        return energy.sum()

    def kinetic_grad(momenta):
        return dict(momenta)

    def per_datapoint(tensor_dict, value):
        return sum(v.reshape(v.shape[:2] + (-1,)).pow(2).sum(-1) for v in tensor_dict.values()) * value

    momenta = {name: torch.randn_like(value) for name, value in state.items()}
    with torch.no_grad():
        start_energy = -log_density(state)
    scaled = step_size.reshape(step_size.shape + (1,) * (next(iter(state.values())).dim() - step_size.dim()))
    proposal, proposal_momenta, _, _ = velocity_verlet(dict(state), momenta, potential, kinetic_grad, scaled,
                                                       leapfrog_steps)
    end_energy = energies["last"]
    hamiltonian_change = (end_energy + per_datapoint(proposal_momenta, 0.5)) - (start_energy + per_datapoint(momenta, 0.5))
    accept = torch.rand_like(hamiltonian_change).log() < -torch.nan_to_num(hamiltonian_change, nan=math.inf)
    new_state = {}
    for name, value in state.items():
        mask = accept.reshape(accept.shape + (1,) * (value.dim() - accept.dim()))
        new_state[name] = torch.where(mask, proposal[name].detach(), value)
    return new_state, accept.double()


def ais_log_likelihood(
    model_obj: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    num_steps: int = 100,
    num_chains: int = 16,
    leapfrog_steps: int = 10,
    schedule: str = "sigmoid",
    init: str = "guide",
    target_acceptance: float = 0.65,
    pilot: bool = True,
    progress: bool = False,
) -> AISResult:
    """Per-datapoint AIS estimate of log p(x) (log p(x|y) for a model given labels): the log-mean over
    ``num_chains`` chains of the AIS weights, in float64.

    With ``pilot`` a first AIS run (:data:`PILOT_CHAINS` chains) tunes one HMC step size per datapoint
    and annealing step towards ``target_acceptance``; the reported run uses them frozen. With
    ``num_steps=1`` and ``init="guide"`` the estimate is importance sampling with ``num_chains``
    samples of the guide. ``progress``: bars
    over the annealing steps of each run, with their ETA.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; use {' or '.join(INITS)}")
    for name, value in (("num_steps", num_steps), ("num_chains", num_chains), ("leapfrog_steps", leapfrog_steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    betas = annealing_schedule(num_steps, schedule)
    options = dict(betas=betas, num_chains=num_chains, leapfrog_steps=leapfrog_steps, init=init,
                   target_acceptance=target_acceptance)
    step_sizes = _pilot_step_sizes(model_obj, x, y, options, _bar("AIS pilot", progress)) if pilot else None
    log_weights, _, acceptance = _run(model_obj, x, y, step_sizes=step_sizes, adapt=step_sizes is None,
                                      progress=_bar(f"AIS, T={num_steps}", progress), **options)
    return AISResult(torch.logsumexp(log_weights, 0) - math.log(num_chains), acceptance)


def _pilot_step_sizes(model_obj, x, y, options: dict, progress: str | None) -> list[torch.Tensor]:
    """Step sizes per datapoint and annealing step, tuned towards the target acceptance by a pilot run
    of ``options`` (those of :func:`_run`) on at most :data:`PILOT_CHAINS` chains."""
    pilot = {**options, "num_chains": min(PILOT_CHAINS, options["num_chains"])}
    return _run(model_obj, x, y, step_sizes=None, adapt=True, progress=progress, **pilot)[1]


def _bar(description: str, progress: bool) -> str | None:
    return description if progress else None


@dataclass
class BDMCResult:
    """Bidirectional Monte Carlo on data simulated from the model: stochastic lower and upper bounds of
    log p(x) per simulated datapoint (their expectations bracket it), and the data."""

    lower: torch.Tensor
    upper: torch.Tensor
    x: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        """upper - lower per datapoint: how far either bound can be from log p(x)."""
        return self.upper - self.lower


def simulate(model_obj: nn.Module, num: int, x_dim: int, y: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``num`` draws (x, z) from the model: its observed site sampled (binary samples for a Bernoulli
    likelihood, not means) and its latent sites, by running it unconditioned."""
    placeholder = torch.zeros(num, x_dim, device=next(model_obj.parameters()).device)
    with torch.no_grad():
        conditioned = prune_subsample_sites(poutine.trace(model_obj.model).get_trace(placeholder, y))
        observed = [name for name, site in sample_sites(conditioned) if site["is_observed"]]
        trace = prune_subsample_sites(poutine.trace(poutine.uncondition(model_obj.model)).get_trace(placeholder, y))
    if len(observed) != 1:
        raise ValueError(f"BDMC simulates one observed site; {type(model_obj).__name__} has {observed}")
    latents = {name: site["value"] for name, site in sample_sites(trace) if name != observed[0]}
    return trace.nodes[observed[0]]["value"], latents


def bdmc(model_obj: nn.Module, num_images: int, x_dim: int, *, num_steps: int = 100, num_chains: int = 16,
         leapfrog_steps: int = 10, schedule: str = "sigmoid", init: str = "guide", target_acceptance: float = 0.65,
         progress: bool = False) -> BDMCResult:
    """Bidirectional Monte Carlo (Grosse et al., 2015; Wu et al., 2017): simulate ``num_images`` pairs
    (x, z) from the model, run forward AIS on x (a stochastic lower bound of log p(x)) and reverse AIS
    from the exact z, annealing from p(z|x) back to the start (a stochastic upper bound). The step
    sizes are tuned on a forward pilot run and frozen for both directions."""
    x, exact = simulate(model_obj, num_images, x_dim)
    betas = annealing_schedule(num_steps, schedule)
    options = dict(num_chains=num_chains, leapfrog_steps=leapfrog_steps, init=init, target_acceptance=target_acceptance)
    step_sizes = _pilot_step_sizes(model_obj, x, None, {**options, "betas": betas}, _bar("BDMC pilot", progress))
    forward, _, _ = _run(model_obj, x, None, betas=betas, step_sizes=step_sizes, adapt=False,
                         progress=_bar("BDMC forward", progress), **options)
    start = {name: value.expand((num_chains,) + value.shape).clone() for name, value in exact.items()}
    reverse_sizes = [step_sizes[max(num_steps - j - 1, 0)] for j in range(1, num_steps + 1)]
    reverse, _, _ = _run(model_obj, x, None, betas=betas.flip(0), step_sizes=reverse_sizes, adapt=False, state=start,
                         progress=_bar("BDMC reverse", progress), **options)
    log_mean = lambda weights: torch.logsumexp(weights, 0) - math.log(num_chains)  # noqa: E731
    return BDMCResult(lower=log_mean(forward), upper=-log_mean(reverse), x=x)


@register_estimator("ais")
def annealed_importance_sampling(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, *,
                                 num_samples: int, chunk_size: int = 500, batch_size: int = 100, progress: bool = False,
                                 num_steps: int = 100, leapfrog_steps: int = 10, schedule: str = "sigmoid",
                                 init: str = "guide") -> dict[str, torch.Tensor]:
    """AIS with ``num_samples`` chains per datapoint (see :func:`ais_log_likelihood`); also returns each
    batch's acceptance rate per datapoint as ``ais_acceptance``."""

    def score(x, y):
        result = ais_log_likelihood(model, x, y, num_steps=num_steps, num_chains=num_samples,
                                    leapfrog_steps=leapfrog_steps, schedule=schedule, init=init, progress=progress)
        return {"log_likelihood": result.log_likelihood,
                "ais_acceptance": torch.full_like(result.log_likelihood, result.acceptance_rate)}

    return over_batches(score, images, labels, batch_size, f"AIS, T={num_steps}", progress)

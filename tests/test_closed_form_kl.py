"""Closed-form KL where exact, Monte Carlo where the order of draws forbids it: checked against hand sums."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO, config_enumerate
from torch import nn
from torch.distributions import Normal

from pyro_vae.inference.closed_form_kl import closed_form_kls
from pyro_vae.inference.enumeration import enumerated_negative_elbo
from pyro_vae.inference.objectives import RecordedTraceMeanField_ELBO
from pyro_vae.inference.traces import trace_particles
from pyro_vae.models import VAE
from test_enumeration import FeaturesThenClass, float64  # noqa: F401 (fixture)


def hand_terms(model: FeaturesThenClass, x, u, z, y):
    """log p(y) - KL(q(z|u, y) || p(z)) + log p(u|y, z) for class(es) y, the KL by its formula (stds 0.5 and 1)."""
    one_hot = nn.functional.one_hot(y, 3).to(x.dtype).expand(z.shape[:-1] + (3,))
    mean = model.style(torch.cat([u.expand(z.shape[:-1] + (4,)), one_hot], -1))
    kl = (math.log(1 / 0.5) + (0.5 ** 2 + mean ** 2) / 2 - 0.5).sum(-1)
    log_p_u = Normal(model.decoder(torch.cat([z, one_hot], -1)), 1.0).log_prob(u).sum(-1)
    return -math.log(3) - kl + log_p_u


def features_terms(model: FeaturesThenClass, x, u):
    """log p(x|u) - log q(u|x): the features' terms, Monte Carlo (the model draws u after z)."""
    log_p_x = Normal(u.sum(-1, keepdim=True).expand(x.shape), 0.5).log_prob(x).sum(-1)
    return log_p_x - Normal(model.features(x), 0.3).log_prob(u).sum(-1)


def test_closed_form_where_the_guide_draws_in_the_models_order_only():
    torch.manual_seed(0)
    stacked, x = FeaturesThenClass(), torch.randn(6, 5)
    guide_trace = poutine.trace(stacked.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(stacked.model, trace=guide_trace)).get_trace(x)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    # u: drawn first by the guide, last by the model (after z)
    assert set(closed_form_kls(model_trace, guide_trace)) == {"y", "z"}
    vae, images = VAE(x_dim=784, z_dim=3, hidden_dim=8), torch.rand(4, 784).bernoulli()
    assert set(closed_form_kls(*trace_particles(vae.model, vae.guide, images, None, 2))) == {"z"}


def test_enumerated_loss_with_closed_form_kl_equals_the_hand_sum(float64):
    torch.manual_seed(0)
    model, x = FeaturesThenClass(), torch.randn(6, 5)
    pyro.set_rng_seed(3)
    loss = enumerated_negative_elbo(model.model, model.guide, x, analytic_kl=True)
    pyro.set_rng_seed(3)
    guide_trace = poutine.trace(poutine.enum(config_enumerate(model.guide, "parallel"), first_available_dim=-2)
                                ).get_trace(x)
    u, z = guide_trace.nodes["u"]["value"], guide_trace.nodes["z"]["value"]  # z: (3 classes, 6, 2)
    log_q_y = torch.log_softmax(model.classifier(u), -1).T  # (3, 6)
    by_class = hand_terms(model, x, u, z, torch.arange(3)[:, None]) - log_q_y
    elbo = features_terms(model, x, u) + (log_q_y.exp() * by_class).sum(0)
    assert loss.item() == pytest.approx(-elbo.sum().item(), rel=1e-12)
    pyro.set_rng_seed(3)
    assert enumerated_negative_elbo(model.model, model.guide, x).item() != pytest.approx(loss.item(), rel=1e-6)


def test_labelled_mean_field_loss_keeps_monte_carlo_for_out_of_order_sites(float64):
    torch.manual_seed(0)
    model, x, y = FeaturesThenClass(), torch.randn(6, 5), torch.tensor([0, 1, 2, 2, 1, 0])
    objective = RecordedTraceMeanField_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(3)
    loss = objective.differentiable_loss(model.model, model.guide, x, y)
    guide_trace = objective.traces[0][1]
    u, z = guide_trace.nodes["u"]["value"], guide_trace.nodes["z"]["value"]
    elbo = features_terms(model, x, u) + hand_terms(model, x, u, z, y)
    assert loss.item() == pytest.approx(-elbo.sum().item(), rel=1e-12)
    pyro.set_rng_seed(3)
    with pytest.warns(UserWarning, match="order"):  # Pyro's mean field takes u in closed form too: a different value
        pyro_loss = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x, y)
    assert pyro_loss.item() != pytest.approx(loss.item(), rel=1e-6)


def test_mean_field_objective_refuses_a_guide_latent_without_reparameterization():
    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("k", pyro.distributions.Poisson(torch.ones(len(x))))

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("k", pyro.distributions.Poisson(torch.full((len(x),), 2.0)))

    with pytest.raises(ValueError, match="k are not: use --objective elbo"):
        RecordedTraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, torch.zeros(3))

"""The VampPrior and the inverse autoregressive flow posterior: densities by hand, sampling, training."""

import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae import VAE, elbo_terms, fit, load_dataset, log_likelihood
from pyro_vae.models.flows import InverseAutoregressivePosterior


@pytest.fixture
def binary_images():
    return torch.bernoulli(torch.full((12, 784), 0.3), generator=torch.Generator().manual_seed(0))


def test_the_vamp_prior_is_the_mean_of_the_encoders_posteriors_of_its_pseudo_inputs():
    torch.manual_seed(0)
    vae = VAE(z_dim=3, hidden_dim=16, prior="vamp", pseudo_inputs=7)
    z = torch.randn(5, 3)
    loc, scale = vae.encoder(vae.prior.pseudo_inputs())  # (7, 3) each
    by_hand = torch.distributions.Normal(loc, scale).log_prob(z[:, None, :]).sum(-1)  # (5, 7)
    expected = torch.logsumexp(by_hand, dim=1) - math.log(7)
    torch.testing.assert_close(vae.prior_dist(5).log_prob(z), expected)
    assert vae.prior.pseudo_inputs().min() >= 0 and vae.prior.pseudo_inputs().max() <= 1
    assert not any(name.startswith("prior.encode") for name in vae.state_dict())  # the encoder is the guide's


def test_the_vamp_prior_is_drawn_by_running_the_model(binary_images):
    torch.manual_seed(0)
    vae = VAE(z_dim=3, hidden_dim=16, prior="vamp", pseudo_inputs=4)
    trace = poutine.trace(vae.model).get_trace(binary_images)
    assert trace.nodes["z"]["value"].shape == (12, 3)
    terms = elbo_terms(vae, binary_images, num_particles=3)
    torch.testing.assert_close(terms["kl"], terms["kl_monte_carlo"])  # a mixture prior: no closed-form KL


def test_the_flow_posterior_density_of_a_draw_is_its_inverse_density(binary_images):
    torch.manual_seed(0)
    vae = VAE(z_dim=4, hidden_dim=16, flow="iaf", flow_steps=3)
    q = vae.posterior_dist(binary_images)
    z = q.rsample()
    cached = q.log_prob(z)  # the draw's own steps remember their inverse
    fresh = vae.posterior_dist(binary_images).log_prob(z.detach().clone())  # inverted step by step
    torch.testing.assert_close(cached, fresh, rtol=1e-4, atol=1e-4)
    # change of variables by hand: the base density of the inverted point minus each step's log-determinant
    context = vae.encoder.context(binary_images)
    loc, scale = vae.encoder.head(context)
    steps = [step.condition(context) for step in vae.flow.steps]
    point, log_det = z.detach().clone(), torch.zeros(len(z))
    for step in reversed(steps):
        previous = step.inv(point)
        log_det = log_det + step.log_abs_det_jacobian(previous, point)
        point = previous
    by_hand = torch.distributions.Normal(loc, scale).log_prob(point).sum(-1) - log_det
    torch.testing.assert_close(fresh, by_hand, rtol=1e-4, atol=1e-4)


def test_flow_steps_alternate_the_variable_order():
    flow = InverseAutoregressivePosterior(z_dim=3, context_dim=5, num_steps=2, hidden_dim=8)
    assert flow.steps[0].nn.permutation.tolist() == [0, 1, 2]
    assert flow.steps[1].nn.permutation.tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="flow_steps must be an integer >= 1"):
        InverseAutoregressivePosterior(z_dim=3, context_dim=5, num_steps=0, hidden_dim=8)


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"prior": "vamp", "pseudo_inputs": 20}, {"flow": "iaf", "flow_steps": 2},
                                     {"prior": "vamp", "pseudo_inputs": 20, "flow": "iaf"}])
def test_richer_priors_and_posteriors_train_and_bound_log_p_x(tmp_path, options):
    torch.manual_seed(0)
    vae = VAE(z_dim=4, hidden_dim=32, **options)
    before = {name: value.clone() for name, value in vae.state_dict().items()}
    result = fit(vae, load_dataset("mnist-sample", valid_size=500), out=tmp_path, epochs=1, batch_size=100,
                 device="cpu", progress=False)
    assert math.isfinite(result.test["elbo"]) and result.test["kl"] > 0
    changed = [name for name, value in vae.state_dict().items() if not torch.equal(value, before[name])]
    assert any(name.startswith("prior.") for name in changed) == ("prior" in options)
    assert any(name.startswith("flow.") for name in changed) == ("flow" in options)
    x = load_dataset("mnist-sample").test_images[:50].bernoulli(generator=torch.Generator().manual_seed(1))
    pyro.set_rng_seed(2)
    assert log_likelihood(vae, x, num_samples=100).mean() > elbo_terms(vae, x, num_particles=10)["elbo"].mean()

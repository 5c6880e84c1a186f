"""Estimators against closed forms: a linear-Gaussian model has an exact log p(x)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO
from torch import nn

from pyro_vae.inference.evaluate import (active_units, bits_per_dim, dataset_log_likelihood, elbo_terms, iwae_bounds,
                               log_importance_weights, log_likelihood)
from pyro_vae.models import VAE
from pyro_vae.inference.objectives import IWAE_ELBO, NegativeELBO, ScaleLatents, kl_weight_at, make_objective


class LinearGaussian(nn.Module):
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D); the guide is the exact posterior, or a perturbed one."""

    def __init__(self, x_dim=5, z_dim=3, noise=0.5, guide_shift=0.0, guide_scale=1.0, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(x_dim, z_dim, generator=generator, dtype=torch.float64)
        self.bias = torch.randn(x_dim, generator=generator, dtype=torch.float64)
        self.noise, self.guide_shift, self.guide_scale = noise, guide_shift, guide_scale
        precision = torch.eye(z_dim, dtype=torch.float64) + self.weight.T @ self.weight / noise**2
        self.posterior_covariance = torch.linalg.inv(precision)

    def model(self, x, y=None):
        z_dim = self.weight.shape[1]
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(z_dim, dtype=torch.float64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.weight.T + self.bias, self.noise).to_event(1), obs=x)

    def guide(self, x, y=None):
        loc = (x - self.bias) @ self.weight @ self.posterior_covariance.T / self.noise**2 + self.guide_shift
        scale_tril = torch.linalg.cholesky(self.posterior_covariance) * self.guide_scale
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))

    def exact_log_likelihood(self, x):
        covariance = self.weight @ self.weight.T + self.noise**2 * torch.eye(len(self.bias), dtype=torch.float64)
        return dist.MultivariateNormal(self.bias, covariance).log_prob(x)

    def data(self, n, seed=1):
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.weight.shape[1], generator=generator, dtype=torch.float64)
        return z @ self.weight.T + self.bias + self.noise * torch.randn(n, len(self.bias), generator=generator,
                                                                        dtype=torch.float64)


@pytest.mark.parametrize("num_samples", [1, 7, 100])
def test_exact_posterior_makes_importance_sampling_exact(num_samples):
    model = LinearGaussian()
    x = model.data(20)
    estimate = log_likelihood(model, x, num_samples=num_samples, chunk_size=3)
    torch.testing.assert_close(estimate, model.exact_log_likelihood(x), rtol=0, atol=1e-5)


def test_perturbed_guide_bounds_and_convergence():
    model = LinearGaussian(guide_shift=0.4, guide_scale=1.6)
    x = model.data(200)
    exact = model.exact_log_likelihood(x)
    elbo = elbo_terms(model, x, num_particles=2000)["elbo"]
    # K = 1 is an unbiased one-sample ELBO: within 4 standard errors of the precise ELBO
    difference = log_likelihood(model, x, num_samples=1) - elbo
    assert abs(difference.mean()) < 4 * difference.std() / len(x) ** 0.5
    gaps = []
    for num_samples in (10, 100, 1000, 10000):
        estimate = log_likelihood(model, x, num_samples=num_samples, chunk_size=1000)
        assert elbo.mean() < estimate.mean() <= exact.mean() + 0.02
        gaps.append((exact - estimate).mean().item())
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.2 * gaps[0]


def test_iwae_bounds_from_shared_samples_are_ordered():
    model = LinearGaussian(guide_shift=0.5, guide_scale=0.7)
    x = model.data(100)
    log_weights = log_importance_weights(model, x, num_samples=500, chunk_size=100)
    bounds = {k: v.mean().item() for k, v in iwae_bounds(log_weights, [1, 5, 50, 500]).items()}
    assert bounds[1] < bounds[5] < bounds[50] < bounds[500] <= model.exact_log_likelihood(x).mean().item() + 0.02
    torch.testing.assert_close(iwae_bounds(log_weights, [500])[500],
                               torch.logsumexp(log_weights.double(), 0) - math.log(500))
    with pytest.raises(ValueError, match="does not divide"):
        iwae_bounds(log_weights, [3])


def test_analytic_and_monte_carlo_kl_agree_and_terms_add_up():
    model = LinearGaussian(guide_shift=0.3, guide_scale=0.8)
    x = model.data(50)
    terms = elbo_terms(model, x, num_particles=20000)
    torch.testing.assert_close(terms["elbo"], terms["reconstruction"] - terms["kl"])
    # standard error of the MC KL with 20,000 draws is well under 0.05 nats here
    torch.testing.assert_close(terms["kl_monte_carlo"], terms["kl"], rtol=0, atol=0.05)


def test_importance_sampling_agrees_with_renyi_elbo_for_one_image():
    vae = VAE(z_dim=5, hidden_dim=32)
    x = torch.bernoulli(torch.full((1, 784), 0.2), generator=torch.Generator().manual_seed(3))
    pyro.set_rng_seed(42)
    ours = log_likelihood(vae, x, num_samples=64, chunk_size=64)
    pyro.set_rng_seed(42)
    renyi = RenyiELBO(alpha=0, num_particles=64, vectorize_particles=True, max_plate_nesting=1)
    assert ours.item() == pytest.approx(-renyi.loss(vae.model, vae.guide, x), rel=1e-5)


def test_iwae_objective_matches_renyi_and_estimator():
    vae = VAE(z_dim=5, hidden_dim=32)
    x = torch.bernoulli(torch.full((1, 784), 0.2), generator=torch.Generator().manual_seed(4))
    pyro.set_rng_seed(7)
    loss = NegativeELBO(vae, make_objective("iwae", 16))(x)
    pyro.set_rng_seed(7)
    renyi = RenyiELBO(alpha=0, num_particles=16, vectorize_particles=True, max_plate_nesting=1)
    assert loss.item() == pytest.approx(renyi.loss(vae.model, vae.guide, x), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())


def test_iwae_loss_sums_per_datapoint_bounds(binary_batch):
    vae = VAE(z_dim=5, hidden_dim=32)
    pyro.set_rng_seed(9)
    loss = IWAE_ELBO(8).differentiable_loss(vae.model, vae.guide, binary_batch)
    pyro.set_rng_seed(9)
    per_image = log_likelihood(vae, binary_batch, num_samples=8, chunk_size=8)
    assert loss.item() == pytest.approx(-per_image.sum().item(), rel=1e-5)


def test_beta_scales_exactly_the_kl_term(binary_batch):
    vae = VAE(z_dim=5, hidden_dim=32)
    elbo = make_objective("elbo")
    pyro.set_rng_seed(1)
    loss = NegativeELBO(vae, elbo, kl_weight=4.0)(binary_batch)
    reconstruction, kl = elbo.last_terms()
    assert loss.item() == pytest.approx((-reconstruction + 4.0 * kl).item(), rel=1e-5)
    with ScaleLatents(0.5):
        pyro.set_rng_seed(1)
        half = elbo.differentiable_loss(vae.model, vae.guide, binary_batch)
    assert half.item() == pytest.approx((-reconstruction + 0.5 * kl).item(), rel=1e-5)


def test_kl_warmup_is_linear_and_reaches_beta():
    weights = [kl_weight_at(step, steps_per_epoch=10, beta=2.0, warmup_epochs=3) for step in range(40)]
    assert weights[0] == pytest.approx(2.0 / 30) and weights[29] == 2.0 and weights[39] == 2.0
    assert all(b > a for a, b in zip(weights[:29], weights[1:30]))
    assert kl_weight_at(0, 10, beta=0.5, warmup_epochs=0) == 0.5


def test_active_units_counts_dimensions_that_vary():
    means = torch.cat([torch.randn(1000, 3), 0.05 * torch.randn(1000, 2)], dim=1)
    assert active_units(means) == 3
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)


def test_dataset_log_likelihood_is_chunk_invariant_in_distribution(binary_batch):
    vae = VAE(z_dim=5, hidden_dim=32)
    pyro.set_rng_seed(0)
    result = dataset_log_likelihood(vae, binary_batch, num_samples=100, chunk_size=30, batch_size=5,
                                    iwae_ks=(1, 10, 100))
    assert result["log_likelihood"].shape == (16,)
    torch.testing.assert_close(result["iwae_100"], result["log_likelihood"])
    assert (result["iwae_1"].mean() < result["iwae_10"].mean() < result["iwae_100"].mean())

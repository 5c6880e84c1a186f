"""Doubly reparameterized (DReG) and sticking-the-landing (STL) gradients against the standard ones,
on a linear-Gaussian model whose exact posterior is known."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import VAE, fit, load_dataset
from pyro_vae.inference.objectives import IWAE_ELBO, make_objective
from pyro_vae.runs.config import ConfigError, RunConfig, TrainConfig

# z ~ N(0, 1) and two observations x_j = W z + B + NOISE eps_j: the posterior is Normal with variance
# s^2 = 1 / (1 + 2 W^2 / NOISE^2) and mean s^2 W sum_j (x_j - B) / NOISE^2
W, B, NOISE = 1.5, 0.3, 0.8
POSTERIOR_VARIANCE = 1 / (1 + 2 * W**2 / NOISE**2)


class LinearGaussian(nn.Module):
    """A one-dimensional latent, a two-dimensional x; the guide N(a * (w . (x - b)) + c, softplus(d))."""

    def __init__(self, a: float, c: float, scale: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.c = nn.Parameter(torch.tensor(c))
        self.raw_scale = nn.Parameter(torch.tensor(math.log(math.expm1(scale))))

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            loc = (W * z + B).expand(z.shape[:-1] + (2,))  # both coordinates observe W z + B
            pyro.sample("x", dist.Normal(loc, NOISE).to_event(1), obs=x)

    def guide(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            loc = self.a * ((x - B) * W).sum(-1, keepdim=True) + self.c
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(self.raw_scale)).to_event(1))


def exact_guide() -> LinearGaussian:
    return LinearGaussian(POSTERIOR_VARIANCE / NOISE**2, 0.0, math.sqrt(POSTERIOR_VARIANCE))


def guide_gradients(model: LinearGaussian, objective, x: torch.Tensor, draws: int) -> torch.Tensor:
    """(draws, 3) gradients of the loss w.r.t. the guide's parameters (a, c, raw_scale), one per draw."""
    rows = []
    for draw in range(draws):
        pyro.set_rng_seed(draw)
        model.zero_grad()
        objective.differentiable_loss(model.model, model.guide, x).backward()
        rows.append(torch.stack([model.a.grad, model.c.grad, model.raw_scale.grad]).clone())
    return torch.stack(rows)


def test_path_estimators_give_the_same_loss_value():
    x = torch.tensor([[1.0, 2.0], [-0.5, 0.4]])
    model = LinearGaussian(0.3, 0.1, 0.7)
    values = []
    for gradient in ("standard", "dreg"):
        pyro.set_rng_seed(0)
        values.append(IWAE_ELBO(5, gradient).differentiable_loss(model.model, model.guide, x))
    torch.testing.assert_close(values[0], values[1])


def test_stl_gradient_vanishes_at_the_exact_posterior_while_the_standard_one_does_not():
    x = torch.tensor([[1.0, 2.0]])
    model = exact_guide()
    stl = guide_gradients(model, make_objective("elbo", 1, "stl"), x, 20)
    standard = guide_gradients(model, make_objective("iwae", 1), x, 20)
    assert stl.abs().max() < 1e-5  # zero variance at the optimum (Roeder et al., 2017)
    assert standard.abs().max() > 0.05


def test_dreg_has_the_standard_gradients_expectation_and_a_smaller_variance():
    x = torch.tensor([[1.0, 2.0]])
    model = LinearGaussian(0.2, 0.4, 0.9)  # far enough from the posterior for a clear gradient
    draws = 1500
    standard = guide_gradients(model, IWAE_ELBO(5, "standard"), x, draws)
    dreg = guide_gradients(model, IWAE_ELBO(5, "dreg"), x, draws)
    standard_error = (standard.var(0) / draws + dreg.var(0) / draws).sqrt()
    assert ((standard.mean(0) - dreg.mean(0)).abs() < 4 * standard_error).all()
    assert (dreg.var(0) < standard.var(0)).all()


def test_the_model_gets_the_standard_gradient_under_dreg():
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    vae = VAE(x_dim=2, z_dim=2, hidden_dim=8, likelihood="gaussian", gaussian_scale=0.5)
    grads = {}
    for gradient in ("standard", "dreg"):
        pyro.set_rng_seed(3)
        vae.zero_grad()
        IWAE_ELBO(4, gradient).differentiable_loss(vae.model, vae.guide, x).backward()
        grads[gradient] = [p.grad.clone() for p in vae.decoder.parameters()]
    for standard, dreg in zip(grads["standard"], grads["dreg"]):
        torch.testing.assert_close(standard, dreg)


def test_gradient_settings_are_checked():
    with pytest.raises(ConfigError, match="--gradient dreg is the doubly reparameterized gradient of the IWAE"):
        RunConfig(train=TrainConfig(gradient="dreg")).validate()
    with pytest.raises(ConfigError, match="--gradient stl is for the one-particle ELBO"):
        RunConfig(train=TrainConfig(gradient="stl", objective="iwae", num_particles=5)).validate()
    with pytest.raises(ValueError, match="needs reparameterized guide sites; y are not"):
        from pyro_vae import SSVAE
        m2 = SSVAE(z_dim=2, hidden_dim=8)
        IWAE_ELBO(2, "dreg").differentiable_loss(m2.model, m2.guide, torch.zeros(3, 784))


@pytest.mark.slow
def test_dreg_trains_a_flow_posterior(tmp_path):
    torch.manual_seed(0)
    vae = VAE(z_dim=4, hidden_dim=32, flow="iaf")
    result = fit(vae, load_dataset("mnist-sample", valid_size=500), out=tmp_path, epochs=1, batch_size=100,
                 objective="iwae", num_particles=3, gradient="dreg", device="cpu", progress=False)
    assert math.isfinite(result.test["elbo"]) and result.valid["elbo"] > -250

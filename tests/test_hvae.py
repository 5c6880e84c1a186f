"""The two-stochastic-layer VAE: its log joint by hand, and training with the ELBO and the IWAE bound."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import Bernoulli, Normal

from pyro_vae import build_model, elbo_terms, fit, load_dataset, log_likelihood
from pyro_vae.models import TwoLayerVAE


def test_the_log_joint_is_the_sum_of_the_three_factors_by_hand():
    torch.manual_seed(0)
    hvae = TwoLayerVAE(x_dim=6, z1_dim=3, z2_dim=2, hidden1_dim=5, hidden2_dim=4)
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    z1, z2 = torch.randn(4, 3), torch.randn(4, 2)
    conditioned = poutine.condition(hvae.model, data={"z1": z1, "z2": z2})
    trace = poutine.trace(conditioned).get_trace(x)
    trace.compute_log_prob()
    log_joint = sum(site["log_prob"] for site in trace.nodes.values() if site["type"] == "sample")
    loc, scale = hvae.prior1(z2)
    by_hand = (Normal(0.0, 1.0).log_prob(z2).sum(-1) + Normal(loc, scale).log_prob(z1).sum(-1)
               + Bernoulli(logits=hvae.decoder(z1)).log_prob(x).sum(-1))
    torch.testing.assert_close(log_joint, by_hand)


def test_samples_run_the_model_through_both_layers():
    hvae = TwoLayerVAE(x_dim=6, z1_dim=3, z2_dim=2, hidden1_dim=5, hidden2_dim=4)
    trace = poutine.trace(hvae.model).get_trace(torch.zeros(7, 6))
    assert trace.nodes["z2"]["value"].shape == (7, 2) and trace.nodes["z1"]["value"].shape == (7, 3)
    assert build_model("hvae", z1_dim=3).z1_dim == 3  # a registered name


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{}, {"objective": "iwae", "num_particles": 3},
                                      {"objective": "iwae", "num_particles": 3, "gradient": "dreg"}])
def test_two_layers_train_with_elbo_and_iwae_and_bound_log_p_x(tmp_path, settings):
    torch.manual_seed(0)
    hvae = TwoLayerVAE(z1_dim=8, z2_dim=4, hidden1_dim=32, hidden2_dim=16)
    result = fit(hvae, load_dataset("mnist-sample", valid_size=500), out=tmp_path, epochs=1, batch_size=100,
                 device="cpu", progress=False, **settings)
    assert math.isfinite(result.test["elbo"]) and result.test["elbo"] > -300
    x = load_dataset("mnist-sample").test_images[:50].bernoulli(generator=torch.Generator().manual_seed(1))
    pyro.set_rng_seed(2)
    assert log_likelihood(hvae, x, num_samples=100).mean() > elbo_terms(hvae, x, num_particles=10)["elbo"].mean()
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["reconstructions.png", "samples.png"]

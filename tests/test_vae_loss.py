"""The Pyro losses equal the hand-computed BCE + KL for the same sampled z."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.nn import functional as F

from pyro_vae.models import VAE
from pyro_vae.inference.objectives import NegativeELBO, make_objective


def standard_normal_log_density(z):
    return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)


def normal_log_density(z, loc, scale):
    return (-0.5 * ((z - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


@pytest.mark.parametrize("arch", ["mlp", "mlp2", "conv"])
def test_trace_elbo_equals_bce_plus_monte_carlo_kl(arch, binary_batch):
    vae = VAE(z_dim=8, hidden_dim=32, arch=arch)
    pyro.set_rng_seed(123)
    loss = NegativeELBO(vae, make_objective("elbo"))(binary_batch)

    pyro.set_rng_seed(123)
    z = poutine.trace(vae.guide).get_trace(binary_batch).nodes["z"]["value"]
    loc, scale = vae.encoder(binary_batch)
    bce = F.binary_cross_entropy_with_logits(vae.decoder(z), binary_batch, reduction="sum")
    kl_monte_carlo = (normal_log_density(z, loc, scale) - standard_normal_log_density(z)).sum()
    assert loss.item() == pytest.approx((bce + kl_monte_carlo).item(), rel=1e-5)


def test_mlp2_has_two_softplus_hidden_layers_each_way(binary_batch):
    vae = VAE(z_dim=3, hidden_dim=5, arch="mlp2")
    shapes = {name: tuple(p.shape) for name, p in vae.named_parameters() if name.endswith("weight")}
    assert shapes == {"encoder.hidden.weight": (5, 784), "encoder.further.0.weight": (5, 5), "encoder.loc.weight": (3, 5),
                      "encoder.scale.weight": (3, 5), "decoder.hidden.weight": (5, 3), "decoder.further.0.weight": (5, 5),
                      "decoder.logits.weight": (784, 5)}
    z = torch.randn(4, 3)
    decoder = vae.decoder
    by_hand = decoder.logits(F.softplus(decoder.further[0](F.softplus(decoder.hidden(z)))))
    torch.testing.assert_close(decoder(z), by_hand)


def test_meanfield_elbo_equals_bce_plus_analytic_kl(binary_batch):
    vae = VAE(z_dim=8, hidden_dim=32)
    pyro.set_rng_seed(7)
    loss = NegativeELBO(vae, make_objective("meanfield"))(binary_batch)

    pyro.set_rng_seed(7)
    z = poutine.trace(vae.guide).get_trace(binary_batch).nodes["z"]["value"]
    loc, scale = vae.encoder(binary_batch)
    bce = F.binary_cross_entropy_with_logits(vae.decoder(z), binary_batch, reduction="sum")
    kl_analytic = 0.5 * (scale**2 + loc**2 - 1 - 2 * torch.log(scale)).sum()
    assert loss.item() == pytest.approx((bce + kl_analytic).item(), rel=1e-5)


def test_gradients_match_hand_computed_loss(binary_batch):
    vae = VAE(z_dim=4, hidden_dim=16)
    pyro.set_rng_seed(5)
    NegativeELBO(vae, make_objective("elbo"))(binary_batch).backward()
    pyro_grads = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad()

    pyro.set_rng_seed(5)
    loc, scale = vae.encoder(binary_batch)
    z = loc + scale * torch.randn_like(loc)
    bce = F.binary_cross_entropy_with_logits(vae.decoder(z), binary_batch, reduction="sum")
    (bce + (normal_log_density(z, loc, scale) - standard_normal_log_density(z)).sum()).backward()
    for pyro_grad, parameter in zip(pyro_grads, vae.parameters()):
        torch.testing.assert_close(pyro_grad, parameter.grad, rtol=1e-4, atol=1e-4)


def test_recorded_terms_add_up_to_the_loss(binary_batch):
    vae = VAE(z_dim=8, hidden_dim=32)
    for num_particles in (1, 4):
        elbo = make_objective("elbo", num_particles)
        loss = NegativeELBO(vae, elbo)(binary_batch)
        reconstruction, kl = elbo.last_terms()
        assert loss.item() == pytest.approx(-(reconstruction - kl).item(), rel=1e-5)
        assert reconstruction.item() < 0


@pytest.mark.parametrize("likelihood", ["gaussian", "continuous-bernoulli"])
def test_grey_scale_likelihoods_score_grey_pixels(likelihood):
    grey = torch.rand(10, 784)
    vae = VAE(z_dim=4, hidden_dim=16, likelihood=likelihood)
    trace = poutine.trace(poutine.replay(vae.model, trace=poutine.trace(vae.guide).get_trace(grey))).get_trace(grey)
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].shape == (10,)
    assert torch.isfinite(trace.nodes["x"]["log_prob"]).all()
    assert vae.reconstruct(grey).shape == (10, 784)


def test_gaussian_likelihood_uses_the_fixed_scale():
    vae = VAE(z_dim=4, hidden_dim=16, likelihood="gaussian", gaussian_scale=0.1)
    likelihood = vae.likelihood_dist(torch.zeros(3, 4))
    assert torch.allclose(likelihood.base_dist.scale, torch.tensor(0.1))
    assert not any("gaussian" in name for name, _ in vae.named_parameters())


def test_bernoulli_likelihood_refuses_grey_pixels():
    vae = VAE(z_dim=4, hidden_dim=16)
    with pytest.raises(ValueError, match="support"):
        NegativeELBO(vae, make_objective("elbo"))(torch.full((4, 784), 0.5))


def test_model_and_guide_sites_follow_the_contract(binary_batch):
    vae = VAE(z_dim=6, hidden_dim=16)
    guide_trace = poutine.trace(vae.guide).get_trace(binary_batch)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(binary_batch)
    model_sites = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)]
    guide_sites = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)]
    assert model_sites == ["z", "x"]
    assert guide_sites == ["z"]
    for trace in (model_trace, guide_trace):
        frames = [frame.name for frame in trace.nodes["z"]["cond_indep_stack"]]
        assert frames == ["data"]
    assert model_trace.nodes["x"]["fn"].event_shape == (784,)
    assert model_trace.nodes["z"]["fn"].event_shape == (6,)
    assert model_trace.nodes["x"]["is_observed"]

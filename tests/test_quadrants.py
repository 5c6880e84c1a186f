"""Sohn et al.'s quadrant task: masks, masked likelihood, estimators of log p(y|x), early stopping."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import load_dataset
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.inference.evaluate import elbo_terms, log_likelihood
from pyro_vae.models.structured_output import PriorProposal, QuadrantBaseline, StructuredOutputCVAE
from pyro_vae.applications.quadrants import (QuadrantBatches, conditional_log_likelihoods, evaluation_pairs, fit_quadrant_model,
                                masked_inputs, observed_mask)


@pytest.mark.parametrize("num_observed, quadrants", [
    (1, {"bottom-left"}), (2, {"bottom-left", "top-left"}), (3, {"bottom-left", "top-left", "top-right"})])
def test_observed_mask_reveals_quadrants_in_order(num_observed, quadrants):
    mask = observed_mask(num_observed)
    assert mask.shape == (784,) and mask.dtype == torch.bool and int(mask.sum()) == 196 * num_observed
    image = mask.reshape(28, 28)
    blocks = {"top-left": image[:14, :14], "top-right": image[:14, 14:], "bottom-left": image[14:, :14],
              "bottom-right": image[14:, 14:]}
    for name, block in blocks.items():
        assert bool(block.all()) if name in quadrants else not bool(block.any()), name


def test_observed_mask_rejects_other_counts():
    with pytest.raises(ValueError, match="1, 2 or 3 quadrants"):
        observed_mask(4)


def test_inputs_hide_unobserved_pixels_and_batches_pair_them_with_binary_outputs():
    images = torch.rand(10, 784)
    observed = observed_mask(2)
    inputs = masked_inputs(images, observed)
    assert torch.equal(inputs[:, observed], images[:, observed])
    assert bool((inputs[:, ~observed] == -1).all())
    batches = QuadrantBatches(images, observed, batch_size=4, seed=0)
    pairs = list(batches.epoch(1))
    assert len(batches) == len(pairs) == 3
    for batch_inputs, outputs in pairs:
        assert bool(((outputs == 0) | (outputs == 1)).all())
        assert bool((batch_inputs[:, ~observed] == -1).all())
    all_inputs = torch.cat([p[0] for p in pairs])
    assert sorted(all_inputs[:, observed].sum(-1).tolist()) == sorted(images[:, observed].sum(-1).tolist())


def test_masked_likelihood_counts_only_unobserved_pixels():
    observed = observed_mask(3)
    baseline = QuadrantBaseline(~observed, hidden_dim=16)
    images = torch.bernoulli(torch.full((5, 784), 0.4))
    inputs = masked_inputs(images, observed)
    log_p = elbo_terms(baseline, inputs, images)["elbo"]
    logits = baseline.net(inputs)
    by_hand = dist.Bernoulli(logits=logits[:, ~observed]).log_prob(images[:, ~observed]).sum(-1)
    assert torch.allclose(log_p, by_hand, atol=1e-4)
    flipped = images.clone()
    flipped[:, observed] = 1 - flipped[:, observed]
    assert torch.allclose(elbo_terms(baseline, inputs, flipped)["elbo"], log_p)
    assert Trace_ELBO().loss(baseline.model, baseline.guide, inputs, images) == pytest.approx(-log_p.sum().item(),
                                                                                                rel=1e-5)


def test_importance_sampled_nll_is_at_most_the_negative_elbo():
    pyro.set_rng_seed(0)
    observed = observed_mask(1)
    cvae = StructuredOutputCVAE(~observed, hidden_dim=32, z_dim=4)
    images = load_dataset("mnist-sample").test_images[:50]
    inputs, outputs = evaluation_pairs(images, observed, seed=2)
    negative_elbo = -elbo_terms(cvae, inputs, outputs, num_particles=200)["elbo"]
    negative_log_likelihood = -log_likelihood(cvae, inputs, outputs, num_samples=200)
    assert bool((negative_log_likelihood <= negative_elbo + 1e-3).all())
    assert float((negative_elbo - negative_log_likelihood).mean()) > 0.01


def test_prior_proposal_weights_are_the_likelihood_of_the_target():
    pyro.set_rng_seed(0)
    observed = observed_mask(2)
    cvae = StructuredOutputCVAE(~observed, hidden_dim=16, z_dim=3)
    images = torch.bernoulli(torch.full((4, 784), 0.2))
    inputs = masked_inputs(images, observed)
    pyro.set_rng_seed(5)
    estimate = log_likelihood(PriorProposal(cvae), inputs, images, num_samples=1)
    pyro.set_rng_seed(5)
    z = cvae.prior_dist(inputs).sample()
    assert torch.allclose(estimate.float(), cvae.likelihood_dist(z).log_prob(images), atol=1e-4)


def test_guide_needs_the_target_and_shapes_are_checked():
    cvae = StructuredOutputCVAE(~observed_mask(1), hidden_dim=8, z_dim=2)
    with pytest.raises(ValueError, match="needs the target y"):
        cvae.guide(torch.zeros(2, 784))
    with pytest.raises(ValueError, match=r"must be \(batch, 784\) images"):
        cvae.model(torch.zeros(2, 784), torch.zeros(3, 784))


@pytest.mark.slow
def test_early_stopping_keeps_the_best_validation_epoch(tmp_path):
    pyro.set_rng_seed(0)
    data = load_dataset("mnist-sample")
    observed = observed_mask(2)
    cvae = StructuredOutputCVAE(~observed, hidden_dim=64, z_dim=4)
    fit = fit_quadrant_model(cvae, data.train_images[:1000], data.valid_images[:300], observed, tmp_path / "cvae",
                             max_epochs=4, patience=1, lr=3e-3)
    losses = [record["valid_loss"] for record in fit.history]
    assert fit.best_valid_loss == min(losses) and fit.history[fit.best_epoch - 1]["valid_loss"] == min(losses)
    assert len(losses) == 4 or losses[-1] > fit.best_valid_loss
    inputs, outputs = evaluation_pairs(data.test_images[:200], observed, seed=2)
    scores = conditional_log_likelihoods(cvae, inputs, outputs, num_samples=50)
    assert set(scores) == {"elbo", "importance_sampled", "prior_monte_carlo"}
    assert float(scores["importance_sampled"].mean()) >= float(scores["elbo"].mean())
    checkpoint = load_checkpoint(tmp_path / "cvae" / "checkpoints" / "best.pt")  # a run directory of the one loop
    assert checkpoint["epoch"] == fit.best_epoch
    assert all(torch.equal(value, cvae.state_dict()[key]) for key, value in checkpoint["model"].items())

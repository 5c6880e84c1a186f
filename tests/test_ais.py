"""Annealed importance sampling against closed forms and against importance sampling."""

import math

import pyro
import pytest
import torch

from pyro_vae import SSVAE, VAE, ais_log_likelihood, log_importance_weights, log_likelihood
from pyro_vae.inference.ais import annealing_schedule
from test_bring_your_own_model import PPCA, points_from_a_ppca


@pytest.fixture(scope="module")
def ppca_with_a_poor_guide():
    torch.manual_seed(0)
    model = PPCA()
    with torch.no_grad():  # a generative model near the data's, a guide far from its posterior
        model.weight.copy_(torch.tensor([[2.0], [-1.0]]))
        model.bias.copy_(torch.tensor([0.5, 1.0]))
        model.raw_noise.fill_(math.log(math.expm1(0.3)))
        model.guide_loc.weight.fill_(0.1)
        model.guide_raw_scale.fill_(1.0)
    return model


def test_schedules_run_from_zero_to_one_and_rise():
    for schedule in ("sigmoid", "linear"):
        betas = annealing_schedule(50, schedule)
        assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        annealing_schedule(5, "cosine")


def test_one_step_from_the_guide_is_importance_sampling_on_the_same_draws(ppca_with_a_poor_guide):
    x = points_from_a_ppca(20)
    pyro.set_rng_seed(5)
    ais = ais_log_likelihood(ppca_with_a_poor_guide, x, num_steps=1, num_chains=32, pilot=False)
    pyro.set_rng_seed(5)
    weights = log_importance_weights(ppca_with_a_poor_guide, x, num_samples=32, chunk_size=32)
    importance_sampled = torch.logsumexp(weights.double(), 0) - math.log(32)
    torch.testing.assert_close(ais.log_likelihood, importance_sampled, rtol=0, atol=1e-9)


@pytest.mark.parametrize("init", ["guide", "prior"])
def test_ais_matches_the_analytic_log_likelihood_of_ppca(ppca_with_a_poor_guide, init):
    x = points_from_a_ppca(40, seed=3)
    exact = ppca_with_a_poor_guide.analytic_log_likelihood(x).double()
    pyro.set_rng_seed(0)
    result = ais_log_likelihood(ppca_with_a_poor_guide, x, num_steps=200, num_chains=8, leapfrog_steps=5, init=init)
    assert (result.log_likelihood - exact).mean().abs() < 0.05
    assert 0.4 < result.acceptance_rate < 0.95  # the pilot's step sizes held near the 0.65 target
    pyro.set_rng_seed(0)
    loose = log_likelihood(ppca_with_a_poor_guide, x, num_samples=8).double()
    assert (loose - exact).mean() < -0.1  # importance sampling with as many draws of the poor guide is looser


def test_ais_refuses_discrete_latents():
    m2 = SSVAE(z_dim=2, hidden_dim=8)
    with pytest.raises(ValueError, match="must be continuous with real support; 'y'"):
        ais_log_likelihood(m2, torch.zeros(3, 784), num_steps=2, num_chains=2)


@pytest.mark.slow
def test_ais_on_a_small_vae_is_at_least_importance_sampling(tmp_path):
    from pyro_vae import build_model, estimate_run, fit, load_dataset

    torch.manual_seed(0)
    fit(build_model("vae", z_dim=4, hidden_dim=32), load_dataset("mnist-sample", valid_size=500), out=tmp_path, epochs=2,
        batch_size=100, device="cpu", progress=False)
    options = {"num_steps": 10, "leapfrog_steps": 5}
    ais, per_image = estimate_run(tmp_path, "valid", estimator="ais", num_samples=4, num_particles=2, batch_size=500,
                                  device="cpu", progress=False, estimator_options=options)
    importance, _ = estimate_run(tmp_path, "valid", estimator="is", num_samples=4, num_particles=2, device="cpu",
                                 progress=False)
    assert ais["estimator"] == "ais" and ais["estimator_options"] == options and 0 < ais["acceptance_rate"] < 1
    assert ais["log_likelihood"] > importance["log_likelihood"] - 0.1
    assert per_image["log_likelihood"].shape == (500,)

    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "pyro_vae.cli", "evaluate", str(tmp_path), "--bdmc", "6", "--num-samples", "2",
               "--ais-steps", "5", "--leapfrog", "2", "--device", "cpu", "--json", str(tmp_path / "bdmc.json"),
               "--csv", str(tmp_path / "bdmc.csv")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "bdmc.json").read_text())
    assert summary["estimator"] == "bdmc" and summary["num_images"] == 6
    assert summary["estimator_options"] == {"num_steps": 5, "num_chains": 2, "leapfrog_steps": 2, "init": "guide"}
    assert summary["gap"] == pytest.approx(summary["upper"] - summary["lower"]) and summary["seconds"] > 0
    assert (tmp_path / "bdmc.csv").read_text().splitlines()[0] == "index,bdmc_lower,bdmc_upper,bdmc_gap"


def test_the_command_line_passes_the_ais_settings():
    from pyro_vae.cli import _estimator_options, build_parser

    args = build_parser().parse_args(["evaluate", "run", "--estimator", "ais", "--ais-steps", "7", "--leapfrog", "3",
                                      "--ais-init", "prior"])
    assert _estimator_options(args) == {"num_steps": 7, "leapfrog_steps": 3, "init": "prior"}
    assert _estimator_options(build_parser().parse_args(["evaluate", "run"])) == {}


def test_bdmc_brackets_the_analytic_log_likelihood_of_simulated_data(ppca_with_a_poor_guide):
    from pyro_vae import bdmc

    pyro.set_rng_seed(1)
    result = bdmc(ppca_with_a_poor_guide, 40, x_dim=2, num_steps=200, num_chains=4, leapfrog_steps=5)
    exact = ppca_with_a_poor_guide.analytic_log_likelihood(result.x).double()
    assert result.x.shape == (40, 2)
    assert result.lower.mean() <= exact.mean() + 0.02 and exact.mean() <= result.upper.mean() + 0.02
    assert 0 <= result.gap.mean() < 0.2


def test_bdmc_simulates_binary_images_from_a_vae():
    from pyro_vae.inference.ais import simulate

    x, latents = simulate(VAE(z_dim=3, hidden_dim=8), 5, 784)
    assert set(x.unique().tolist()) <= {0.0, 1.0} and latents["z"].shape == (5, 3)

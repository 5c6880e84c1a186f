"""M1+M2: M2 on features resampled from a fixed, trained VAE, as one model of x."""

import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from torch.nn import functional as F

from pyro_vae import build_model, estimate_run, fit, load_dataset, load_run
from pyro_vae.data.batches import evaluation_split
from pyro_vae.inference.evaluate import posterior_means
from pyro_vae.models.semisupervised import SemiSupervisedLoss
from pyro_vae.runs.checkpoint import CheckpointError
from test_ssvae import normal_log_density


@pytest.fixture(scope="module")
def m1_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("m1")
    torch.manual_seed(0)
    fit(build_model("vae", z_dim=6, hidden_dim=64), load_dataset("mnist-sample", valid_size=500), out=run_dir,
        epochs=2, batch_size=100, device="cpu", progress=False)
    return run_dir


def gaussian_head(network, inputs):
    loc, raw_scale = network(inputs).chunk(2, dim=-1)
    return loc, F.softplus(raw_scale) + 1e-5  # MIN_SCALE of pyro_vae.nets


@pytest.fixture(scope="module")
def digits():
    return load_dataset("mnist-sample").test_images[:4].bernoulli(generator=torch.Generator().manual_seed(0))


def test_features_are_drawn_afresh_from_the_m1_encoders_posterior(m1_run, digits):
    model = build_model("m1m2", m1_run=str(m1_run), hidden_dim=16, z2_dim=2)
    loc, scale = load_run(m1_run).model.encoder(digits)  # M1's encoder, loaded on its own
    active = model.active
    torch.manual_seed(3)
    draws = torch.stack([poutine.trace(model.guide).get_trace(digits).nodes["features"]["value"] for _ in range(4000)])
    assert draws.shape == (4000, len(digits), int(active.sum()))
    assert not torch.equal(draws[0], draws[1])  # a new draw every time an image is used
    standard_error = scale[:, active] / 4000 ** 0.5
    assert ((draws.mean(0) - loc[:, active]).abs() <= 4.5 * standard_error).all()
    torch.testing.assert_close(draws.std(0), scale[:, active], rtol=0.06, atol=0.0)


def test_enumerated_m1m2_loss_equals_the_hand_summed_expectation_over_classes(m1_run, digits):
    model = build_model("m1m2", m1_run=str(m1_run), hidden_dim=16, z2_dim=2)
    pyro.set_rng_seed(5)
    loss = SemiSupervisedLoss(model, aux_weight=1.0).unsupervised_loss(digits)

    pyro.set_rng_seed(5)
    enumerated = poutine.enum(config_enumerate(model.guide, "parallel"), first_available_dim=-2)
    trace = poutine.trace(enumerated).get_trace(digits)
    u, z2 = trace.nodes["features"]["value"], trace.nodes["z"]["value"]
    assert u.shape == (len(digits), model.feature_dim) and z2.shape == (10, len(digits), 2)
    m1 = load_run(m1_run).model
    loc, scale = m1.encoder(digits)
    m1_latent = model.inactive_means.expand_as(loc).clone()
    m1_latent[:, model.active] = u
    log_p_x = -F.binary_cross_entropy_with_logits(m1.decoder(m1_latent), digits, reduction="none").sum(-1)
    log_q_u = normal_log_density(u, loc[:, model.active], scale[:, model.active])
    log_q_y = torch.log_softmax(model.classifier(u), -1)
    by_class = []
    for c in range(10):
        one_hot = F.one_hot(torch.full((len(digits),), c), 10).float()
        u_loc, u_scale = gaussian_head(model.decoder, torch.cat([z2[c], one_hot], -1))
        z2_loc, z2_scale = gaussian_head(model.encoder, torch.cat([u, one_hot], -1))
        by_class.append(log_p_x + normal_log_density(u, u_loc, u_scale) - math.log(10)
                        + normal_log_density(z2[c], torch.zeros_like(z2[c]), torch.ones_like(z2[c]))
                        - normal_log_density(z2[c], z2_loc, z2_scale) - log_q_u)
    elbo = (log_q_y.exp() * (torch.stack(by_class, -1) - log_q_y)).sum()
    assert loss.item() == pytest.approx(-elbo.item(), rel=1e-5)

def test_encode_and_decode_are_the_style_z2_and_the_images_of_m1s_decoder(m1_run, digits):
    torch.manual_seed(0)
    model = build_model("m1m2", m1_run=str(m1_run), hidden_dim=16, z2_dim=2)
    m1 = load_run(m1_run).model
    u = m1.encoder(digits)[0][:, model.active]  # M1's posterior mean, active units
    labels = torch.tensor([3, 0, 9, 3])
    style = gaussian_head(model.encoder, torch.cat([u, F.one_hot(labels, 10).float()], -1))[0]
    torch.testing.assert_close(model.encode(digits, labels), style)
    predicted = model.classifier(u).argmax(-1)
    torch.testing.assert_close(model.encode(digits), model.encode(digits, predicted))
    z2 = torch.randn(4, 2)
    u_mean = gaussian_head(model.decoder, torch.cat([z2, F.one_hot(labels, 10).float()], -1))[0]
    m1_latent = model.inactive_means.expand(4, -1).clone()
    m1_latent[:, model.active] = u_mean
    torch.testing.assert_close(model.decode(z2, labels), torch.sigmoid(m1.decoder(m1_latent)))
    trace = poutine.trace(model.model).get_trace(digits)  # the style is site "z", as the figures draw it
    assert trace.nodes["z"]["value"].shape == (4, 2)


@pytest.mark.slow
def test_m1m2_trains_m2_alone_on_fresh_features_and_scores_log_p_x(m1_run, tmp_path):
    torch.manual_seed(1)
    model = build_model("m1m2", m1_run=str(m1_run), hidden_dim=32, z2_dim=3, labels=100)
    assert 0 < model.feature_dim <= 6 and model.feature_dim == model.m1_units
    m1_before = {name: value.clone() for name, value in model.m1.state_dict().items()}
    x = load_dataset("mnist-sample").test_images[:5].bernoulli(generator=torch.Generator().manual_seed(0))
    first, second = (poutine.trace(model.guide).get_trace(x).nodes["features"]["value"] for _ in range(2))
    assert not torch.equal(first, second)  # resampled from q_M1(z|x) every time an image is used

    result = fit(model, load_dataset("mnist-sample", valid_size=500), out=tmp_path, epochs=2, batch_size=100,
                 device="cpu", progress=False)
    assert result.test["accuracy"] > 0.3  # chance is 0.1
    for name, value in model.m1.state_dict().items():
        assert torch.equal(value, m1_before[name]), name  # M1 stays as trained
    run = load_run(tmp_path)  # rebuilt from the recorded M1 run and arguments
    assert run.model.feature_dim == model.feature_dim
    pyro.set_rng_seed(0)
    summary, _ = estimate_run(tmp_path, "test", num_samples=20, num_particles=2, device="cpu", progress=False)
    assert summary["log_likelihood"] > summary["elbo"] and summary["accuracy"] == pytest.approx(result.test["accuracy"])


def test_m1m2_presents_the_images_as_its_m1_saw_them(m1_run, tmp_path):
    data = load_dataset("mnist-sample", valid_size=500)
    grey_m1 = tmp_path / "grey-m1"
    fit(build_model("vae", z_dim=4, hidden_dim=32, likelihood="continuous-bernoulli"), data, out=grey_m1,
        epochs=1, batch_size=100, device="cpu", progress=False)
    for m1, binarize in ((m1_run, "dynamic"), (grey_m1, "none")):
        run_dir = tmp_path / f"m1m2-{binarize}"
        fit(build_model("m1m2", m1_run=str(m1), hidden_dim=16, z2_dim=2, labels=100), data, out=run_dir,
            epochs=1, batch_size=100, device="cpu", progress=False)
        assert json.loads((run_dir / "config.json").read_text())["data"]["binarize"] == binarize


def test_a_checkpoint_keeps_its_own_m1_and_refuses_a_different_active_set(m1_run):
    trained = build_model("m1m2", m1_run=str(m1_run), hidden_dim=16, z2_dim=2, active_threshold=0.0)
    with torch.no_grad():
        trained.m1.decoder.logits.bias.add_(1.0)  # the M1 inside the checkpoint differs from the run's
    fresh = build_model("m1m2", m1_run=str(m1_run), hidden_dim=16, z2_dim=2, active_threshold=0.0)
    fresh.load_state_dict(trained.state_dict())
    torch.testing.assert_close(fresh.m1.decoder.logits.bias, trained.m1.decoder.logits.bias, rtol=0, atol=0)

    run = load_run(m1_run)
    images, _ = evaluation_split(run.dataset, "valid", run.config.data.binarize, run.config.train.seed)
    variances = posterior_means(run.model, images).var(0)
    fewer = build_model("m1m2", m1_run=str(m1_run), hidden_dim=16, z2_dim=2,
                        active_threshold=float(variances.median()))
    assert fewer.feature_dim < trained.feature_dim == len(variances)
    with pytest.raises(ValueError, match=rf"trained on {trained.feature_dim} active units of M1, but the M1 run "
                                         rf".* now has {fewer.feature_dim}: it was trained further"):
        fewer.load_state_dict(trained.state_dict())


def test_m1m2_needs_a_vae_run(tmp_path):
    with pytest.raises(CheckpointError, match="is not a run directory: no config.json"):
        build_model("m1m2", m1_run=str(tmp_path))


@pytest.mark.slow
def test_m1m2_from_the_command_line(m1_run, tmp_path):
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", "--model", "m1m2", "--m1-run", str(m1_run),
                             "--labels", "100", "--hidden-dim", "32", "--model-arg", "z2_dim=3", "--dataset",
                             "mnist-sample", "--valid-size", "500", "--epochs", "1", "--device", "cpu", "--no-progress",
                             "--out", "run"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == {"model": "m1m2", "args": {"m1_run": str(m1_run), "labels": 100, "hidden_dim": 32,
                                                         "z2_dim": 3}}


@pytest.mark.slow
def test_the_label_sweep_runs_m1m2(m1_run, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "ssvae_label_sweep.py"
    result = subprocess.run([sys.executable, str(script), "--model", "m1m2", "--m1-run", str(m1_run), "--dataset",
                             "mnist-sample", "--no-download", "--labels", "20", "--seeds", "0", "--epochs", "1",
                             "--hidden-dim", "16", "--z-dim", "3", "--device", "cpu", "--out", str(tmp_path / "sweep")],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "sweep" / "error_table.md").read_text()
    assert "Test error (%) of M1+M2 on mnist-sample" in table
    assert "1 epochs, elbo objective, batch 500, lr 0.001 (x 1.0 per epoch), " in table  # M1+M2's default schedule
    config = json.loads((tmp_path / "sweep" / "labels20-seed0" / "config.json").read_text())
    assert config["model"]["args"]["labelled_weighting"] == "pass"
    # M1+M2's images, through M1's decoder
    for name in ("error_vs_labels", "class_conditional_samples", "analogies"):
        assert (tmp_path / "sweep" / f"{name}.png").read_bytes().startswith(b"\x89PNG")

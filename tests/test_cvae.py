"""The class-conditional VAE: its Pyro sites, its exact loss, its sampler, its CLI."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.image import imread
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.nn import functional as F

from pyro_vae import build_model, ConditionalVAE, DataConfig, ModelConfig, RunConfig, TrainConfig, estimate_run, fit_config, load_dataset
from pyro_vae.cli import main
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.run_dir import load_run


def test_sites_follow_the_shared_contract(binary_batch):
    cvae = ConditionalVAE(z_dim=6, hidden_dim=20)
    labels = torch.arange(16) % 10
    guide_trace = poutine.trace(cvae.guide).get_trace(binary_batch, labels)
    model_trace = poutine.trace(poutine.replay(cvae.model, trace=guide_trace)).get_trace(binary_batch, labels)
    samples = {name: site for name, site in model_trace.nodes.items() if site["type"] == "sample"}
    assert set(samples) == {"data", "z", "x"}
    for name in ("z", "x"):
        assert [frame.name for frame in samples[name]["cond_indep_stack"]] == ["data"]
        assert samples[name]["fn"].event_dim == 1 and samples[name]["fn"].batch_shape == (16,)
    assert samples["x"]["is_observed"] and samples["z"]["value"].shape == (16, 6)
    assert torch.equal(guide_trace.nodes["z"]["value"], samples["z"]["value"])


def test_loss_equals_hand_computed_bce_and_kl_for_the_same_z(binary_batch):
    cvae = ConditionalVAE(z_dim=5, hidden_dim=30)
    labels = torch.arange(16) % 10
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, binary_batch, labels)
    pyro.set_rng_seed(3)
    z = poutine.trace(cvae.guide).get_trace(binary_batch, labels).nodes["z"]["value"]
    one_hot = F.one_hot(labels, 10).float()
    loc, scale = cvae.encoder(torch.cat([binary_batch, one_hot], -1))
    logits = cvae.decoder(torch.cat([z, one_hot], -1))
    bce = F.binary_cross_entropy_with_logits(logits, binary_batch, reduction="sum")
    log_q = dist.Normal(loc, scale).log_prob(z).sum()
    log_p = dist.Normal(0.0, 1.0).log_prob(z).sum()
    assert loss.item() == pytest.approx((bce + log_q - log_p).item(), rel=1e-5)


def test_labels_are_required_and_checked(binary_batch):
    cvae = ConditionalVAE(z_dim=4, hidden_dim=10)
    with pytest.raises(ValueError, match="pass y"):
        cvae.model(binary_batch)
    with pytest.raises(ValueError, match="one class index per image"):
        cvae.guide(binary_batch, torch.zeros(3, dtype=torch.long))


def test_cvae_rejects_settings_it_does_not_have():
    with pytest.raises(ConfigError, match="ConditionalVAE accepts no argument 'arch'"):
        build_model("cvae", arch="conv")


def _train_small_classifier(images, labels, epochs=60):
    """Multinomial logistic regression on pixels, full batch: a judge of which digit an image shows."""
    torch.manual_seed(0)
    classifier = torch.nn.Linear(784, 10)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.05)
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(classifier(images), labels).backward()
        optimizer.step()
    return classifier


@pytest.mark.slow
def test_samples_show_the_requested_class(tmp_path):
    # A 2-dimensional style leaves the class to y after a short run (chance agreement is 10%).
    config = RunConfig(data=DataConfig(dataset="mnist-sample", download=False),
                       model=ModelConfig("cvae", {"hidden_dim": 200, "z_dim": 2}),
                       train=TrainConfig(epochs=10, device="cpu"))
    fit_config(config, tmp_path / "run", progress=False)
    cvae = load_run(tmp_path / "run").model
    data = load_dataset("mnist-sample")
    judge = _train_small_classifier(data.train_images, data.train_labels)
    judge_accuracy = (judge(data.test_images).argmax(-1) == data.test_labels).float().mean().item()
    assert judge_accuracy > 0.85
    requested = torch.arange(10).repeat_interleave(50)
    pyro.set_rng_seed(1)
    images = cvae.sample_images(requested)
    agreement = (judge(images).argmax(-1) == requested).float().mean().item()
    assert agreement > 0.7, f"only {agreement:.0%} of the samples look like the class asked for"


@pytest.mark.slow
def test_train_evaluate_and_sample_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "cvae", "--dataset", "mnist-sample", "--no-download", "--epochs", "1",
                 "--hidden-dim", "32", "--z-dim", "4", "--device", "cpu", "--out", str(run), "--no-progress"]) == 0
    summary, _ = estimate_run(run, "valid", num_samples=20, num_particles=2, device="cpu", progress=False)
    assert summary["log_likelihood_of"] == "log p(x|y)" and summary["n"] == 1333
    assert summary["log_likelihood"] >= summary["iwae_bounds"]["1"] - 0.5
    assert main(["sample", str(run), "--label", "7", "--num", "16", "--out", str(tmp_path / "sevens.png")]) == 0
    assert imread(tmp_path / "sevens.png").ndim == 3
    assert main(["sample", str(run), "--num", "20", "--out", str(tmp_path / "grid.png")]) == 0
    assert imread(tmp_path / "grid.png").ndim == 3
    capsys.readouterr()
    assert main(["sample", str(run), "--label", "12", "--out", str(tmp_path / "bad.png")]) == 2
    assert "--label 12 is not a class of this model; use 0..9" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.slow
def test_sample_refuses_a_label_for_an_unconditional_model(tmp_path, capsys):
    run = tmp_path / "vae"
    assert main(["train", "--dataset", "mnist-sample", "--no-download", "--epochs", "1", "--hidden-dim", "16",
                 "--z-dim", "2", "--device", "cpu", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--label", "3", "--out", str(tmp_path / "x.png")]) == 2
    assert "--label needs a model that generates a chosen class" in capsys.readouterr().err
    assert main(["sample", str(run), "--num", "9", "--out", str(tmp_path / "vae.png")]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["model"] == "vae"

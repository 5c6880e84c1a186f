"""The captured training step: the eager step's losses and parameters, or eager with the reason named."""

import json
import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_vae import fit
from pyro_vae.inference.objectives import NegativeELBO, make_objective
from pyro_vae.models import SSVAE, VAE, ConditionalVAE
from pyro_vae.training.capture import CapturedStep, EagerStep


def images(count: int = 300, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 784, generator=generator)


def labels(count: int = 300, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 10, (count,), generator=torch.Generator().manual_seed(seed))


def train(tmp_path, name, model_factory, caplog, data=None, **settings):
    """One small run (300 grey images, or ``data``); returns its metrics, its final weights and the log."""
    torch.manual_seed(0)
    model = model_factory()
    train_data, valid_data = data or (images(), images(100, seed=1))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        fit(model, train_data, valid=valid_data, out=tmp_path / name, epochs=2, batch_size=64, lr=1e-3,
            device="cpu", progress=False, **{"kl_warmup_epochs": 1, **settings})
    metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=False)["model"]
    return metrics, state, caplog.text


def assert_same_training(first, second):
    (metrics_a, state_a, _), (metrics_b, state_b, _) = first, second
    for a, b in zip(metrics_a, metrics_b, strict=True):
        for key in ("loss", "elbo", "reconstruction", "kl"):
            assert a["train"][key] == pytest.approx(b["train"][key], rel=1e-5)
        assert a["valid"]["elbo"] == pytest.approx(b["valid"]["elbo"], rel=1e-5)
    for name, value in state_a.items():
        torch.testing.assert_close(state_b[name], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("settings", [{"objective": "elbo"},
                                      {"objective": "iwae", "num_particles": 3, "gradient": "dreg", "kl_warmup_epochs": 0}])
def test_a_captured_run_computes_what_the_eager_run_computes(tmp_path, caplog, settings):
    """300 images in batches of 64: a full and a partial batch shape, each recorded once; with the
    ELBO, the KL warm-up changes the weight every step, read by the replays from a tensor."""
    captured = train(tmp_path, "captured", lambda: VAE(hidden_dim=32, z_dim=4), caplog, **settings)
    eager = train(tmp_path, "eager", lambda: VAE(hidden_dim=32, z_dim=4), caplog, capture=False, **settings)
    assert captured[2].count("training step captured as a graph") == 2  # batches of 64 and of 44
    assert "training step captured" not in eager[2]
    if settings["objective"] == "elbo":  # the warm-up weighed the KL term below 1 in epoch 1
        assert captured[0][0]["train"]["loss"] < -captured[0][0]["train"]["elbo"] - 0.1
    assert_same_training(captured, eager)


class LinearGaussian(nn.Module):
    """A model written here: factor analysis with an amortized linear guide, on real-valued data."""

    observes_binary_data = False

    def __init__(self, x_dim=5, z_dim=2):
        super().__init__()
        self.z_dim = z_dim
        self.loading = nn.Linear(z_dim, x_dim)
        self.log_noise = nn.Parameter(torch.zeros(x_dim))
        self.encoder = nn.Linear(x_dim, 2 * z_dim)

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(x.shape[0], self.z_dim)
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.loading(z), self.log_noise.exp()).to_event(1), obs=x)

    def guide(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def real_valued(count, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 2, generator=generator) @ torch.randn(2, 5, generator=generator) + 0.1 * torch.randn(
        count, 5, generator=generator)


@pytest.mark.parametrize("family", ["cvae", "linear-gaussian"])
def test_other_families_captured_train_as_they_do_eagerly(tmp_path, caplog, family):
    """The CVAE (labels passed as y, one-hot by comparison) and a model written here."""
    if family == "cvae":
        factory, data = (lambda: ConditionalVAE(hidden_dim=32, z_dim=4)), ((images(), labels()), (images(100, 1), labels(100, 1)))
    else:
        factory, data = LinearGaussian, (real_valued(300, 0), real_valued(100, 1))
    captured = train(tmp_path, "captured", factory, caplog, data=data)
    assert captured[2].count("training step captured as a graph") == 2
    assert_same_training(captured, train(tmp_path, "eager", factory, caplog, data=data, capture=False))


@pytest.mark.parametrize("weighting, recordings, objective", [("batch", 2, "elbo"), ("interleave", 3, "elbo"),
                                                              ("batch", 2, "meanfield")])
def test_m2_is_captured_and_trains_as_it_does_eagerly(tmp_path, caplog, weighting, recordings, objective):
    """M2's loss sums the class out without TraceEnum_ELBO, so its step is recorded: paired batches of
    64 and 24 unlabelled images with 20 labelled ones, or (interleave) two unlabelled shapes and a
    labelled-only step, with Monte Carlo or closed-form KL; the runs match the eager ones."""
    factory = lambda: SSVAE(hidden_dim=32, z_dim=4, labels=20, labelled_weighting=weighting)  # noqa: E731
    data = ((images(), labels()), (images(100, 1), labels(100, 1)))
    settings = {"kl_warmup_epochs": 0, "objective": objective}
    captured = train(tmp_path, "captured", factory, caplog, data=data, **settings)
    eager = train(tmp_path, "eager", factory, caplog, data=data, capture=False, **settings)
    assert captured[2].count("training step captured as a graph") == recordings
    assert "training step captured" not in eager[2]
    for a, b in zip(captured[0], eager[0], strict=True):
        for key in ("loss", "unsupervised", "supervised", "classification", "labelled_accuracy"):
            assert a["train"][key] == pytest.approx(b["train"][key], rel=1e-5)
        assert a["valid"] == pytest.approx(b["valid"], rel=1e-5)
    for name, value in captured[1].items():
        torch.testing.assert_close(eager[1][name], value, rtol=1e-4, atol=1e-6)


class ThresholdedVAE(VAE):
    """A user's model whose guide decides in Python on a tensor's value: it cannot be recorded."""

    def guide(self, x, y=None):
        if x.mean() > 2.0:  # never true for images in [0, 1]
            raise AssertionError("unreachable")
        return super().guide(x, y)


def test_a_model_that_reads_tensor_values_trains_eagerly_and_the_log_says_where(tmp_path, caplog):
    fallback = train(tmp_path, "fallback", lambda: ThresholdedVAE(hidden_dim=32, z_dim=4), caplog)
    assert ("training step not captured: recording it failed: a tensor's value is read in Python (.item(), bool() "
            "or data-dependent control flow) at tests/test_capture.py") in fallback[2]
    assert fallback[2].count("training step not captured") == 1  # said once, then eager without retrying
    eager = train(tmp_path, "eager", lambda: ThresholdedVAE(hidden_dim=32, z_dim=4), caplog, capture=False)
    assert_same_training(fallback, eager)


def test_a_loss_module_can_refuse_capture():
    torch.manual_seed(0)
    loss_module = NegativeELBO(VAE(hidden_dim=16, z_dim=2), make_objective("elbo"))
    loss_module.capturable = False
    step = CapturedStep(loss_module)
    x = torch.bernoulli(images(8))
    loss, _ = step((x, None), 8, validate=False)
    assert step.reason == "NegativeELBO.capturable is False" and not step.graphs
    assert torch.isfinite(loss) and all(p.grad is not None for p in loss_module.parameters())


def test_a_replay_that_disagrees_with_the_eager_step_is_not_used(monkeypatch):
    torch.manual_seed(0)
    loss_module = NegativeELBO(VAE(hidden_dim=16, z_dim=2), make_objective("elbo"))
    step = CapturedStep(loss_module)
    real_make_fx = pytest.importorskip("torch.fx.experimental.proxy_tensor").make_fx

    def make_fx_of_a_wrong_step(function, **kwargs):
        def wrong(parameters, buffers, batch):
            loss, statistics, gradients = function(parameters, buffers, batch)
            return loss + 1.0, statistics, gradients
        return real_make_fx(wrong, **kwargs)

    monkeypatch.setattr("pyro_vae.training.capture.make_fx", make_fx_of_a_wrong_step)
    x = torch.bernoulli(images(8))
    torch.manual_seed(5)
    loss, _ = step((x, None), 8, validate=False)
    assert step.reason == "its replay differs from the eager step in the loss" and not step.graphs
    torch.manual_seed(5)
    expected, _ = EagerStep(loss_module)((x, None), 8, validate=False)
    assert loss == expected  # the step still ran, eagerly, on the same random numbers


class DiscreteLatentModel(nn.Module):
    """A guide with a Bernoulli latent (no reparameterization): Pyro's score-function estimator."""

    def __init__(self):
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(0.3))
        self.loc = nn.Parameter(torch.tensor([0.5, -0.2]))

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            b = pyro.sample("b", dist.Bernoulli(0.5))
            z = pyro.sample("z", dist.Normal(b.unsqueeze(-1).expand(-1, 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("b", dist.Bernoulli(logits=self.logit.expand(x.shape[0])))
            pyro.sample("z", dist.Normal(self.loc + 0.5 * x, 0.8).to_event(1))


@pytest.mark.parametrize("model_class", [lambda: VAE(hidden_dim=16, z_dim=2), DiscreteLatentModel])
def test_our_elbo_gives_pyros_loss_and_gradients(model_class):
    """Computed on the device for reparameterized guides, Pyro's own surrogate otherwise: either way
    the value and gradient of pyro.infer.Trace_ELBO on the same random numbers."""
    torch.manual_seed(0)
    model = model_class()
    x = torch.bernoulli(images(6))[:, :784] if isinstance(model, VAE) else torch.randn(6, 2)
    results = []
    for elbo in (make_objective("elbo"), Trace_ELBO()):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss = elbo.differentiable_loss(model.model, model.guide, x)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (ours, our_gradients), (pyros, pyro_gradients) = results
    torch.testing.assert_close(ours, pyros, rtol=1e-6, atol=1e-5)
    for a, b in zip(our_gradients, pyro_gradients, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_captured_run_resumes_like_an_uninterrupted_one(tmp_path, caplog):
    uninterrupted = train(tmp_path, "whole", lambda: VAE(hidden_dim=32, z_dim=4), caplog)
    torch.manual_seed(0)
    model = VAE(hidden_dim=32, z_dim=4)
    common = dict(valid=images(100, seed=1), batch_size=64, lr=1e-3, kl_warmup_epochs=1, device="cpu", progress=False)
    # epoch 2 is recorded afresh after the resume: the graphs are not part of the checkpoint
    fit(model, images(), out=tmp_path / "split", epochs=1, **common)
    torch.manual_seed(0)
    fit(VAE(hidden_dim=32, z_dim=4), images(), out=tmp_path / "split", epochs=2, resume=True, **common)
    metrics = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert_same_training(uninterrupted, (metrics, state, ""))


@pytest.mark.slow
def test_a_compiled_recorded_step_computes_what_the_recorded_step_computes(tmp_path, caplog):
    compiled = train(tmp_path, "compiled", lambda: VAE(hidden_dim=32, z_dim=4), caplog, compile=True)
    assert compiled[2].count("recorded step compiled with torch.compile") == 2
    assert_same_training(compiled, train(tmp_path, "recorded", lambda: VAE(hidden_dim=32, z_dim=4), caplog))


def test_a_recorded_step_that_does_not_compile_is_replayed_uncompiled(tmp_path, caplog, compile_unavailable):
    fallback = train(tmp_path, "fallback", lambda: VAE(hidden_dim=32, z_dim=4), caplog, compile=True)
    assert ("compiling it failed (RuntimeError: C++ compiler not found); the recorded step is replayed uncompiled"
            in fallback[2])
    assert_same_training(fallback, train(tmp_path, "recorded", lambda: VAE(hidden_dim=32, z_dim=4), caplog))

"""The --fast path: compiled networks compute what the eager Trace_ELBO path computes; failures fall back."""

import copy
import logging

import pytest
import torch

from pyro_vae import DataConfig, ModelConfig, RunConfig, TrainConfig, fit_config
from pyro_vae.training.fast_path import compile_networks, make_adam, networks_of
from pyro_vae.models import VAE
from pyro_vae.inference.objectives import NegativeELBO, make_objective
from pyro_vae.training.trainer import train_steps


def loss_and_gradients(loss_module, x, seed):
    torch.manual_seed(seed)
    loss_module.zero_grad(set_to_none=True)
    loss = loss_module(x)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in loss_module.named_parameters()}


@pytest.mark.slow
# dynamo itself reads .grad of non-leaf tensors while it traces; the warning is torch's, not ours
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
def test_compiled_networks_give_the_eager_loss_and_gradients(binary_batch):
    torch.manual_seed(0)
    eager = NegativeELBO(VAE(z_dim=8, hidden_dim=64), make_objective("elbo"))
    fast = copy.deepcopy(eager)
    assert compile_networks(fast, (binary_batch,))
    assert eager.state_dict().keys() == fast.state_dict().keys()  # checkpoints stay interchangeable
    for seed in (1, 2):
        eager_loss, eager_gradients = loss_and_gradients(eager, binary_batch, seed)
        fast_loss, fast_gradients = loss_and_gradients(fast, binary_batch, seed)
        torch.testing.assert_close(fast_loss, eager_loss, rtol=1e-5, atol=1e-4)
        for name, gradient in eager_gradients.items():
            assert gradient.abs().max() > 0
            torch.testing.assert_close(fast_gradients[name], gradient, rtol=1e-4, atol=1e-5)


def test_compilation_failure_leaves_the_model_eager_and_says_why(binary_batch, compile_unavailable, caplog):
    torch.manual_seed(0)
    loss_module = NegativeELBO(VAE(z_dim=8, hidden_dim=64), make_objective("elbo"))
    reference = copy.deepcopy(loss_module)
    with caplog.at_level(logging.WARNING):
        assert not compile_networks(loss_module, (binary_batch,))
    assert ("torch.compile did not work here (RuntimeError: C++ compiler not found); training continues without "
            "compilation") in caplog.text
    assert len(networks_of(loss_module.model)) == 2
    loss, gradients = loss_and_gradients(loss_module, binary_batch, 3)  # still runs, eagerly
    reference_loss, reference_gradients = loss_and_gradients(reference, binary_batch, 3)
    assert torch.equal(loss, reference_loss)
    assert all(torch.equal(gradients[name], g) for name, g in reference_gradients.items())


def test_training_with_fast_falls_back_and_finishes_when_compilation_fails(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", lambda function, *a, **k: (_ for _ in ()).throw(RuntimeError("no backend")))
    config = RunConfig(data=DataConfig(dataset="mnist-sample", valid_size=500, download=False),
                       model=ModelConfig("vae", {"hidden_dim": 32, "z_dim": 4}),
                       train=TrainConfig(epochs=1, batch_size=100, device="cpu", compile=True, capture=False))
    with caplog.at_level(logging.WARNING):
        result = fit_config(config, tmp_path / "run", progress=False)
    assert "training continues without compilation" in caplog.text
    assert result.test["elbo"] < 0 and (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_fused_adam_where_the_device_has_it_and_the_default_elsewhere(caplog):
    cpu = torch.nn.Parameter(torch.zeros(3))
    assert make_adam([cpu], 1e-3, fused=True).defaults["fused"] is True
    assert not make_adam([cpu], 1e-3, fused=False).defaults["fused"]
    meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
    with caplog.at_level(logging.WARNING):
        assert not make_adam([meta], 1e-3, fused=True).defaults["fused"]
    assert "fused Adam has no kernel for parameters on meta/torch.float32; using the default Adam" in caplog.text


@pytest.mark.parametrize("fused", [True, False])
def test_weight_decay_pulls_parameters_towards_zero_by_the_learning_rate_on_adams_first_step(fused):
    # With no gradient from the loss, Adam's gradient is weight_decay * p: its first step is lr * sign(p).
    parameter = torch.nn.Parameter(torch.tensor([2.0, -3.0]))
    optimizer = make_adam([parameter], 0.1, fused=fused, weight_decay=0.5)
    (0.0 * parameter).sum().backward()
    optimizer.step()
    torch.testing.assert_close(parameter.detach(), torch.tensor([1.9, -2.9]))
    untouched = torch.nn.Parameter(torch.tensor([2.0, -3.0]))
    optimizer = make_adam([untouched], 0.1, fused=fused)
    (0.0 * untouched).sum().backward()
    optimizer.step()
    torch.testing.assert_close(untouched.detach(), torch.tensor([2.0, -3.0]))


class Batches:
    """Fixed batches in the shape of EpochBatches."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def epoch(self, epoch):
        return ((x, None) for x in self.batches)


def train_a_few_steps(fast: bool, batches):
    torch.manual_seed(0)
    loss_module = NegativeELBO(VAE(z_dim=8, hidden_dim=64), make_objective("elbo"))
    optimizer = make_adam(loss_module.parameters(), 1e-3, fused=fast)
    torch.manual_seed(1)
    totals, _ = train_steps(1, 0, loss_module, optimizer, Batches(batches), TrainConfig(fast=fast), progress=False)
    return totals, loss_module.state_dict()


def test_fast_training_steps_follow_the_default_path():
    generator = torch.Generator().manual_seed(2)
    batches = [torch.bernoulli(torch.full((32, 784), 0.2), generator=generator) for _ in range(5)]
    default_totals, default_state = train_a_few_steps(False, batches)
    fast_totals, fast_state = train_a_few_steps(True, batches)
    torch.testing.assert_close(fast_totals, default_totals, rtol=1e-5, atol=1e-3)  # summed losses and terms
    for name, value in default_state.items():
        torch.testing.assert_close(fast_state[name], value, rtol=1e-4, atol=1e-6)


def test_fast_training_still_validates_each_epochs_first_step():
    grey = [torch.full((32, 784), 0.5)]  # not 0/1: the Bernoulli likelihood must refuse it
    with pytest.raises(ValueError, match="Expected value argument"):
        train_a_few_steps(True, grey)

"""Training and evaluation on a GPU: the same results as the eager path, checkpoints that move to a CPU.

These need CUDA and are skipped where there is none (CI has none); they ran on an H200 when one was lent.
"""

import json
import logging

import pytest
import torch

from pyro_vae import fit, load_run
from pyro_vae.inference.evaluate import dataset_log_likelihood
from pyro_vae.models import VAE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 784, generator=torch.Generator().manual_seed(seed))


def train_on_gpu(out, caplog, **settings):
    torch.manual_seed(0)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        fit(VAE(hidden_dim=64, z_dim=8), images(600, 0), valid=images(200, 1), out=out, epochs=2, batch_size=128,
            kl_warmup_epochs=1, device="cuda", progress=False, **settings)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return metrics, caplog.text


def test_the_captured_step_on_a_gpu_trains_as_the_eager_step(tmp_path, caplog):
    captured, log = train_on_gpu(tmp_path / "captured", caplog)
    assert log.count("training step captured as a graph") == 2  # batches of 128 and of 88
    eager, _ = train_on_gpu(tmp_path / "eager", caplog, capture=False)
    for a, b in zip(captured, eager, strict=True):
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-4)
        assert a["valid"]["elbo"] == pytest.approx(b["valid"]["elbo"], rel=1e-4)
    weights = torch.load(tmp_path / "captured" / "checkpoints" / "last.pt", weights_only=False)["model"]
    reference = torch.load(tmp_path / "eager" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(value.is_cuda for value in weights.values())
    for name, value in reference.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-3, atol=1e-5)


def test_a_gpu_run_loads_on_the_cpu_and_resumes_on_the_gpu(tmp_path, caplog):
    train_on_gpu(tmp_path / "run", caplog)
    run = load_run(tmp_path / "run", device="cpu", model=VAE(hidden_dim=64, z_dim=8), data=images(600, 0))
    assert all(p.device.type == "cpu" for p in run.model.parameters())
    x = torch.bernoulli(images(50, 2))
    with torch.no_grad():
        on_cpu = dataset_log_likelihood(run.model, x, num_samples=200, chunk_size=100)["log_likelihood"]
        on_gpu = dataset_log_likelihood(run.model.cuda(), x.cuda(), num_samples=200, chunk_size=100)["log_likelihood"]
    assert on_gpu.is_cuda
    assert on_cpu.mean().item() == pytest.approx(on_gpu.mean().item(), abs=0.5)  # independent draws, 200 each
    torch.manual_seed(0)
    fit(VAE(hidden_dim=64, z_dim=8), images(600, 0), valid=images(200, 1), out=tmp_path / "run", epochs=3,
        batch_size=128, kl_warmup_epochs=1, device="cuda", progress=False, resume=True)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

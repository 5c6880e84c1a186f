"""Data-parallel training: shards partition each global batch; 2 Gloo processes train one model."""

import json
import os
import socket
import subprocess
import sys
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp

from pyro_vae import TrainConfig, build_model, load_dataset
from pyro_vae.data.batches import EpochBatches
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.training.distributed import (Replicas, ReplicasOutOfSync, ShardedBatches, check_replicas_in_sync,
                                  replicas_from_environment, seed_rank_for_epoch, wrap_loss)
from pyro_vae.inference.objectives import NegativeELBO, make_objective
from pyro_vae.models.semisupervised import SemiSupervisedBatches
from pyro_vae.training.capture import EagerStep
from pyro_vae.training.trainer import train_steps

WORLD_SIZE = 2
GLOBAL_BATCH = 127  # ranks get 64 and 63 images: the uneven case
Z_DIM = 4


def test_rank_shares_partition_every_global_batch_and_divide_by_global_size_over_ranks():
    images = torch.rand(300, 784)
    labels = torch.arange(300) % 10
    plain = EpochBatches(images, labels, 128, "dynamic", seed=3)
    shards = [ShardedBatches(EpochBatches(images, labels, 128, "dynamic", seed=3), Replicas(rank, 3),
                             NegativeELBO.num_images) for rank in range(3)]
    steps = list(zip(plain.epoch(2), *(shard.epoch(2) for shard in shards)))
    assert len(steps) == 3  # 128 + 128 + 44 images
    for (x, y), *rank_steps in steps:
        assert torch.equal(torch.cat([share[0] for share, _ in rank_steps]), x)  # same binarized pixels
        assert torch.equal(torch.cat([share[1] for share, _ in rank_steps]), y)
        assert [denominator for _, denominator in rank_steps] == [len(x) / 3] * 3
    assert [len(share[0]) for share, _ in steps[-1][1:]] == [15, 15, 14]


def test_semisupervised_steps_are_sharded_part_by_part():
    images, labels = torch.rand(90, 784), torch.arange(90) % 10
    labelled = torch.arange(0, 90, 9)  # one of each class
    def batches():
        return SemiSupervisedBatches(images, labels, labelled, 40, "dynamic", seed=1)
    whole = next(batches().epoch(1))
    rank_steps = [next(ShardedBatches(batches(), Replicas(rank, 2), lambda xu, xl, yl: len(xu)).epoch(1))
                  for rank in range(2)]
    for part in range(3):
        assert torch.equal(torch.cat([share[part] for share, _ in rank_steps]), whole[part])
    assert [denominator for _, denominator in rank_steps] == [20.0, 20.0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _first_step_gradients(replicas: Replicas, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of one training step on one global batch, with the reparameterization noise of each
    image fixed (so one process and two can be compared exactly)."""
    torch.manual_seed(0)
    model = build_model("vae", hidden_dim=32, z_dim=Z_DIM)
    loss_module = NegativeELBO(model, make_objective("elbo"))
    noise = torch.randn(GLOBAL_BATCH, Z_DIM, generator=torch.Generator().manual_seed(1))
    rank_noise = noise.tensor_split(replicas.world_size)[replicas.rank]

    def fixed_standard_normal(shape, dtype, device):
        assert tuple(shape) == tuple(rank_noise.shape)
        return rank_noise.to(dtype=dtype, device=device)

    batches = ShardedBatches(EpochBatches(images, None, GLOBAL_BATCH, "dynamic", seed=5), replicas,
                             loss_module.num_images)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with mock.patch("torch.distributions.normal._standard_normal", fixed_standard_normal):
        train_steps(1, 0, loss_module, optimizer, batches, TrainConfig(), False,
                    EagerStep(loss_module, wrap_loss(loss_module, replicas)))
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


def _trained_model(replicas: Replicas, images: torch.Tensor) -> torch.nn.Module:
    """Parameters after an epoch of Adam steps, each rank drawing its own sampling noise."""
    torch.manual_seed(0)
    model = build_model("vae", hidden_dim=32, z_dim=Z_DIM)
    loss_module = NegativeELBO(model, make_objective("elbo"))
    batches = ShardedBatches(EpochBatches(images, None, 64, "dynamic", seed=5), replicas, loss_module.num_images)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    seed_rank_for_epoch(0, 1, replicas)
    train_steps(1, 0, loss_module, optimizer, batches, TrainConfig(), False,
                    EagerStep(loss_module, wrap_loss(loss_module, replicas)))
    return model


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE))
    torch.set_num_threads(1)
    images = load_dataset("mnist-sample", download=False).train_images
    with replicas_from_environment("cpu") as replicas:
        gradients = _first_step_gradients(replicas, images[:GLOBAL_BATCH])
        model = _trained_model(replicas, images[:512])
        check_replicas_in_sync(model, replicas)  # in sync: passes on every rank
        parameters = {name: value.clone() for name, value in model.state_dict().items()}
        with torch.no_grad():
            if rank == 1:
                next(model.parameters())[0, 0] += 1e-3
        try:
            check_replicas_in_sync(model, replicas)
            detected = ""
        except ReplicasOutOfSync as error:
            detected = str(error)
    torch.save({"gradients": gradients, "parameters": parameters, "detected": detected},
               os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


def test_two_process_first_step_gradients_equal_the_one_process_gradients(two_rank_results):
    images = load_dataset("mnist-sample", download=False).train_images[:GLOBAL_BATCH]
    reference = _first_step_gradients(Replicas(), images)
    for result in two_rank_results:
        assert result["gradients"].keys() == reference.keys()
        for name, gradient in reference.items():
            assert gradient.abs().max() > 0
            torch.testing.assert_close(result["gradients"][name], gradient, rtol=1e-5, atol=1e-6)


def test_ranks_hold_identical_parameters_after_training(two_rank_results):
    first, second = (result["parameters"] for result in two_rank_results)
    untrained = (torch.manual_seed(0), build_model("vae", hidden_dim=32, z_dim=Z_DIM).state_dict())[1]
    for name, value in first.items():
        assert torch.equal(second[name], value)
        assert not torch.equal(untrained[name], value)


def test_out_of_sync_replicas_are_detected_on_every_rank(two_rank_results):
    for result in two_rank_results:
        assert "1 of 2 ranks hold parameters different from rank 0's" in result["detected"]


def torchrun(*args, cwd):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
               "-m", "pyro_vae.cli", "train", *args]
    # a rank that aborts prints its Python stack into stderr, which a failed assertion shows
    environment = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=environment)


SETTINGS = ["--dataset", "mnist-sample", "--valid-size", "500", "--hidden-dim", "32", "--z-dim", "4",
            "--device", "cpu", "--no-progress"]


@pytest.mark.slow
def test_torchrun_writes_one_run_and_resumes_like_an_uninterrupted_run(tmp_path):
    straight = torchrun(*SETTINGS, "--epochs", "2", "--out", "straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    assert straight.stdout.count("run directory: straight") == 1
    assert "data-parallel over 2 processes (gloo): 64 datapoints per rank per step, global batch 128" in straight.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["straight"]
    assert sorted(p.name for p in (tmp_path / "straight").iterdir()) == [
        "checkpoints", "config.json", "figures", "metrics.jsonl", "summary.json"]
    assert sorted(p.name for p in (tmp_path / "straight" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo", "batch_size_per_rank": 64,
                                     "effective_batch_size": 128, "effective_lr": 1e-3}

    first = torchrun(*SETTINGS, "--epochs", "1", "--out", "resumed", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = torchrun("--out", "resumed", "--resume", "--epochs", "2", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1" in resumed.stdout

    def final(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines], load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")

    straight_metrics, straight_state = final("straight")
    resumed_metrics, resumed_state = final("resumed")
    assert [m["epoch"] for m in resumed_metrics] == [1, 2]
    for a, b in zip(resumed_metrics, straight_metrics):
        assert a["train"] == pytest.approx(b["train"], rel=1e-6) and a["valid"] == pytest.approx(b["valid"], rel=1e-6)
    for name, value in straight_state["model"].items():
        torch.testing.assert_close(resumed_state["model"][name], value)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--batch-size", "101", "--out", "run"], "--batch-size 101 (the global batch) does not split evenly over 2 "
                                              "processes; use a multiple of 2"),
    ([], "under torchrun pass --out RUN_DIR"),
])
def test_torchrun_refuses_settings_that_do_not_fit_two_processes(tmp_path, args, message):
    result = torchrun(*SETTINGS, "--epochs", "1", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert not any(tmp_path.iterdir())

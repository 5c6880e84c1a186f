"""Data-parallel training under ``torchrun``: the process group, per-rank shards of each batch, reductions.

One model is trained by N processes. Each rank draws the same global batch (same seeded order and
binarization) and keeps its own share of it, so N processes see exactly the images one process
would; DistributedDataParallel averages the gradients. The loss each rank backpropagates is scaled
so that the average is the gradient of the global batch's mean loss, whatever the shares' sizes.
``--batch-size`` is therefore the global (effective) batch size and the learning rate is not
rescaled: a run on N processes follows one process's optimisation path up to sampling noise.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyro
import torch
import torch.distributed as dist
from torch import nn

from pyro_vae.runs.config import ConfigError


@dataclass(frozen=True)
class Replicas:
    """This process's place among the processes that train one model (``world_size`` 1: alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes run files."""
        return self.rank == 0


def _environment_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


@contextmanager
def replicas_from_environment(device_name: str, timeout_minutes: float = 30.0) -> Iterator[Replicas]:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1).

    NCCL when the run uses CUDA (each rank on GPU ``LOCAL_RANK``), Gloo on CPUs. Without torchrun's
    variables, or with ``WORLD_SIZE=1``, this is a single process and nothing is initialised. A
    process group the caller already initialised is used as is and left open.
    """
    world_size = _environment_int("WORLD_SIZE") or 1
    if world_size == 1:
        yield Replicas()
        return
    rank, local_rank = _environment_int("RANK"), _environment_int("LOCAL_RANK")
    if rank is None or local_rank is None:
        raise ConfigError(f"WORLD_SIZE={world_size} is set but RANK or LOCAL_RANK is not; launch with torchrun "
                          "(torchrun --nproc_per_node N -m pyro_vae.cli train ...), which sets all three")
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} has no GPU (this node has {torch.cuda.device_count()}); "
                              "start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    initialised_here = not dist.is_initialized()
    if initialised_here:
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    replicas = Replicas(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                        backend=dist.get_backend())
    try:
        yield replicas
        if initialised_here:
            dist.barrier()  # leave together: a rank tearing gloo down while another still talks to it can abort
    finally:
        if initialised_here:
            # data-parallel wrappers left in reference cycles hold the process group; freed later, at
            # interpreter exit, gloo's threads can abort the process ("terminate called without an
            # active exception"), so they go first
            gc.collect()
            dist.destroy_process_group()


def device_of(replicas: Replicas, device: torch.device) -> torch.device:
    """The rank's own GPU when the run is on CUDA (``cuda:LOCAL_RANK``), else ``device``."""
    if device.type == "cuda" and replicas.is_distributed:
        return torch.device("cuda", replicas.local_rank)
    return device


def barrier(replicas: Replicas) -> None:
    if replicas.is_distributed:
        dist.barrier()


def wrap_loss(loss_module: nn.Module, replicas: Replicas) -> nn.Module:
    """The module whose ``forward`` each training step calls: DDP around the loss module when distributed.

    DDP broadcasts rank 0's parameters at construction and averages gradients in ``backward``.
    """
    if not replicas.is_distributed:
        return loss_module
    device = next(loss_module.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(loss_module, device_ids=device_ids)


def reduce_sum(tensor: torch.Tensor, replicas: Replicas) -> torch.Tensor:
    """The elementwise sum of ``tensor`` over ranks (``tensor`` itself alone)."""
    return _all_reduce(tensor, replicas, dist.ReduceOp.SUM)


def reduce_min(tensor: torch.Tensor, replicas: Replicas) -> torch.Tensor:
    """The elementwise minimum of ``tensor`` over ranks."""
    return _all_reduce(tensor, replicas, dist.ReduceOp.MIN)


def _all_reduce(tensor: torch.Tensor, replicas: Replicas, op) -> torch.Tensor:
    if replicas.is_distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=op)
    return tensor


def seed_rank_for_epoch(seed: int, epoch: int, replicas: Replicas) -> None:
    """Give each rank its own sampling noise, reproducible from ``(seed, epoch, rank)``.

    Reseeding at every epoch makes ``--resume`` exact without gathering every rank's generator
    state into rank 0's checkpoint.
    """
    digest = hashlib.sha256(f"{seed}/{epoch}/{replicas.rank}".encode()).digest()
    pyro.set_rng_seed(int.from_bytes(digest[:4], "little"))


class ReplicasOutOfSync(RuntimeError):
    """The ranks' parameters differ, so they no longer train one model."""


@torch.no_grad()
def check_replicas_in_sync(model: nn.Module, replicas: Replicas) -> None:
    """Raise :class:`ReplicasOutOfSync` on every rank if any rank's parameters differ from rank 0's."""
    if not replicas.is_distributed:
        return
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    differs = torch.tensor([float(not torch.equal(flat, reference))], device=flat.device)
    dist.all_reduce(differs, op=dist.ReduceOp.SUM)
    if differs.item():
        raise ReplicasOutOfSync(
            f"{int(differs.item())} of {replicas.world_size} ranks hold parameters different from rank 0's; "
            "every rank must build the model with the same settings and seed (launch all ranks with the same command)"
        )


class ShardedBatches:
    """This rank's share of every global batch of ``batches`` (an :class:`~pyro_vae.batches.EpochBatches`
    or :class:`~pyro_vae.semisupervised.SemiSupervisedBatches`).

    Each tensor of a step is split along the batch into ``world_size`` nearly equal parts
    (``torch.tensor_split``); rank r keeps part r. :meth:`epoch` also yields the number of images
    that rank's summed loss is divided by, ``global images / world_size``, so that DDP's average
    over ranks is the global batch's mean gradient even when the parts differ in size.
    """

    def __init__(self, batches, replicas: Replicas, num_images: Callable[..., int]) -> None:
        self.batches = batches
        self.replicas = replicas
        self.num_images = num_images

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int) -> Iterator[tuple[tuple, float]]:
        world_size, rank = self.replicas.world_size, self.replicas.rank
        for batch in self.batches.epoch(epoch):
            share = tuple(None if part is None else part.tensor_split(world_size)[rank] for part in batch)
            yield share, self.num_images(*batch) / world_size


def broadcast_from_main(value: Any, replicas: Replicas) -> Any:
    """Rank 0's ``value`` (any picklable object; tensors come back on the CPU) on every rank."""
    if not replicas.is_distributed:
        return value
    if replicas.is_main and value is not None:
        value = _to_cpu(value)
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _to_cpu(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value

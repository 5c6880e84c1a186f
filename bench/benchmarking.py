"""Timing helpers and the plain-PyTorch reference the benchmarks compare against (no Pyro in the floors).

The hand-written VAE step here (BCE with logits + analytic KL) is the floor our Pyro training step
is measured against; it is never used for training.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from pyro_vae.models import VAE


def machine_description(device: torch.device) -> str:
    """CPU model and torch threads, or the GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def interleaved_median_seconds(functions: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                               warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function over ``repeats`` rounds, after ``warmup`` rounds; each round
    calls every function once, in turn, so that drifts of a shared machine hit all of them alike.
    CUDA is synchronised around each call."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for round_index in range(warmup + repeats):
        for name, function in functions.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            function()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def plain_vae_loss(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """The hand-written negative ELBO per image: BCE with logits + analytic Gaussian KL, one z sample."""
    loc, scale = vae.encoder(x)
    z = loc + scale * torch.randn_like(loc)
    reconstruction = F.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="sum")
    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * torch.log(scale)).sum()
    return (reconstruction + kl) / x.shape[0]


def bare_decoder_log_density(vae: VAE, x: torch.Tensor, num_samples: int, chunk_size: int) -> torch.Tensor:
    """The evaluation floor: decoder forward on K x batch codes and the Bernoulli log-density, nothing else."""
    totals = []
    for start in range(0, num_samples, chunk_size):
        z = torch.randn(min(chunk_size, num_samples - start), x.shape[0], vae.z_dim, device=x.device)
        logits = vae.decoder(z)
        totals.append(-F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1))
    return torch.cat(totals)

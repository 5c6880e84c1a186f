"""Timing helpers and the plain-PyTorch reference the benchmarks compare against (no Pyro in the floors).

The hand-written VAE step here (BCE with logits + analytic KL) is the floor our Pyro training step
is measured against; it is never used for training.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Iterator

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


def hand_written_training(vae: VAE, batches: Callable[[], Iterable[torch.Tensor]]) -> Callable[[], None]:
    """Steps of the hand-written loss with fused Adam over the images ``batches()`` yields, the loss
    read back once at the end."""
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)

    def run() -> None:
        total = torch.zeros((), device=next(vae.parameters()).device)
        for x in batches():
            loss = plain_vae_loss(vae, x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        total.item()

    return run


def hand_written_epoch(vae: VAE, images: torch.Tensor, batch_size: int) -> Callable[[], None]:
    """An epoch as a user would write it, with its own data pipeline: shuffle, slice, ``torch.bernoulli``
    (dynamic binarization), the hand-written loss, fused Adam."""

    def own_pipeline() -> Iterator[torch.Tensor]:
        order = torch.randperm(len(images), device=images.device)
        for start in range(0, len(images), batch_size):
            yield torch.bernoulli(images[order[start : start + batch_size]])

    return hand_written_training(vae, own_pipeline)


def hand_written_log_likelihood(vae: VAE, x: torch.Tensor, num_samples: int, chunk_size: int) -> torch.Tensor:
    """Importance-sampled log p(x) by hand: the encoder once, K reparameterized draws from q(z|x) in
    chunks, the decoder, Bernoulli log p(x|z), Normal log p(z) and log q(z|x), logsumexp in float64."""
    loc, scale = vae.encoder(x)
    log_weights = []
    for start in range(0, num_samples, chunk_size):
        noise = torch.randn(min(chunk_size, num_samples - start), *loc.shape, device=x.device)
        z = loc + scale * noise
        logits = vae.decoder(z)
        log_px_given_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_pz = (-0.5 * z**2 - _HALF_LOG_TWO_PI).sum(-1)
        log_qz = (-0.5 * noise**2 - torch.log(scale) - _HALF_LOG_TWO_PI).sum(-1)
        log_weights.append(log_px_given_z + log_pz - log_qz)
    return torch.logsumexp(torch.cat(log_weights).double(), 0) - math.log(num_samples)


_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)

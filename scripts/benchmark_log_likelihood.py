"""Throughput of importance-sampled log p(x) against a bare batched decoder pass of the same network.

Both are timed in one process on the same device, same images, K and chunk size: (a) our
``log_likelihood`` (guide and model traced over a particles plate, log-weights, logsumexp) and
(b) the floor: the decoder alone on K x batch latent codes with the Bernoulli log-density summed,
no Pyro. Reports images x samples per second and the ratio a / b (median of repeats after warm-up).

    python scripts/benchmark_log_likelihood.py --num-images 200 --num-samples 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch.nn import functional as F

from pyro_vae.evaluate import log_likelihood
from pyro_vae.models import VAE


def bare_decoder_log_density(vae: VAE, x: torch.Tensor, num_samples: int, chunk_size: int) -> torch.Tensor:
    """The floor: decoder forward on K x batch codes and the Bernoulli log-density, nothing else."""
    totals = []
    for start in range(0, num_samples, chunk_size):
        z = torch.randn(min(chunk_size, num_samples - start), x.shape[0], vae.z_dim, device=x.device)
        logits = vae.decoder(z)
        totals.append(-F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1))
    return torch.cat(totals)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_seconds(function, repeats: int, device: torch.device) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    vae = VAE().to(device).eval()
    images = torch.bernoulli(torch.full((args.num_images, 784), 0.13, device=device))
    batches = images.split(args.batch_size)

    @torch.no_grad()
    def ours():
        for x in batches:
            log_likelihood(vae, x, num_samples=args.num_samples, chunk_size=args.chunk_size)

    @torch.no_grad()
    def floor():
        for x in batches:
            bare_decoder_log_density(vae, x, args.num_samples, args.chunk_size)

    work = args.num_images * args.num_samples
    ours_s = median_seconds(ours, args.repeats, device)
    floor_s = median_seconds(floor, args.repeats, device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(),
        "images": args.num_images,
        "num_samples": args.num_samples,
        "chunk_size": args.chunk_size,
        "batch_size": args.batch_size,
        "ours_samples_per_s": work / ours_s,
        "decoder_floor_samples_per_s": work / floor_s,
        "ratio": ours_s / floor_s,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

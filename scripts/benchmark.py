"""Training speed of our Pyro VAE against a hand-written PyTorch VAE, in one process, same network and device.

(a) ours: the training loop's own step function (``Trace_ELBO`` loss module, backward, Adam,
per-step statistics kept on the device); (b) the floor: a hand-written step (BCE with logits +
analytic KL, backward, Adam). Both get the same MLP, batch and device; each timing is the median
of repeats after warm-up. Reports samples per second and the ratio a / b per batch size, a full
epoch over the training images end to end (shuffling and dynamic binarization included), and the
importance-sampled log p(x) against the bare decoder. ``--markdown`` writes the table.

    python scripts/benchmark.py --data-dir ../shared/data --markdown docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from pathlib import Path

import pyro
import torch

from pyro_vae.data.batches import EpochBatches

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the reference loops live outside the package
from benchmarking import (bare_decoder_log_density, interleaved_median_seconds, machine_description,
                                   plain_vae_loss)
from pyro_vae.runs.config import TrainConfig
from pyro_vae.data.datasets import DatasetUnavailable, load_dataset
from pyro_vae.inference.evaluate import log_likelihood
from pyro_vae.training.fast_path import compile_networks, make_adam, networks_of
from pyro_vae.models import VAE
from pyro_vae.inference.objectives import NegativeELBO, make_objective
from pyro_vae.training.trainer import train_steps


class RepeatedBatch:
    """``steps`` copies of one batch, shaped like :class:`~pyro_vae.batches.EpochBatches` for the training loop."""

    def __init__(self, x: torch.Tensor, steps: int) -> None:
        self.x, self.steps = x, steps

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int):
        return ((self.x, None) for _ in range(self.steps))


def ours(vae: VAE, batches, epoch: int = 1, fast: bool = False) -> None:
    """One pass of the training loop's step function over ``batches``; statistics read once at the end.
    ``fast``: as ``pyro-vae train --fast`` (fused Adam, validation on the first step only)."""
    loss_module = NegativeELBO(vae, make_objective("elbo"))
    optimizer = make_adam(vae.parameters(), 1e-3, fused=fast)
    totals, _ = train_steps(epoch, 0, loss_module, optimizer, batches, TrainConfig(fast=fast), progress=False)
    totals.tolist()


def pyro_forward(loss_module: NegativeELBO, x: torch.Tensor) -> torch.Tensor:
    """Our loss per image without Pyro's validation, as ``--fast`` runs most steps."""
    with pyro.validation_enabled(False):
        return loss_module(x) / x.shape[0]


def plain(vae: VAE, batches, epoch: int = 1, fused: bool = False) -> None:
    """The same pass with the hand-written loss."""
    optimizer = make_adam(vae.parameters(), 1e-3, fused)
    total = torch.zeros((), device=next(vae.parameters()).device)
    for x, _ in batches.epoch(epoch):
        loss = plain_vae_loss(vae, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    total.item()


def row_of(label: str, work: int, ours_s: float, plain_s: float) -> dict:
    row = {"what": label, "ours_per_s": work / ours_s, "plain_per_s": work / plain_s, "ratio": ours_s / plain_s,
           "ours_s": ours_s, "plain_s": plain_s}
    logging.info(json.dumps(row))
    return row


def compiled_copies(vae: VAE) -> tuple[VAE, VAE]:
    """Two copies of ``vae`` with compiled networks: one as ``--compile`` makes it (after a trial step),
    one for the hand-written step."""
    ours_copy, plain_copy = copy.deepcopy(vae), copy.deepcopy(vae)
    x = torch.bernoulli(torch.full((8, vae.x_dim), 0.13, device=next(vae.parameters()).device))
    if not compile_networks(NegativeELBO(ours_copy, make_objective("elbo")), (x,)):
        raise SystemExit("--compile: torch.compile does not work here (see the warning above)")
    for network in networks_of(plain_copy):
        network.compile()
    return ours_copy, plain_copy


def step_rows(vae: VAE, batch_size: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Training steps on one repeated batch: ours (default, --fast, --fast --compile) against the
    hand-written step (eager, with fused Adam, compiled with fused Adam), all timed interleaved."""
    batch = RepeatedBatch(torch.bernoulli(torch.full((batch_size, 784), 0.13, device=device)), args.steps)
    variants = {"ours": lambda: ours(vae, batch), "ours_fast": lambda: ours(vae, batch, fast=True),
                "plain": lambda: plain(vae, batch), "plain_fused": lambda: plain(vae, batch, fused=True)}
    if args.compile:
        ours_compiled, plain_compiled = compiled_copies(vae)
        variants["ours_fast_compiled"] = lambda: ours(ours_compiled, batch, fast=True)
        variants["plain_compiled_fused"] = lambda: plain(plain_compiled, batch, fused=True)
    x = batch.x
    loss_module = NegativeELBO(vae, make_objective("elbo"))
    variants.update({  # where the time goes: Pyro's work in the forward pass and in the backward pass
        "ours_forward": lambda: [pyro_forward(loss_module, x) for _ in range(args.steps)],
        "plain_forward": lambda: [plain_vae_loss(vae, x) for _ in range(args.steps)],
        "ours_forward_backward": lambda: [pyro_forward(loss_module, x).backward() for _ in range(args.steps)],
        "plain_forward_backward": lambda: [plain_vae_loss(vae, x).backward() for _ in range(args.steps)]})
    seconds = interleaved_median_seconds(variants, args.repeats, device)
    work = batch_size * args.steps
    rows = [row_of(f"training step, batch {batch_size} (images/s)", work, seconds["ours"], seconds["plain"]),
            row_of(f"training step, batch {batch_size}, --fast (images/s)", work, seconds["ours_fast"],
                   seconds["plain"]),
            row_of(f"training step, batch {batch_size}, --fast vs hand-written with fused Adam (images/s)", work,
                   seconds["ours_fast"], seconds["plain_fused"])]
    rows += [row_of(f"forward pass only, batch {batch_size}, validation off (images/s)", work,
                    seconds["ours_forward"], seconds["plain_forward"]),
             row_of(f"forward + backward, batch {batch_size}, validation off (images/s)", work,
                    seconds["ours_forward_backward"], seconds["plain_forward_backward"])]
    if args.compile:
        rows.append(row_of(f"training step, batch {batch_size}, --fast --compile vs hand-written compiled, fused Adam "
                           "(images/s)", work, seconds["ours_fast_compiled"], seconds["plain_compiled_fused"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="a torchvision root holding MNIST, for the epoch timing")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--steps", type=int, default=50, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epoch-repeats", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=200, help="images for the log p(x) timing")
    parser.add_argument("--num-samples", type=int, default=1000, help="K for the log p(x) timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true",
                        help="also time --fast --compile against a compiled hand-written step (compiling takes a minute)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    torch.manual_seed(0)
    vae = VAE().to(device)
    rows = []

    for batch_size in args.batch_sizes:
        rows += step_rows(vae, batch_size, args, device)

    try:
        dataset = load_dataset("mnist", args.data_dir, download=False, device=device)
    except DatasetUnavailable:
        logging.info("MNIST not in %s: timing the epoch on the bundled mnist-sample", args.data_dir)
        dataset = load_dataset("mnist-sample", device=device)
    epoch_batches = EpochBatches(dataset.train_images, None, 128, "dynamic", seed=0)
    seconds = interleaved_median_seconds({"ours": lambda: ours(vae, epoch_batches),
                                          "ours_fast": lambda: ours(vae, epoch_batches, fast=True),
                                          "plain": lambda: plain(vae, epoch_batches)}, args.epoch_repeats, device)
    label = f"epoch of {dataset.name} train, {len(dataset.train_images)} images, batch 128"
    rows += [row_of(f"{label} (images/s)", len(dataset.train_images), seconds["ours"], seconds["plain"]),
             row_of(f"{label}, --fast (images/s)", len(dataset.train_images), seconds["ours_fast"], seconds["plain"])]

    images = torch.bernoulli(torch.full((args.num_images, 784), 0.13, device=device))
    with torch.no_grad():
        seconds = interleaved_median_seconds({
            "ours": lambda: [log_likelihood(vae, x, num_samples=args.num_samples) for x in images.split(100)],
            "bare": lambda: [bare_decoder_log_density(vae, x, args.num_samples, 500) for x in images.split(100)]},
            args.repeats, device)
    rows.append(row_of(f"log p(x), K = {args.num_samples}, vs bare decoder (samples/s)",
                       args.num_images * args.num_samples, seconds["ours"], seconds["bare"]))

    table = [f"Machine: {machine_description(device)}; torch {torch.__version__}. Command: "
             f"`python scripts/benchmark.py --data-dir {args.data_dir}{' --compile' if args.compile else ''}` "
             f"(medians of {args.repeats} interleaved repeats, "
             f"{args.epoch_repeats} for the epoch).", "",
             "| measurement | ours | hand-written PyTorch | ratio ours / hand-written |", "| --- | --- | --- | --- |"]
    table += [f"| {row['what']} | {row['ours_per_s']:,.0f} | {row['plain_per_s']:,.0f} | {row['ratio']:.2f} |"
              for row in rows]
    print("\n".join(table))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("# Benchmarks\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()

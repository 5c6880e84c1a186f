"""Training and evaluation speed of our Pyro VAE against hand-written PyTorch, in one process, same networks.

Every row times ours and a hand-written reference interleaved round by round (a busy machine slows
both alike) and reports the median time per round and their ratio:

- fixed cost per step: a tiny network (784-16-2, batch 16) where arithmetic is negligible, so the
  difference in milliseconds per step is what our loop and Pyro add, for each of our paths:
  the default (the step replayed from its recorded graph, Pyro validating each epoch's first
  step), ``--no-capture`` (Pyro runs the model and guide every step) and
  ``--validate-every-step --no-capture`` (as before this benchmark existed);
- training steps of the 784-400-50 VAE on one repeated batch, per batch size;
- a full epoch over the training images end to end: ours with its own batching (shuffling,
  dynamic binarization) against a hand-written loop with its own data pipeline;
- importance-sampled log p(x) (K = 1000) against a hand-written loop that does the same
  arithmetic: encoder, reparameterized draws, decoder, Bernoulli and two Normal log-densities, logsumexp.

    python scripts/benchmark.py --data-dir ../shared/data --markdown docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the reference loops live outside the package
from benchmarking import (hand_written_epoch, hand_written_log_likelihood, hand_written_training,  # noqa: E402
                          interleaved_median_seconds, machine_description)

from pyro_vae.data.batches import EpochBatches  # noqa: E402
from pyro_vae.data.datasets import DatasetUnavailable, load_dataset  # noqa: E402
from pyro_vae.inference.evaluate import log_likelihood  # noqa: E402
from pyro_vae.inference.objectives import NegativeELBO, make_objective  # noqa: E402
from pyro_vae.models import VAE  # noqa: E402
from pyro_vae.runs.config import TrainConfig  # noqa: E402
from pyro_vae.training.capture import CapturedStep, EagerStep  # noqa: E402
from pyro_vae.training.fast_path import make_adam  # noqa: E402
from pyro_vae.training.trainer import train_steps  # noqa: E402

# Our training paths: (capture, fast, compile) as the TrainConfig fields; the first is the default.
PATHS = {"default": (True, True, False), "--no-capture": (False, True, False),
         "--validate-every-step --no-capture": (False, False, False)}
COMPILED_PATH = {"--compile": (True, True, True)}


class RepeatedBatch:
    """``steps`` copies of one batch, shaped like :class:`~pyro_vae.data.batches.EpochBatches`."""

    def __init__(self, x: torch.Tensor, steps: int) -> None:
        self.x, self.steps = x, steps

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int):
        return ((self.x, None) for _ in range(self.steps))


class OurLoop:
    """The training loop's own steps on ``vae`` along one path; graphs are recorded on the first call
    (a warm-up round) and kept, as in a run."""

    def __init__(self, vae: VAE, capture: bool, fast: bool, compile: bool) -> None:
        self.loss_module = NegativeELBO(vae, make_objective("elbo"))
        self.optimizer = make_adam(vae.parameters(), 1e-3, fused=fast)
        self.step = CapturedStep(self.loss_module, compile) if capture else EagerStep(self.loss_module)
        self.settings = TrainConfig(fast=fast, capture=capture, compile=compile)

    def __call__(self, batches, epoch: int = 1) -> None:
        totals, _ = train_steps(epoch, 0, self.loss_module, self.optimizer, batches, self.settings, False, self.step)
        totals.tolist()


def row_of(label: str, unit: str, work: float, ours_s: float, reference_s: float) -> dict:
    row = {"what": label, "unit": unit, "ours_per_s": work / ours_s, "reference_per_s": work / reference_s,
           "ratio": ours_s / reference_s, "ours_s": ours_s, "reference_s": reference_s}
    logging.info(json.dumps(row))
    return row


def step_rows(vae: VAE, batch_size: int, steps: int, repeats: int, device: torch.device, label: str,
              paths: dict[str, tuple[bool, bool, bool]]) -> list[dict]:
    """Every path of ours and the hand-written step on one repeated batch, interleaved."""
    batch = RepeatedBatch(torch.bernoulli(torch.full((batch_size, vae.x_dim), 0.13, device=device)), steps)
    variants = {path: (lambda loop=OurLoop(vae, *flags): loop(batch)) for path, flags in paths.items()}
    variants["hand-written"] = hand_written_training(vae, lambda: (x for x, _ in batch.epoch(1)))
    seconds = interleaved_median_seconds(variants, repeats, device)
    rows = []
    for path in paths:
        row = row_of(f"{label}, batch {batch_size}, {path}", "images/s", batch_size * steps, seconds[path],
                     seconds["hand-written"])
        row["extra_ms_per_step"] = 1e3 * (seconds[path] - seconds["hand-written"]) / steps
        rows.append(row)
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
                        help="also time --compile (the recorded step compiled by torch.compile; a minute or more)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    args = parser.parse_args()
    paths = {**PATHS, **(COMPILED_PATH if args.compile else {})}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pyro_vae").setLevel(logging.WARNING)  # one line per recorded graph would drown the rows
    device = torch.device(args.device)
    torch.manual_seed(0)

    rows = step_rows(VAE(hidden_dim=16, z_dim=2).to(device), 16, 4 * args.steps, args.repeats, device,
                     "fixed cost: tiny network 784-16-2", paths)
    vae = VAE().to(device)
    for batch_size in args.batch_sizes:
        rows += step_rows(vae, batch_size, args.steps, args.repeats, device, "training step 784-400-50", paths)

    try:
        dataset = load_dataset("mnist", args.data_dir, download=False, device=device)
    except DatasetUnavailable:
        logging.info("MNIST not in %s: timing the epoch on the bundled mnist-sample", args.data_dir)
        dataset = load_dataset("mnist-sample", device=device)
    images = dataset.train_images
    epoch_batches = EpochBatches(images, None, 128, "dynamic", seed=0)
    loops = {path: OurLoop(vae, *flags) for path, flags in paths.items() if path != "--validate-every-step --no-capture"}
    epochs = iter(range(1, 1000))
    variants = {path: (lambda loop=loop: loop(epoch_batches, next(epochs))) for path, loop in loops.items()}
    variants["hand-written"] = hand_written_epoch(vae, images, 128)
    seconds = interleaved_median_seconds(variants, args.epoch_repeats, device)
    label = f"epoch of {dataset.name} train ({len(images)} images, batch 128, dynamic binarization)"
    rows += [row_of(f"{label}, {path}", "images/s", len(images), seconds[path], seconds["hand-written"])
             for path in loops]

    x = torch.bernoulli(torch.full((args.num_images, vae.x_dim), 0.13, device=device))
    with torch.no_grad():
        seconds = interleaved_median_seconds({
            "ours": lambda: [log_likelihood(vae, batch, num_samples=args.num_samples) for batch in x.split(100)],
            "hand-written": lambda: [hand_written_log_likelihood(vae, batch, args.num_samples, 500)
                                     for batch in x.split(100)]}, args.repeats, device)
    rows.append(row_of(f"log p(x) by importance sampling, K = {args.num_samples}, chunks of 500", "samples/s",
                       args.num_images * args.num_samples, seconds["ours"], seconds["hand-written"]))

    table = [f"Machine: {machine_description(device)}; torch {torch.__version__}. Command: "
             f"`python scripts/benchmark.py --data-dir {args.data_dir}{' --compile' if args.compile else ''}` "
             f"(medians of {args.repeats} interleaved repeats, {args.epoch_repeats} for the epoch).", "",
             "| measurement | ours | hand-written PyTorch | ratio ours / hand-written | ours - hand-written, ms per step |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        extra = f"{row['extra_ms_per_step']:.3f}" if "extra_ms_per_step" in row else ""
        table.append(f"| {row['what']} ({row['unit']}) | {row['ours_per_s']:,.0f} | {row['reference_per_s']:,.0f} | "
                     f"{row['ratio']:.2f} | {extra} |")
    print("\n".join(table))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("# Benchmarks\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()

"""Training speed of the semi-supervised loss: our recorded step against Pyro's TraceEnum_ELBO, in one process.

M2's unlabelled term sums the class out. Pyro's ``TraceEnum_ELBO`` does that but reads a tensor in
Python every step, so a step using it runs Pyro eagerly; ``enumerated_negative_elbo`` computes the
same value and gradients without that read, so the step is recorded once and replayed. Every row
times, interleaved round by round, training steps on one repeated pair of batches (unlabelled,
labelled) along three paths and reports steps per second and the ratio to the old path:

- default: the step replayed from its recorded graph (``enumerated_negative_elbo``);
- ``--no-capture``: the same loss, Pyro run every step;
- ``TraceEnum_ELBO``: the unlabelled term by Pyro's enumeration, eager (the path before 2026-12-02).

    python scripts/benchmark_semisupervised.py --m1-run RUNS/m1 --markdown docs/benchmarks-semisupervised.md
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # timing helpers live outside the package
from benchmarking import interleaved_median_seconds, machine_description  # noqa: E402

from pyro_vae.models import SSVAE  # noqa: E402
from pyro_vae.models.m1m2 import M1M2  # noqa: E402
from pyro_vae.models.semisupervised import SemiSupervisedLoss  # noqa: E402
from pyro_vae.runs.config import TrainConfig  # noqa: E402
from pyro_vae.training.capture import CapturedStep, EagerStep  # noqa: E402
from pyro_vae.training.fast_path import make_adam  # noqa: E402
from pyro_vae.training.trainer import train_steps  # noqa: E402

REFERENCE = "TraceEnum_ELBO, eager"


class TraceEnumLoss(SemiSupervisedLoss):
    """The semi-supervised loss with the unlabelled term summed out by Pyro's TraceEnum_ELBO."""

    def __init__(self, model: torch.nn.Module, aux_weight: float) -> None:
        super().__init__(model, aux_weight)
        self.trace_enum, self.enumerated_guide = TraceEnum_ELBO(max_plate_nesting=1), config_enumerate(model.guide)

    def unsupervised_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace_enum.differentiable_loss(self.model.model, self.enumerated_guide, x)


class RepeatedPairs:
    """``steps`` copies of one (unlabelled, labelled, labels) step, shaped like SemiSupervisedBatches."""

    def __init__(self, batch: tuple, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int):
        return (self.batch for _ in range(self.steps))


def training_loop(loss_module: SemiSupervisedLoss, capture: bool, batches: RepeatedPairs):
    """A function running the training loop's steps over ``batches`` along one path."""
    optimizer = make_adam(loss_module.parameters(), 3e-4, fused=True)
    step = CapturedStep(loss_module) if capture else EagerStep(loss_module)
    settings = TrainConfig(capture=capture)

    def run() -> None:
        totals, _ = train_steps(1, 0, loss_module, optimizer, batches, settings, False, step)
        totals.tolist()

    return run


def rows_for(label: str, make_model, batch_sizes: tuple[int, int], steps: int, repeats: int,
             device: torch.device) -> list[str]:
    """Markdown rows: steps per second of each path on ``make_model()``'s networks, and the ratio to the old path."""
    unlabelled, labelled = batch_sizes
    generator = torch.Generator().manual_seed(0)
    batch = (torch.rand(unlabelled, 784, generator=generator).bernoulli(generator=generator).to(device),
             torch.rand(labelled, 784, generator=generator).bernoulli(generator=generator).to(device),
             torch.randint(0, 10, (labelled,), generator=generator).to(device))
    batches = RepeatedPairs(batch, steps)
    loops = {"default (recorded step)": training_loop(SemiSupervisedLoss(make_model(), 50.0), True, batches),
             "--no-capture": training_loop(SemiSupervisedLoss(make_model(), 50.0), False, batches),
             REFERENCE: training_loop(TraceEnumLoss(make_model(), 50.0), False, batches)}
    seconds = interleaved_median_seconds(loops, repeats, device)
    rows = []
    for path, elapsed in seconds.items():
        row = (f"| {label}, {unlabelled} unlabelled + {labelled} labelled, {path} | {steps / elapsed:,.1f} | "
               f"{seconds[REFERENCE] / elapsed:.2f} |")
        logging.info(row)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m1-run", type=Path, default=None, help="a VAE run directory: also time M1+M2 on it")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pyro_vae").setLevel(logging.WARNING)
    device = torch.device(args.device)
    torch.manual_seed(0)

    rows = rows_for("M2 784-500-50", lambda: SSVAE(hidden_dim=500, z_dim=50).to(device), (200, 100), args.steps,
                    args.repeats, device)
    if args.m1_run is not None:
        rows += rows_for("M1+M2 (hidden 500, z2 10)", lambda: M1M2(str(args.m1_run), z2_dim=10).to(device),
                         (100, 100), args.steps, args.repeats, device)
    command = "python scripts/benchmark_semisupervised.py" + (" --m1-run M1_RUN" if args.m1_run else "")
    table = [f"Machine: {machine_description(device)}; torch {torch.__version__}. Command: `{command}` "
             f"(medians of {args.repeats} interleaved repeats of {args.steps} steps).", "",
             f"| training steps | steps / s | speed-up over {REFERENCE} |", "| --- | --- | --- |", *rows]
    print("\n".join(table))
    if args.markdown:
        args.markdown.write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()

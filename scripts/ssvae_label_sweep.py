"""Semi-supervised M2 (or M1+M2) test error against the number of labels, over several label draws (seeds).

For each number of labels N and seed, trains ``--model ssvae`` (M2 on pixels) or ``--model m1m2``
(M2 on the features of the VAE run ``--m1-run``) with a class-balanced labelled
subset of N training images (drawn with that seed), selects the epoch on validation accuracy,
and reports the test error's mean and 95% confidence interval (Student t over seeds), the best and
the trained epochs and the seconds per epoch next to the published figures. Resumable run by run:
a finished run is read back, an interrupted one resumed, a missing one trained; ``--jobs`` runs train side
by side, each in its own process with its share of the CPU threads (on a GPU, they share it). Figures: test error
against labels, validation error by epoch of every run, and class-conditional
samples and analogies (a test image's style with every class) of one run.

    python scripts/ssvae_label_sweep.py --dataset mnist --data-dir ../shared/data --no-download \
        --labels 100 600 1000 3000 --seeds 0 1 2 3 4 --epochs 50 --jobs 2 --out runs/ssvae-sweep
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae import DataConfig, ModelConfig, RunConfig, TrainConfig, fit_config, load_dataset, load_run
from pyro_vae.data.batches import evaluation_split
from pyro_vae.models.semisupervised import LABELLED_WEIGHTINGS
from pyro_vae.runs.layout import METRICS_FILE, SUMMARY_FILE
from pyro_vae.viz.plots import accuracy_vs_labels, analogies_figure, class_conditional_grid, validation_error_curves
from pyro_vae.viz.run_figures import first_of_each_class

# Published MNIST test error (%) by number of labels, per model.
PUBLISHED = {
    "ssvae": {"Kingma et al. (2014), M2": {100: 11.97, 600: 4.94, 1000: 3.60, 3000: 3.92},
              "pyro-ppl SS-VAE tutorial": {100: 6.8, 600: 5.6, 1000: 5.1, 3000: 4.2}},
    "m1m2": {"Kingma et al. (2014), M1+M2": {100: 3.33, 600: 2.59, 1000: 2.40, 3000: 2.18}},
}
MODEL_NAMES = {"ssvae": "M2", "m1m2": "M1+M2"}
# Settings of the measured runs (docs/semi-supervised.md) where the command leaves them out.
MODEL_DEFAULTS = {"ssvae": {"batch_size": 200, "lr": 4.2e-4, "hidden_dim": 500, "z_dim": 50,
                            "labelled_weighting": "batch"},
                  "m1m2": {"batch_size": 500, "lr": 1e-3, "hidden_dim": 500, "z_dim": 50,
                           "labelled_weighting": "pass"}}
# Two-sided 95% quantiles of Student's t with 1..10 degrees of freedom.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def confidence_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (nan for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    quantile = T_975.get(len(values) - 1, 1.96)
    return mean, quantile * statistics.stdev(values) / math.sqrt(len(values))


def run_config(args: argparse.Namespace, num_labels: int, seed: int, num_train: int) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset=args.dataset, data_dir=args.data_dir, valid_size=args.valid_size,
                        download=not args.no_download),
        model=ModelConfig(args.model, model_args(args, num_labels, num_train)),
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
                          adam_beta1=args.adam_beta1, weight_decay=args.weight_decay, objective=args.objective,
                          patience=args.patience, seed=seed, device=args.device),
    )


def aux_weight(args: argparse.Namespace, num_labels: int, num_train: int) -> float:
    """The classifier term's weight per labelled image: ``--aux-weight``, else Kingma et al.'s alpha = 0.1 N
    over the labelled mean, that is 0.1 N / labels per image (50 for 100 labels of MNIST's 50,000)."""
    return args.aux_weight if args.aux_weight is not None else 0.1 * num_train / num_labels


def model_args(args: argparse.Namespace, num_labels: int, num_train: int) -> dict:
    shared = {"hidden_dim": args.hidden_dim, "labels": num_labels,
              "aux_weight": aux_weight(args, num_labels, num_train),
              "labelled_weighting": args.labelled_weighting}
    if args.model == "m1m2":
        return {"m1_run": str(args.m1_run.resolve()), "z2_dim": args.z_dim, **shared}
    return {"z_dim": args.z_dim, **shared}


@dataclass
class RunResult:
    """One run of the sweep: its test error (%) at the best epoch on validation, and how it trained."""

    test_error: float
    best_epoch: int
    epochs: int
    seconds_per_epoch: float  # median over the run's epochs
    valid_errors: list[tuple[int, float]]  # (epoch, validation error %) of every epoch


def read_run(run_dir: Path) -> RunResult:
    """The result of a finished run directory, from its summary and its metrics."""
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    return RunResult(test_error=100 * (1 - summary["test"]["accuracy"]), best_epoch=summary["best_epoch"],
                     epochs=records[-1]["epoch"], seconds_per_epoch=statistics.median(r["seconds"] for r in records),
                     valid_errors=[(r["epoch"], 100 * (1 - r["valid"]["accuracy"])) for r in records])


def run_dir_of(args: argparse.Namespace, num_labels: int, seed: int) -> Path:
    return args.out / f"labels{num_labels}-seed{seed}"


def train_run(args: argparse.Namespace, num_labels: int, seed: int, num_train: int) -> None:
    """Train one run of the sweep to its end: resume it when interrupted, start it when missing."""
    run_dir = run_dir_of(args, num_labels, seed)
    interrupted = (run_dir / "checkpoints" / "last.pt").is_file()
    print(f"{run_dir.name}: {'interrupted, resumed' if interrupted else 'training'}", flush=True)
    fit_config(run_config(args, num_labels, seed, num_train), run_dir, resume=interrupted, overwrite=not interrupted,
               progress=False)


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)


def sweep(args: argparse.Namespace, num_train: int) -> dict[int, list[RunResult]]:
    """Every run of the sweep by number of labels, in seed order: finished runs are read back, the others
    trained first, ``args.jobs`` at a time, each process with an equal share of this process's CPU threads."""
    pending = []
    for n in args.labels:
        for seed in args.seeds:
            if (run_dir_of(args, n, seed) / SUMMARY_FILE).is_file():
                print(f"{run_dir_of(args, n, seed).name}: finished, reused")
            else:
                pending.append((n, seed))
    if args.jobs == 1 or len(pending) <= 1:
        for n, seed in pending:
            train_run(args, n, seed, num_train)
    else:
        threads = max(1, torch.get_num_threads() // args.jobs)
        with ProcessPoolExecutor(args.jobs, multiprocessing.get_context("spawn"), _start_worker, (threads,)) as pool:
            for training in [pool.submit(train_run, args, n, seed, num_train) for n, seed in pending]:
                training.result()  # a failed run fails the sweep, once the others have ended
    return {n: [read_run(run_dir_of(args, n, seed)) for seed in args.seeds] for n in args.labels}


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def published_for(dataset: str, model: str) -> dict[str, dict[int, float]]:
    """The published errors to set ours beside: MNIST's for the model; none for other datasets."""
    return PUBLISHED[model] if dataset == "mnist" else {}


def markdown_table(results: dict[int, list[RunResult]], args: argparse.Namespace, num_train: int) -> str:
    published = published_for(args.dataset, args.model)
    sources = list(published)
    lines = [
        f"Test error (%) of {MODEL_NAMES[args.model]} on {args.dataset}: mean and 95% confidence interval over "
        f"label draws (seeds {' '.join(map(str, args.seeds))}); {args.epochs} epochs, {args.objective} objective, "
        f"batch {args.batch_size}, lr {args.lr} (x {args.lr_decay} per epoch), Adam beta1 {args.adam_beta1}, "
        f"weight decay {args.weight_decay}, patience {args.patience}, labelled weighting {args.labelled_weighting}, "
        f"MLP hidden {args.hidden_dim}, z {args.z_dim}; epoch chosen on validation accuracy (best epoch: its range "
        f"over seeds; epochs: trained; aux weight: per labelled image).",
        "",
        _row(["labels", "runs", "test error (ours)", "best epoch", "epochs", "s / epoch", "aux weight", *sources]),
        _row(["---"] * (7 + len(sources))),
    ]
    for num_labels, runs in results.items():
        mean, half_width = confidence_interval([run.test_error for run in runs])
        interval = f"{mean:.2f} ± {half_width:.2f}" if runs[1:] else f"{mean:.2f}"
        seconds = statistics.median(run.seconds_per_epoch for run in runs)
        cells = [f"{published[source][num_labels]:.2f}" if num_labels in published[source] else "n/a"
                 for source in sources]
        lines.append(_row([str(num_labels), str(len(runs)), interval, _span([run.best_epoch for run in runs]),
                           _span([run.epochs for run in runs]), f"{seconds:.1f}",
                           f"{aux_weight(args, num_labels, num_train):g}", *cells]))
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--valid-size", type=int, help="labelled validation images carved from train, which select "
                        "each run's epoch (default: the dataset's, 10,000 for MNIST)")
    parser.add_argument("--model", choices=sorted(MODEL_NAMES), default="ssvae")
    parser.add_argument("--m1-run", type=Path, default=None, help="--model m1m2: the finished VAE run (M1)")
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=50)
    defaults = "; ".join(f"{model}: " + ", ".join(f"{name} {value}" for name, value in settings.items())
                         for model, settings in MODEL_DEFAULTS.items())
    parser.add_argument("--batch-size", type=int, help=f"default by model ({defaults})")
    parser.add_argument("--lr", type=float, help="default by model")
    parser.add_argument("--lr-decay", type=float, default=TrainConfig.lr_decay,
                        help="the learning rate of epoch e is lr * lr_decay ** (e - 1)")
    parser.add_argument("--adam-beta1", type=float, default=TrainConfig.adam_beta1)
    parser.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay,
                        help="L2 penalty on the parameters (1/N: a N(0, I) prior on the weights)")
    parser.add_argument("--objective", choices=("elbo", "meanfield"), default="elbo",
                        help="meanfield: the KL of z (M2) or z2 (M1+M2) in closed form")
    parser.add_argument("--aux-weight", type=float,
                        help="the classifier term's weight per labelled image (default: Kingma et al.'s alpha = 0.1 N, "
                             "0.1 N / labels per image, N the training images)")
    parser.add_argument("--patience", type=int, help="stop a run after this many epochs without a better "
                        "validation accuracy (default: train all --epochs)")
    parser.add_argument("--labelled-weighting", choices=LABELLED_WEIGHTINGS, help="default by model")
    parser.add_argument("--hidden-dim", type=int, help="default by model")
    parser.add_argument("--z-dim", type=int, help="z of M2, z2 of M1+M2; default by model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="runs to train at once, each in its own process")
    parser.add_argument("--out", type=Path, default=Path("runs/ssvae-sweep"))
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if (args.model == "m1m2") != (args.m1_run is not None):
        parser.error("--m1-run RUN_DIR goes with --model m1m2, and --model m1m2 needs it")
    for name, value in MODEL_DEFAULTS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    num_train = len(load_dataset(args.dataset, args.data_dir, valid_size=args.valid_size,
                                 download=not args.no_download).train_images)
    results = sweep(args, num_train)
    table = markdown_table(results, args, num_train)
    (args.out / "error_table.md").write_text(table)
    print(table)

    errors = {n: [run.test_error for run in runs] for n, runs in results.items()}
    figures = {"error_vs_labels": accuracy_vs_labels(errors, published_for(args.dataset, args.model),
                                                     MODEL_NAMES[args.model]),
               "valid_error_curves": validation_error_curves(
                   {f"{n} labels, seed {seed}": run.valid_errors
                    for n, runs in results.items() for seed, run in zip(args.seeds, runs)})}
    sampled_run = args.out / f"labels{max(args.labels)}-seed{args.seeds[0]}"
    run = load_run(sampled_run, args.device)
    images, labels = evaluation_split(run.dataset, "test", run.config.data.binarize, args.seeds[0])
    shown = first_of_each_class(labels, 10)
    figures["class_conditional_samples"] = class_conditional_grid(run.model)
    figures["analogies"] = analogies_figure(run.model, images[shown].to(run.dataset.train_images.device))
    for name, figure in figures.items():
        figure.savefig(args.out / f"{name}.png", dpi=120)
        print(f"{name}: {args.out / f'{name}.png'}" + (f" (of {sampled_run})" if name in (
            "class_conditional_samples", "analogies") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

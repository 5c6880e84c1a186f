"""Semi-supervised M2 (or M1+M2) test error against the number of labels, over several label draws (seeds).

For each number of labels N and seed, trains ``--model ssvae`` (M2 on pixels) or ``--model m1m2``
(M2 on the features of the VAE run ``--m1-run``) with a class-balanced labelled
subset of N training images (drawn with that seed), selects the epoch on validation accuracy,
and reports the test error's mean and 95% confidence interval (Student t over seeds) next to the
published figures; also draws class-conditional samples of one run.

    python scripts/ssvae_label_sweep.py --dataset mnist --data-dir ../shared/data --no-download \
        --labels 100 600 1000 3000 --seeds 0 1 2 3 4 --epochs 50 --out runs/ssvae-sweep
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from pathlib import Path

from pyro_vae import DataConfig, ModelConfig, RunConfig, TrainConfig, fit_config, load_run
from pyro_vae.models.semisupervised import LABELLED_WEIGHTINGS
from pyro_vae.viz.plots import accuracy_vs_labels, class_conditional_grid

# Published MNIST test error (%) by number of labels, per model.
PUBLISHED = {
    "ssvae": {"Kingma et al. (2014), M2": {100: 11.97, 600: 4.94, 1000: 3.60, 3000: 3.92},
              "pyro-ppl SS-VAE tutorial": {100: 6.8, 600: 5.6, 1000: 5.1, 3000: 4.2}},
    "m1m2": {"Kingma et al. (2014), M1+M2": {100: 3.33, 600: 2.59, 1000: 2.40, 3000: 2.18}},
}
MODEL_NAMES = {"ssvae": "M2", "m1m2": "M1+M2"}
# Two-sided 95% quantiles of Student's t with 1..10 degrees of freedom.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def confidence_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (nan for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    quantile = T_975.get(len(values) - 1, 1.96)
    return mean, quantile * statistics.stdev(values) / math.sqrt(len(values))


def run_config(args: argparse.Namespace, num_labels: int, seed: int) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset=args.dataset, data_dir=args.data_dir, download=not args.no_download),
        model=ModelConfig(args.model, model_args(args, num_labels)),
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                          device=args.device),
    )


def model_args(args: argparse.Namespace, num_labels: int) -> dict:
    shared = {"hidden_dim": args.hidden_dim, "labels": num_labels, "aux_weight": args.aux_weight,
              "labelled_weighting": args.labelled_weighting}
    if args.model == "m1m2":
        return {"m1_run": str(args.m1_run.resolve()), "z2_dim": args.z_dim, **shared}
    return {"z_dim": args.z_dim, **shared}


def test_error(args: argparse.Namespace, num_labels: int, seed: int) -> float:
    """Test error (%) of one run's best-on-validation checkpoint: a finished run is read, an
    interrupted one resumed, a missing one trained."""
    run_dir = args.out / f"labels{num_labels}-seed{seed}"
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        interrupted = (run_dir / "checkpoints" / "last.pt").is_file()
        fit_config(run_config(args, num_labels, seed), run_dir, resume=interrupted, overwrite=not interrupted,
            progress=False)
    return 100 * (1 - json.loads(summary_path.read_text())["test"]["accuracy"])


def published_for(dataset: str, model: str) -> dict[str, dict[int, float]]:
    """The published errors to set ours beside: MNIST's for the model; none for other datasets."""
    return PUBLISHED[model] if dataset == "mnist" else {}


def markdown_table(errors: dict[int, list[float]], args: argparse.Namespace) -> str:
    published = published_for(args.dataset, args.model)
    sources = list(published)
    lines = [
        f"Test error (%) of {MODEL_NAMES[args.model]} on {args.dataset}: mean and 95% confidence interval over label draws "
        f"(seeds {' '.join(map(str, args.seeds))}); {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, "
        f"aux weight {args.aux_weight}, labelled weighting {args.labelled_weighting}, MLP hidden {args.hidden_dim}, "
        f"z {args.z_dim}; epoch chosen on validation accuracy.",
        "",
        _row(["labels", "runs", "test error (ours)", *sources]),
        _row(["---"] * (3 + len(sources))),
    ]
    for num_labels, values in errors.items():
        mean, half_width = confidence_interval(values)
        interval = f"{mean:.2f} ± {half_width:.2f}" if values[1:] else f"{mean:.2f}"
        cells = [f"{published[source][num_labels]:.2f}" if num_labels in published[source] else "n/a"
                 for source in sources]
        lines.append(_row([str(num_labels), str(len(values)), interval, *cells]))
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--model", choices=sorted(MODEL_NAMES), default="ssvae")
    parser.add_argument("--m1-run", type=Path, default=None, help="--model m1m2: the finished VAE run (M1)")
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--aux-weight", type=float, default=50.0)
    parser.add_argument("--labelled-weighting", choices=LABELLED_WEIGHTINGS, default="batch")
    parser.add_argument("--hidden-dim", type=int, default=400)
    parser.add_argument("--z-dim", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/ssvae-sweep"))
    args = parser.parse_args()
    if (args.model == "m1m2") != (args.m1_run is not None):
        parser.error("--m1-run RUN_DIR goes with --model m1m2, and --model m1m2 needs it")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    errors = {n: [test_error(args, n, seed) for seed in args.seeds] for n in args.labels}
    table = markdown_table(errors, args)
    (args.out / "error_table.md").write_text(table)
    print(table)

    figure = accuracy_vs_labels(errors, published_for(args.dataset, args.model), MODEL_NAMES[args.model])
    figure.savefig(args.out / "error_vs_labels.png", dpi=120)
    print(f"test error against labels: {args.out / 'error_vs_labels.png'}")

    sampled_run = args.out / f"labels{max(args.labels)}-seed{args.seeds[0]}"
    try:
        figure = class_conditional_grid(load_run(sampled_run, args.device).model)
    except ValueError as error:  # M1+M2 decodes features, not images
        print(f"no class-conditional samples: {error}")
        return 0
    figure.savefig(args.out / "class_conditional_samples.png", dpi=120)
    print(f"class-conditional samples of {sampled_run}: {args.out / 'class_conditional_samples.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

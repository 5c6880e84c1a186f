"""Train and evaluate the standard one-stochastic-layer set-ups; write test NLL next to published figures.

Set-ups: VAE (Trace_ELBO, 1 particle) and IWAE (k = 50), both the 784-400-50 MLP unless told
otherwise, model selection on validation, test NLL by importance sampling with K samples.

    python scripts/reproduce_mnist_nll.py --dataset mnist --data-dir ../shared/data --epochs 100 \
        --num-samples 5000 --out runs/reproduce --table runs/reproduce/nll_table.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pyro_vae import DataConfig, ModelConfig, RunConfig, TrainConfig, fit_config
from pyro_vae.runs.run_dir import estimate_run

# Published test NLL (nats) of one-stochastic-layer models on MNIST.
PUBLISHED = [
    ("IWAE paper (Burda et al., 2016), dynamic MNIST", "86.76", "84.78"),
    ("pythae benchmark, static binarized MNIST", "89.78", "86.82"),
    ("VampPrior paper (Tomczak & Welling, 2018), standard-prior VAE, static / dynamic", "88.56 / 84.50", "n/a"),
]


def set_ups(args: argparse.Namespace) -> dict[str, RunConfig]:
    def config(objective: str, num_particles: int) -> RunConfig:
        return RunConfig(
            data=DataConfig(dataset=args.dataset, data_dir=args.data_dir, binarize=args.binarize,
                            download=not args.no_download),
            model=ModelConfig("vae", {"hidden_dim": args.hidden_dim, "z_dim": args.z_dim}),
            train=TrainConfig(objective=objective, num_particles=num_particles, epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device),
        )

    return {"VAE": config("elbo", 1), f"IWAE (k={args.iwae_k})": config("iwae", args.iwae_k)}


def markdown_table(results: dict[str, dict], args: argparse.Namespace) -> str:
    first = next(iter(results.values()))
    lines = [
        f"Test NLL in nats (lower is better): {first['dataset']}, {first['binarization']} binarization, "
        f"K = {args.num_samples} importance samples, seed {args.seed}, {args.epochs} epochs, "
        f"batch {args.batch_size}, lr {args.lr}, MLP 784-{args.hidden_dim}-{args.z_dim}.",
        "",
        "| set-up | test NLL | ± s.e. | test -ELBO | active units | best epoch | evaluation s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, summary in results.items():
        lines.append(f"| {name} (ours) | {summary['nll']:.2f} | {summary['log_likelihood_se']:.2f} | "
                     f"{-summary['elbo']:.2f} | {summary['active_units']} | {summary['epoch']} | "
                     f"{summary['seconds']:.0f} |")
    lines += ["", "| published | VAE | IWAE (k=50) |", "| --- | --- | --- |"]
    lines += [f"| {source} | {vae} | {iwae} |" for source, vae, iwae in PUBLISHED]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--binarize", default="auto")
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden-dim", type=int, default=400)
    parser.add_argument("--z-dim", type=int, default=50)
    parser.add_argument("--iwae-k", type=int, default=50)
    parser.add_argument("--num-samples", type=int, default=5000, help="K for the test NLL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", choices=("vae", "iwae"), default=None, help="run one set-up")
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    parser.add_argument("--table", type=Path, default=None, help="default: OUT/nll_table.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    results = {}
    for name, config in set_ups(args).items():
        if args.only and not name.lower().startswith(args.only):
            continue
        run_dir = args.out / name.split()[0].lower()
        fit_config(config, run_dir, overwrite=True, progress=False)
        summary, _ = estimate_run(run_dir, "test", num_samples=args.num_samples, device=args.device, progress=False)
        (run_dir / "test_estimate.json").write_text(json.dumps(summary, indent=2) + "\n")
        results[name] = summary
    table = markdown_table(results, args)
    table_path = args.table or args.out / "nll_table.md"
    table_path.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train and evaluate the one-stochastic-layer families with the ELBO and the IWAE bound; write test NLL
next to published figures, one row per run.

Families: the VAE (standard prior, diagonal Gaussian posterior), the VampPrior (K pseudo-inputs), the
IAF posterior and two stochastic layers (the IWAE paper's architecture); objectives: the ELBO (1 particle) and the IWAE bound (k particles). Model
selection on validation, test NLL by importance sampling with K samples. Resumable: a finished run
is read, an interrupted one resumed (the same command again), a missing one trained; run them in
parallel with --families / --objectives, one process each.

    python scripts/reproduce_mnist_nll.py --dataset mnist --data-dir ../shared/data --no-download \
        --epochs 2000 --patience 50 --kl-warmup-epochs 100 --batch-size 100 --lr 5e-4 \
        --num-samples 5000 --out ~/runs/nll
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pyro_vae import DataConfig, ModelConfig, RunConfig, TrainConfig, fit_config
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.layout import LAST_CHECKPOINT, SUMMARY_FILE
from pyro_vae.runs.run_dir import estimate_run

FAMILIES = {  # name: (row label, model, its fixed keyword arguments)
    "vae": ("VAE", "vae", {}),
    "vamp": ("VampPrior", "vae", {"prior": "vamp"}),
    "iaf": ("IAF posterior", "vae", {"flow": "iaf"}),
    "hvae": ("Two stochastic layers", "hvae", {}),  # the IWAE paper's 784-200-200-100-100-100-50 networks
}
OBJECTIVES = ("elbo", "iwae")
# Published test NLL (nats): (source, family, objective, dynamic MNIST, static binarization).
PUBLISHED = [
    ("IWAE paper (Burda et al., 2016), 1 stochastic layer", "vae", "elbo", "86.76", "n/a"),
    ("IWAE paper (Burda et al., 2016), 1 stochastic layer", "vae", "iwae", "84.78", "n/a"),
    ("VampPrior paper (Tomczak & Welling, 2018), standard prior", "vae", "elbo", "84.75", "88.56"),
    ("VampPrior paper (Tomczak & Welling, 2018), 1 layer", "vamp", "elbo", "n/a", "85.57"),
    ("pythae benchmark (static binarized MNIST)", "vae", "elbo", "n/a", "89.78"),
    ("pythae benchmark (static binarized MNIST)", "vae", "iwae", "n/a", "86.82"),
    ("IAF paper (Kingma et al., 2016), ResNet VAE with IAF", "iaf", "elbo", "79.10", "n/a"),
    ("IWAE paper (Burda et al., 2016), 2 stochastic layers", "hvae", "elbo", "85.33", "n/a"),
    ("IWAE paper (Burda et al., 2016), 2 stochastic layers", "hvae", "iwae", "82.90", "n/a"),
]


def run_config(args: argparse.Namespace, family: str, objective: str) -> RunConfig:
    _, model, fixed = FAMILIES[family]
    options = dict(fixed) if model == "hvae" else {"hidden_dim": args.hidden_dim, "z_dim": args.z_dim, **fixed}
    if family == "vamp":
        options["pseudo_inputs"] = args.pseudo_inputs
    if family == "iaf":
        options["flow_steps"] = args.flow_steps
    iwae = objective == "iwae"
    return RunConfig(
        data=DataConfig(dataset=args.dataset, data_dir=args.data_dir, binarize=args.binarize,
                        download=not args.no_download),
        model=ModelConfig(model, options),
        train=TrainConfig(objective=objective, num_particles=args.iwae_k if iwae else 1, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay, patience=args.patience,
                          kl_warmup_epochs=0 if iwae else args.kl_warmup_epochs, seed=args.seed, device=args.device,
                          fast=args.fast),
    )


def train_or_resume(config: RunConfig, run_dir: Path) -> None:
    """Train a missing run, resume an interrupted one, leave a finished one (its summary is written)."""
    if (run_dir / SUMMARY_FILE).is_file() and load_checkpoint(run_dir / LAST_CHECKPOINT)["epoch"] >= config.train.epochs:
        logging.info("%s: finished, reused", run_dir)
        return
    resume = (run_dir / LAST_CHECKPOINT).is_file()
    fit_config(config, run_dir, resume=resume, progress=False)


def test_estimate(run_dir: Path, args: argparse.Namespace) -> dict:
    """The run's test estimate with K samples, computed once per best checkpoint and K."""
    path = run_dir / "test_estimate.json"
    best_epoch = json.loads((run_dir / SUMMARY_FILE).read_text())["best_epoch"]
    if path.is_file():
        summary = json.loads(path.read_text())
        if summary["num_samples"] == args.num_samples and summary["epoch"] == best_epoch:
            return summary
    summary, _ = estimate_run(run_dir, "test", num_samples=args.num_samples, device=args.device, progress=False)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def markdown_table(rows: list[tuple[str, str, dict, int]], args: argparse.Namespace) -> str:
    first = rows[0][2]
    static = first["binarization"] != "dynamic"
    lines = [
        f"Test NLL in nats (lower is better): {first['dataset']}, {first['binarization']} binarization, "
        f"K = {args.num_samples} importance samples, seed {args.seed}, batch {args.batch_size}, lr {args.lr} "
        f"(decay {args.lr_decay}), KL warm-up {args.kl_warmup_epochs} epochs (ELBO runs), patience {args.patience}, "
        f"one-layer MLP 784-{args.hidden_dim}-{args.z_dim}; VampPrior K = {args.pseudo_inputs}, IAF "
        f"{args.flow_steps} steps, two layers 784-200-200-100-100-100-50 (tanh), "
        f"IWAE k = {args.iwae_k}.",
        "",
        "| family | objective | test NLL | ± s.e. | test -ELBO | active units | best epoch | epochs run | published |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for family, objective, summary, epochs_run in rows:
        published = "; ".join(f"{source}: {static_value if static else dynamic}"
                              for source, f, o, dynamic, static_value in PUBLISHED
                              if f == family and o == objective and (static_value if static else dynamic) != "n/a")
        name = FAMILIES[family][0]
        objective_name = f"IWAE (k={args.iwae_k})" if objective == "iwae" else "ELBO"
        lines.append(f"| {name} | {objective_name} | {summary['nll']:.2f} | {summary['log_likelihood_se']:.2f} | "
                     f"{-summary['elbo']:.2f} | {summary['active_units']} | {summary['epoch']} | {epochs_run} | "
                     f"{published or 'n/a'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--binarize", default="auto", help="auto (dynamic for grey MNIST) or static")
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-decay", type=float, default=1.0)
    parser.add_argument("--patience", type=int, default=None, help="early stopping on validation (default: never)")
    parser.add_argument("--kl-warmup-epochs", type=int, default=0, help="ELBO runs only")
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--hidden-dim", type=int, default=400)
    parser.add_argument("--z-dim", type=int, default=50)
    parser.add_argument("--pseudo-inputs", type=int, default=500)
    parser.add_argument("--flow-steps", type=int, default=2)
    parser.add_argument("--iwae-k", type=int, default=50)
    parser.add_argument("--num-samples", type=int, default=5000, help="K for the test NLL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    parser.add_argument("--table", type=Path, default=None, help="default: OUT/nll_table.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    rows = []
    for family in args.families:
        for objective in args.objectives:
            run_dir = args.out / f"{family}-{objective}"
            train_or_resume(run_config(args, family, objective), run_dir)
            epochs_run = load_checkpoint(run_dir / LAST_CHECKPOINT)["epoch"]
            rows.append((family, objective, test_estimate(run_dir, args), epochs_run))
    table = markdown_table(rows, args)
    table_path = args.table or args.out / "nll_table.md"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

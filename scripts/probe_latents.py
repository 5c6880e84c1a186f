"""How well each run's latent means separate the classes: the probes of ``pyro_vae.applications.probes``.

For choosing the VAE (M1) that an M1+M2 run stacks on: M1+M2 classifies no better than M1's
features allow. Prints a markdown table, a row per run: active units, 1-nearest-neighbour accuracy
with ``--labels`` class-balanced labelled training images and with all of them, and a logistic
regression's accuracy with all of them, on the validation split (binarized once, seeded).

    python scripts/probe_latents.py ~/runs/m1/vae ~/runs/m1/mlp2-600 --labels 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyro_vae.applications.probes import probe_latents
from pyro_vae.runs.run_dir import load_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories (their best checkpoints)")
    parser.add_argument("--labels", type=int, default=100, help="labelled images of the few-labels probe")
    parser.add_argument("--split", default="valid", choices=("valid", "test"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the binarization and the labelled draw")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print(f"| run | epoch | active units | 1-NN, {args.labels} labels | 1-NN, all labels | logistic, all labels |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run_dir in args.runs:
        run = load_run(run_dir, args.device)
        result = probe_latents(run.model, run.dataset, run.config.data.binarize, args.labels, args.seed, args.split)
        accuracies = (result.nearest_neighbour_few_labels, result.nearest_neighbour_all_labels,
                      result.logistic_all_labels)
        print(f"| {run_dir} | {run.checkpoint['epoch']} | {result.active_units} | "
              + " | ".join(f"{100 * accuracy:.2f} %" for accuracy in accuracies) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

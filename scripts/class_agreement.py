"""Do a label-conditioned model's samples show the class asked for? A classifier trained on the run's own
training images judges ``--per-class`` draws of p(x|y, z), z ~ p(z), for every class y.

Works for ``--model cvae`` and ``--model ssvae`` runs. Prints and writes (``--json``) the judge's
test accuracy and, per class and overall, the fraction of samples it assigns to the requested
class (chance: 1 / number of classes).

    python scripts/class_agreement.py runs/mnist-cvae --json runs/mnist-cvae/class_agreement.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyro
import torch
from torch.nn import functional as F

from pyro_vae.data.batches import EpochBatches
from pyro_vae.models import ConditionalVAE
from pyro_vae.nets import MLPClassifier
from pyro_vae.runs.run_dir import load_run


def train_judge(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int, seed: int
                ) -> MLPClassifier:
    """An MLP classifier (one hidden layer of 400) trained by Adam on grey images."""
    torch.manual_seed(seed)
    judge = MLPClassifier(images.shape[1], 400, num_classes).to(images.device)
    optimizer = torch.optim.Adam(judge.parameters(), lr=1e-3)
    batches = EpochBatches(images, labels, 128, "none", seed)
    for epoch in range(1, epochs + 1):
        for x, y in batches.epoch(epoch):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(judge(x), y).backward()
            optimizer.step()
    return judge.eval()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a cvae or ssvae run directory")
    parser.add_argument("--per-class", type=int, default=1000, help="samples drawn per class")
    parser.add_argument("--judge-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    run = load_run(args.run_dir, args.device)
    if not isinstance(run.model, ConditionalVAE):
        parser.error(f"{args.run_dir} holds a {run.config.model.model} run; class agreement needs --model cvae or ssvae")
    model, data = run.model, run.dataset
    with torch.enable_grad():
        judge = train_judge(data.train_images, data.train_labels, model.num_classes, args.judge_epochs, args.seed)
    judge_accuracy = (judge(data.test_images).argmax(-1) == data.test_labels).double().mean().item()
    pyro.set_rng_seed(args.seed)
    device = data.test_images.device
    requested = torch.arange(model.num_classes, device=device).repeat_interleave(args.per_class)
    agrees = torch.cat([judge(model.sample_images(labels)).argmax(-1) == labels
                        for labels in requested.split(1000)]).double()
    per_class = agrees.reshape(model.num_classes, args.per_class).mean(1)
    summary = {"run": str(args.run_dir), "model": run.config.model.model, "judge_test_accuracy": judge_accuracy,
               "samples_per_class": args.per_class, "agreement": agrees.mean().item(),
               "agreement_per_class": {str(c): value for c, value in enumerate(per_class.tolist())},
               "chance": 1 / model.num_classes, "seed": args.seed}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

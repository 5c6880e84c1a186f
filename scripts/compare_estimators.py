"""Every estimate of log p(x) the toolkit has, for one run, in one table: how loose is each bound?

On the same N images of a split (the run's evaluation binarization): the ELBO and the IWAE bounds
L_k for k = 1, 5, 50, 500 and K, all from one set of K importance weights (L_K is importance
sampling with K samples, what ``pyro-vae evaluate`` reports); AIS from the guide at each
``--ais-steps`` T; AIS from the prior at the largest T (unless ``--no-prior``); and BDMC on ``--bdmc-images`` datapoints
simulated from the model (a stochastic lower and upper bound of their log p(x), and the gap).
Each row gives the mean over images with its standard error and the seconds per 1000 images
(the IWAE rows share one pass over the weights).

    python scripts/compare_estimators.py ~/runs/nll/vae-elbo --num-images 100 --ais-steps 100 1000 \\
        --markdown docs/estimators.md
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import load_run
from pyro_vae.contract import labels_for_model
from pyro_vae.data.batches import evaluation_split
from pyro_vae.inference.ais import annealed_importance_sampling, bdmc
from pyro_vae.inference.evaluate import dataset_log_likelihood, mean_and_standard_error

IWAE_KS = (1, 5, 50, 500)


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def row(estimator: str, settings: str, values: torch.Tensor, seconds: float, num_images: int, **extra) -> dict:
    mean, standard_error = mean_and_standard_error(values)
    result = {"estimator": estimator, "settings": settings, "mean": mean, "se": standard_error,
              "seconds_per_1000": 1000 * seconds / num_images, **extra}
    logging.info(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory (its best checkpoint) or a checkpoint file")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-images", type=int, default=100, help="the first N images of the split")
    parser.add_argument("--num-samples", type=int, default=5000, help="K, importance samples per image")
    parser.add_argument("--ais-steps", type=int, nargs="+", default=[100, 1000], help="annealing steps T")
    parser.add_argument("--ais-chains", type=int, default=16, help="AIS chains per image")
    parser.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps per HMC move")
    parser.add_argument("--no-prior", action="store_true", help="leave out AIS from the prior")
    parser.add_argument("--bdmc-images", type=int, default=100, help="simulated images for BDMC (0: none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    run = load_run(args.run, args.device)
    pyro.set_rng_seed(run.config.train.seed)
    images, labels = evaluation_split(run.dataset, args.split, run.config.data.binarize, run.config.train.seed)
    images = images[: args.num_images]
    labels = labels_for_model(run.model, None if labels is None else labels[: args.num_images])
    n, model = len(images), run.model
    rows = []

    ks = tuple(k for k in IWAE_KS if k < args.num_samples and args.num_samples % k == 0)
    with torch.no_grad():
        weights, seconds = timed(lambda: dataset_log_likelihood(model, images, labels, num_samples=args.num_samples,
                                                                iwae_ks=ks, progress=True))
    for k in ks:
        rows.append(row("ELBO" if k == 1 else f"IWAE bound L_{k}", f"from the K = {args.num_samples} weights",
                        weights[f"iwae_{k}"], seconds, n))
    rows.append(row(f"importance sampling (L_{args.num_samples})", f"K = {args.num_samples}, proposal q(z|x)",
                    weights["log_likelihood"], seconds, n))

    prior = [] if args.no_prior else [("prior", max(args.ais_steps))]
    for init, steps in [("guide", t) for t in args.ais_steps] + prior:
        options = dict(num_steps=steps, leapfrog_steps=args.leapfrog, init=init)
        result, seconds = timed(lambda: annealed_importance_sampling(model, images, labels, num_samples=args.ais_chains,
                                                                     progress=True, **options))
        rows.append(row(f"AIS from the {init}", f"T = {steps}, {args.ais_chains} chains, {args.leapfrog} leapfrog steps",
                        result["log_likelihood"], seconds, n,
                        acceptance=result["ais_acceptance"].double().mean().item()))

    if args.bdmc_images:
        steps = max(args.ais_steps)
        result, seconds = timed(lambda: bdmc(model, args.bdmc_images, run.dataset.x_dim, num_steps=steps,
                                             num_chains=args.ais_chains, leapfrog_steps=args.leapfrog, progress=True))
        settings = f"T = {steps}, {args.ais_chains} chains, {args.bdmc_images} images simulated from the model"
        rows.append(row("BDMC lower bound (forward AIS)", settings, result.lower, seconds, args.bdmc_images))
        rows.append(row("BDMC upper bound (reverse AIS)", settings, result.upper, seconds, args.bdmc_images))
        rows.append(row("BDMC gap (upper - lower)", settings, result.gap, seconds, args.bdmc_images))

    table = [f"log p(x) of `{args.run}` (epoch {run.checkpoint['epoch']}, {run.config.data.dataset}, "
             f"{run.config.data.binarize} binarization), the first {n} {args.split} images; nats per image, "
             "mean ± standard error over images. Command: `python scripts/compare_estimators.py RUN "
             f"--num-images {args.num_images} --num-samples {args.num_samples} --ais-steps "
             f"{' '.join(map(str, args.ais_steps))} --ais-chains {args.ais_chains} --leapfrog {args.leapfrog} "
             f"--bdmc-images {args.bdmc_images}{' --no-prior' if args.no_prior else ''}`.", "",
             "| estimator | settings | log p(x) | seconds per 1000 images |", "| --- | --- | --- | --- |"]
    for r in rows:
        table.append(f"| {r['estimator']} | {r['settings']} | {r['mean']:.2f} ± {r['se']:.2f} | {r['seconds_per_1000']:,.0f} |")
    print("\n".join(table))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()

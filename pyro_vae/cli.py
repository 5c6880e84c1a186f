"""The ``pyro-vae`` command: ``train`` a model; ``evaluate``, ``sample``, ``plot``, ``score`` and ``embed`` a run."""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

from pyro_vae.runs import config as cfg
from pyro_vae.runs.checkpoint import CheckpointError
from pyro_vae.training.distributed import ReplicasOutOfSync
from pyro_vae.data.formats import DataFileError
from pyro_vae.runs.layout import CONFIG_FILE
from pyro_vae.runs.run_dir import bdmc_run, estimate_run, load_run, write_embeddings, write_per_datapoint_csv
from pyro_vae.contract import (accepts_argument, constructor_parameters, import_model_class, registered_models,
                               resolve_target)
from pyro_vae.inference.estimators import ESTIMATORS
from pyro_vae.models.semisupervised import LABELLED_WEIGHTINGS
from pyro_vae.nets import ARCHITECTURES
from pyro_vae.training.trainer import TrainingDiverged, fit_config

DEFAULTS = cfg.RunConfig()


class _OneLineErrors(argparse.ArgumentParser):
    """Bad command-line values end in one line naming the problem, not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``, with a message naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _float_above(minimum: float, inclusive: bool):
    """An argparse type: a number > ``minimum`` (or >= when ``inclusive``), with a message naming the value."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value >= minimum if inclusive else value > minimum):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum:g}, got {value}")
        return value

    return parse


_positive_float = _float_above(0.0, inclusive=False)
_non_negative_float = _float_above(0.0, inclusive=True)


# Model options: shortcuts for --model-arg NAME=VALUE, passed only when given (the class's default otherwise).
MODEL_OPTIONS = {"arch": "arch", "hidden_dim": "hidden_dim", "z_dim": "z_dim", "likelihood": "likelihood",
                 "gaussian_scale": "gaussian_scale", "prior": "prior", "pseudo_inputs": "pseudo_inputs",
                 "flow": "flow", "flow_steps": "flow_steps", "m1_run": "m1_run", "labels": "labels",
                 "aux_weight": "aux_weight",
                 "labelled_weighting": "labelled_weighting"}
# Data and training options: where each lives in the run's config.
RUN_OPTIONS = {"dataset": ("data", "dataset"), "data_dir": ("data", "data_dir"), "binarize": ("data", "binarize"),
               "valid_size": ("data", "valid_size"), "download": ("data", "download"),
               **{name: ("train", name) for name in ("objective", "num_particles", "gradient", "beta", "kl_warmup_epochs",
                                                     "batch_size", "eval_batch_size", "lr", "lr_decay", "adam_beta1",
                                                     "weight_decay", "patience", "seed", "device", "fast", "capture",
                                                     "compile")}}


def _model_arg(text: str) -> tuple[str, object]:
    """``NAME=VALUE``; VALUE read as a Python literal (3, 0.5, True, None, 'text'), else as text."""
    name, equals, value = text.partition("=")
    if not equals or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. z_dim=32), got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def _add_train_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train a model by SVI and write a run directory",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data, train = DEFAULTS.data, DEFAULTS.train
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=("auto",) + cfg.DATASETS, default=data.dataset,
                       help="auto: mnist if on disk or downloadable, else the bundled mnist-sample")
    group.add_argument("--data-dir", default=data.data_dir,
                       help="torchvision root (DIR/MNIST/raw/...) or folder with the dataset's files")
    group.add_argument("--binarize", choices=("auto",) + cfg.BINARIZATIONS, default=data.binarize,
                       help="auto: dynamic for grey data under a model of binary data, else none")
    group.add_argument("--valid-size", type=_positive_int, default=data.valid_size,
                       help="validation images carved from train (default: one sixth of train)")
    group.add_argument("--no-download", dest="download", action="store_false", help="never try to download data")
    group = parser.add_argument_group(
        "model", "a built-in name or any model/guide class by import path (module:Class); the options below pass "
                 "keyword arguments to its class, so they apply to classes that take them")
    group.add_argument("--model", default=DEFAULTS.model.model, metavar="NAME|MODULE:CLASS",
                       help=f"{', '.join(registered_models())} (vae; cvae: class-conditional p(x|y, z); ssvae: the "
                            "semi-supervised M2 of Kingma et al. 2014, needs --labels), or e.g. mypkg.models:MyVAE")
    group.add_argument("--model-arg", dest="model_args", type=_model_arg, action="append", default=[],
                       metavar="NAME=VALUE", help="a keyword argument of the model's class (repeatable)")
    group.add_argument("--arch", choices=ARCHITECTURES, default=None,
                       help="vae: network architecture (mlp2: two hidden layers each way, Kingma et al.'s M1)")
    group.add_argument("--hidden-dim", type=_positive_int, default=None, help="width of hidden layers (built-ins: 400)")
    group.add_argument("--z-dim", type=_positive_int, default=None, help="latent dimensions (built-ins: 50)")
    group.add_argument("--likelihood", choices=("bernoulli", "gaussian", "continuous-bernoulli"), default=None,
                       help="vae: p(x|z) (default bernoulli)")
    group.add_argument("--gaussian-scale", type=_positive_float, default=None,
                       help="vae: fixed pixel std of the Gaussian likelihood (default: learned)")
    group.add_argument("--prior", choices=("standard", "vamp"), default=None,
                       help="vae: p(z) = Normal(0, I) (standard) or the VampPrior of Tomczak & Welling 2018 (vamp)")
    group.add_argument("--pseudo-inputs", type=_positive_int, default=None,
                       help="vae --prior vamp: number of learned pseudo-inputs (500)")
    group.add_argument("--flow", choices=("none", "iaf"), default=None,
                       help="vae: q(z|x) a diagonal Gaussian (none) or pushed through inverse autoregressive flow steps "
                            "conditioned on the encoder (iaf, Kingma et al. 2016; the KL term becomes Monte Carlo)")
    group.add_argument("--flow-steps", type=_positive_int, default=None, help="vae --flow iaf: number of steps (2)")
    group.add_argument("--m1-run", default=None, metavar="RUN_DIR",
                       help="m1m2: the finished VAE run whose posterior gives M2 its features (M1 of Kingma et al. 2014)")
    group.add_argument("--labels", type=_positive_int, default=None,
                       help="ssvae, m1m2: labelled training images, the same number per class (seeded)")
    group.add_argument("--aux-weight", type=_non_negative_float, default=None,
                       help="ssvae: weight alpha of the classifier term alpha * log q(y|x) per labelled image (50)")
    group.add_argument("--labelled-weighting", choices=LABELLED_WEIGHTINGS, default=None,
                       help="ssvae, m1m2: pass: an epoch's labelled terms add up to one pass over the labelled "
                            "subset (Kingma et al.'s objective); batch (default): each step pairs an unlabelled batch "
                            "with a labelled one, each labelled image drawn weighing as much as an unlabelled one; "
                            "interleave: each labelled image once per epoch, in labelled batches that are steps of "
                            "their own spread among the unlabelled ones, at full weight (pyro-ppl's SS-VAE example)")
    group = parser.add_argument_group("training")
    group.add_argument("--objective", choices=cfg.OBJECTIVES, default=train.objective,
                       help="elbo: Trace_ELBO; meanfield: closed-form KL wherever it is exact (M2 and M1+M2 too); "
                            "iwae: importance-weighted bound with --num-particles k")
    group.add_argument("--num-particles", type=_positive_int, default=train.num_particles,
                       help="samples of z per image in the objective (vectorized)")
    group.add_argument("--gradient", choices=cfg.GRADIENTS, default=train.gradient,
                       help="the guide's gradient estimator: standard; dreg: doubly reparameterized (Tucker et al. "
                            "2019) for --objective iwae; stl: sticking the landing (Roeder et al. 2017) for one particle")
    group.add_argument("--beta", type=_positive_float, default=train.beta,
                       help="weight of the KL term (beta-VAE); applied by scaling the latent sites")
    group.add_argument("--kl-warmup-epochs", type=_non_negative_int, default=train.kl_warmup_epochs,
                       help="anneal the KL weight linearly from 0 to --beta over this many epochs")
    group.add_argument("--epochs", type=_positive_int, default=None,
                       help=f"training epochs (default {train.epochs}; with --resume, the new total)")
    group.add_argument("--batch-size", type=_positive_int, default=train.batch_size)
    group.add_argument("--eval-batch-size", type=_positive_int, default=train.eval_batch_size)
    group.add_argument("--lr", type=_positive_float, default=train.lr)
    group.add_argument("--lr-decay", type=_positive_float, default=train.lr_decay,
                       help="multiply the learning rate by this after every epoch (1: constant)")
    group.add_argument("--adam-beta1", type=float, default=train.adam_beta1,
                       help="Adam's beta1, the decay of its mean gradient, in [0, 1) (beta2 is 0.999)")
    group.add_argument("--weight-decay", type=float, default=train.weight_decay,
                       help="L2 penalty: this times each parameter added to its gradient (1/N: a N(0, I) prior on "
                            "the weights for the per-image loss)")
    group.add_argument("--patience", type=_positive_int, default=train.patience,
                       help="stop early after this many epochs without a better validation score (default: never)")
    group.add_argument("--fast", action="store_true", default=train.fast,
                       help="the default: the fused Adam kernel, and Pyro's validation of distributions and sites on "
                            "the first step of each epoch only")
    group.add_argument("--validate-every-step", dest="fast", action="store_false",
                       help="Pyro validates distributions and sites on every step, and Adam runs unfused")
    group.add_argument("--no-capture", dest="capture", action="store_false", default=train.capture,
                       help="run Pyro's model and guide every step instead of replaying the step recorded as a graph")
    group.add_argument("--compile", action="store_true",
                       help="compile the recorded step with torch.compile (the networks when the settings keep "
                            "the step eager, e.g. --no-capture); uncompiled, with a warning, if that fails")
    group.add_argument("--seed", type=int, default=train.seed)
    group.add_argument("--device", choices=cfg.DEVICES, default=train.device)
    group = parser.add_argument_group("run directory")
    group.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<timestamp>)")
    group.add_argument("--resume", action="store_true",
                       help="continue the run in --out from checkpoints/last.pt (its own settings; --epochs may extend it)")
    group.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--detect-anomaly", action="store_true",
                       help="run torch's autograd anomaly detection (slow; to find where NaNs arise)")
    group.add_argument("--tensorboard", action="store_true",
                       help="also log metrics and figures to RUN_DIR/tensorboard (pip install 'pyro-vae[tensorboard]')")
    group.add_argument("--plot-every", type=_non_negative_int, default=0,
                       help="also write reconstructions and samples to RUN_DIR/figures every N epochs (0: only at "
                            "the end)")
    return parser


def add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``pyro-vae evaluate`` and ``scripts/estimate_elbo.py``."""
    parser.add_argument("--split", choices=("test", "valid"), default="test")
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="is",
                        help="how log p(x) is estimated: is = importance sampling with the guide as proposal; ais = "
                             "annealed importance sampling with HMC moves, --num-samples chains per image")
    parser.add_argument("--ais-steps", type=_positive_int, default=100, help="ais: annealing steps T")
    parser.add_argument("--leapfrog", type=_positive_int, default=10, help="ais: leapfrog steps per HMC move")
    parser.add_argument("--ais-init", choices=("guide", "prior"), default="guide",
                        help="ais: anneal from q(z|x) towards p(x, z), or from p(z)")
    parser.add_argument("--num-samples", type=_positive_int, default=5000,
                        help="K, importance samples per image for log p(x) and the IWAE bounds")
    parser.add_argument("--num-particles", type=_positive_int, default=10,
                        help="samples per image for the ELBO's reconstruction term (KL is analytic)")
    parser.add_argument("--chunk-size", type=_positive_int, default=500, help="samples drawn at once (memory)")
    parser.add_argument("--batch-size", type=_positive_int, default=100, help="images scored at once")
    parser.add_argument("--device", choices=cfg.DEVICES, default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--csv", type=Path, default=None, help="write per-datapoint values here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_estimate(path: Path, args: argparse.Namespace) -> None:
    """Estimate (or, with --bdmc N, bracket log p(x) of N simulated datapoints), print the JSON summary, write the
    files asked for."""
    if getattr(args, "bdmc", None):
        summary, per_datapoint = bdmc_run(path, args.bdmc, num_steps=args.ais_steps, num_chains=args.num_samples,
                                          leapfrog_steps=args.leapfrog, init=args.ais_init, device=args.device,
                                          progress=not args.no_progress)
        _print_summary(summary, args.json)
        if args.csv is not None:
            write_per_datapoint_csv(per_datapoint, args.csv)
        return
    summary, per_datapoint = estimate_run(
        path, args.split, estimator=args.estimator, estimator_options=_estimator_options(args),
        num_samples=args.num_samples, num_particles=args.num_particles,
        chunk_size=args.chunk_size, batch_size=args.batch_size, device=args.device, progress=not args.no_progress,
    )
    _print_summary(summary, args.json)
    if args.csv is not None:
        write_per_datapoint_csv(per_datapoint, args.csv)


def _estimator_options(args: argparse.Namespace) -> dict:
    """The chosen estimator's own settings from the command line."""
    if args.estimator == "ais":
        return {"num_steps": args.ais_steps, "leapfrog_steps": args.leapfrog, "init": args.ais_init}
    return {}


def _print_summary(summary: dict, json_path: Path | None) -> None:
    """Print the summary as JSON and, given a path, write it there too."""
    text = json.dumps(summary, indent=2)
    print(text)
    if json_path is not None:
        json_path.write_text(text + "\n")


def _add_evaluate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="ELBO terms, importance-sampled log p(x), IWAE bounds of a run's best checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory (uses checkpoints/best.pt)")
    add_estimate_arguments(parser)
    parser.add_argument("--bdmc", type=_positive_int, default=None, metavar="N",
                        help="bidirectional Monte Carlo instead: simulate N datapoints from the model and bracket their "
                             "log p(x) by forward and reverse AIS (--ais-steps, --leapfrog, --ais-init; --num-samples "
                             "chains)")


def _add_sample_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample", help="draw images from a run's best checkpoint into a PNG",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory (uses checkpoints/best.pt)")
    parser.add_argument("--label", type=_non_negative_int, default=None,
                        help="cvae/ssvae: the class to draw (default: a grid with one row per class)")
    parser.add_argument("--num", type=_positive_int, default=64, help="images to draw")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws z ~ p(z)")
    parser.add_argument("--out", type=Path, default=Path("samples.png"), help="the PNG to write")
    parser.add_argument("--device", choices=cfg.DEVICES, default="auto")


def run_sample(args: argparse.Namespace) -> None:
    """Draw from the run's best model and save the figure."""
    from pyro_vae.viz.plots import samples_figure  # matplotlib costs 0.65 s of start-up; only this command needs it

    run = load_run(args.run_dir, args.device)
    if run.dataset.image_shape is None:
        raise cfg.ConfigError(f"{args.run_dir} models datapoints of shape {tuple(run.dataset.shape)}, not images; draw "
                              "samples in Python (the model's trace on placeholder data gives p(x|z), z ~ p(z))")
    try:
        figure = samples_figure(run.model, args.num, args.label, args.seed, run.dataset.x_dim, run.dataset.image_shape)
    except ValueError as error:
        raise cfg.ConfigError(str(error)) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


def _add_plot_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="write the figures that fit a run's model into RUN_DIR/figures",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory (uses checkpoints/best.pt and metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: RUN_DIR/figures)")
    parser.add_argument("--num-images", type=_int_at_least(2), default=10,
                        help="test images shown in reconstructions, interpolations, denoising")
    parser.add_argument("--latent-method", choices=("pca", "tsne"), default="pca",
                        help="projection of latents with more than 2 dimensions (tsne needs scikit-learn)")
    parser.add_argument("--device", choices=cfg.DEVICES, default="auto")


def run_plot(args: argparse.Namespace) -> None:
    from pyro_vae.viz.run_figures import write_run_figures  # matplotlib costs 0.65 s of start-up; only drawing needs it

    run = load_run(args.run_dir, args.device)
    try:
        paths = write_run_figures(run, args.run_dir, args.out, args.num_images, args.latent_method)
    except ValueError as error:
        raise cfg.ConfigError(str(error)) from None
    for path in paths:
        print(f"wrote {path}")


def _add_score_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="per-image anomaly scores (-ELBO, -log p(x)); with --dataset, the AUROC against another set",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory (uses checkpoints/best.pt)")
    parser.add_argument("--dataset", choices=cfg.DATASETS, default=None,
                        help="an out-of-distribution dataset to score against the run's own")
    parser.add_argument("--data-dir", default="data", help="where --dataset's files are")
    parser.add_argument("--no-download", dest="download", action="store_false", help="never try to download data")
    parser.add_argument("--split", choices=("test", "valid"), default="test")
    parser.add_argument("--num-samples", type=_positive_int, default=1000, help="K for the importance-sampled log p(x)")
    parser.add_argument("--num-particles", type=_positive_int, default=10, help="samples for the ELBO")
    parser.add_argument("--batch-size", type=_positive_int, default=100, help="images scored at once")
    parser.add_argument("--device", choices=cfg.DEVICES, default="auto")
    parser.add_argument("--csv", type=Path, default=None, help="write per-image scores here")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_score(args: argparse.Namespace) -> None:
    from pyro_vae.applications.scoring import score_run, write_scores_csv

    summary, scores = score_run(args.run_dir, args.dataset, data_dir=args.data_dir, download=args.download,
                                split=args.split, num_samples=args.num_samples, num_particles=args.num_particles,
                                batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    _print_summary(summary, args.json)
    if args.csv is not None:
        write_scores_csv(scores, args.csv)


def _add_embed_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed", help="export the latent means E_q[z|x] of a split as .npy or .csv",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory (uses checkpoints/best.pt)")
    parser.add_argument("--out", type=Path, required=True,
                        help="FILE.npy (labels go to FILE.labels.npy) or FILE.csv (index, label, z0, z1, ...)")
    parser.add_argument("--split", choices=("test", "valid", "train"), default="test")
    parser.add_argument("--device", choices=cfg.DEVICES, default="auto")


def run_embed(args: argparse.Namespace) -> None:
    run = load_run(args.run_dir, args.device)
    means = write_embeddings(run, args.split, args.out)
    print(f"wrote {args.out}: {means.shape[0]} {args.split} images x {means.shape[1]} latent dimensions")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="pyro-vae", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    parser.train_parser = _add_train_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_sample_parser(subparsers)
    _add_plot_parser(subparsers)
    _add_score_parser(subparsers)
    _add_embed_parser(subparsers)
    return parser


def _requested_model_args(args: argparse.Namespace) -> dict[str, object]:
    """The model's keyword arguments the command gives: --model-arg pairs and the model options."""
    given = dict(args.model_args)
    for dest, name in MODEL_OPTIONS.items():
        value = getattr(args, dest)
        if value is not None:
            if name in given and given[name] != value:
                raise cfg.ConfigError(f"--{dest.replace('_', '-')} {value} and --model-arg {name}={given[name]!r} "
                                      "contradict each other; give one")
            given[name] = value
    return given


def _check_model_args(model: str, model_args: dict[str, object]) -> None:
    """Refuse an argument the model's class does not take, naming the option that gave it."""
    cls = import_model_class(model)
    for name in model_args:
        if not accepts_argument(cls, name):
            option = f"--{name.replace('_', '-')}" if name in MODEL_OPTIONS.values() else f"--model-arg {name}"
            names, _ = constructor_parameters(cls)
            raise cfg.ConfigError(f"{option}: {cls.__name__} accepts no argument {name!r} (it accepts: "
                                  f"{', '.join(sorted(names)) or 'none'})")


def _config_from_arguments(args: argparse.Namespace, train_parser: argparse.ArgumentParser) -> cfg.RunConfig:
    model_args = _requested_model_args(args)
    _check_model_args(args.model, model_args)
    values = {"data": {}, "train": {}}
    for dest, (section, name) in RUN_OPTIONS.items():
        values[section][name] = getattr(args, dest)
    values["train"]["epochs"] = args.epochs or DEFAULTS.train.epochs
    return cfg.RunConfig(data=cfg.DataConfig(**values["data"]), model=cfg.ModelConfig(args.model, model_args),
                         train=cfg.TrainConfig(**values["train"]))


def _resumed_config(args: argparse.Namespace, train_parser: argparse.ArgumentParser) -> cfg.RunConfig:
    """The run's own config; options given on the command line must equal its settings (the same
    command with --resume appended resumes; a different setting is refused)."""
    config = cfg.RunConfig.load(args.out / CONFIG_FILE)
    differences = []
    for dest, (section, name) in RUN_OPTIONS.items():
        value = getattr(args, dest)
        if value != train_parser.get_default(dest) and not _same_as_run(dest, value, getattr(getattr(config, section), name)):
            differences.append(f"--{dest.replace('_', '-')} {value} (the run has {getattr(getattr(config, section), name)!r})")
    if args.model != DEFAULTS.model.model and resolve_target(args.model) != resolve_target(config.model.model):
        differences.append(f"--model {args.model} (the run has {config.model.model})")
    saved_args = config.model.args or {}
    for name, value in _requested_model_args(args).items():
        if saved_args.get(name, value) != value or name not in saved_args:
            differences.append(f"model argument {name}={value!r} (the run has {saved_args.get(name, 'no such argument')!r})")
    if differences:
        train_parser.error(f"--resume continues the run with the settings in its config.json, but "
                           f"{'; '.join(differences)}; drop them or start a new run with another --out")
    if args.epochs is not None:
        config.train.epochs = args.epochs
    return config


def _same_as_run(dest: str, requested: object, saved: object) -> bool:
    if dest == "data_dir":
        return Path(str(requested)).resolve() == Path(str(saved)).resolve()
    return requested == saved


def _run_train(args: argparse.Namespace, train_parser: argparse.ArgumentParser) -> None:
    if args.resume and args.overwrite:
        train_parser.error("--resume and --overwrite contradict each other; choose one")
    if args.resume and args.out is None:
        train_parser.error("--resume needs --out RUN_DIR, the run to continue")
    config = _resumed_config(args, train_parser) if args.resume else _config_from_arguments(args, train_parser)
    if args.out is None and _launched_ranks() > 1:
        train_parser.error("under torchrun pass --out RUN_DIR, so that every process names the same run directory")
    run_dir = args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if _rank() == 0:
        print(f"run directory: {run_dir}")
    fit_config(config, run_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
               detect_anomaly=args.detect_anomaly, plot_every=args.plot_every, tensorboard=args.tensorboard)


def _launched_ranks() -> int:
    """How many processes torchrun started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def main(argv: list[str] | None = None) -> int:
    if "" not in sys.path and os.getcwd() not in sys.path:  # models by import path from the working directory,
        sys.path.insert(0, os.getcwd())                      # as `python -m` and uvicorn find them
    parser = build_parser()
    args = parser.parse_args(argv)
    # Under torchrun rank 0 reports; the others only warn.
    logging.basicConfig(level=logging.INFO if _rank() == 0 else logging.WARNING, format="%(message)s",
                        stream=sys.stdout)
    try:
        if args.command == "train":
            _run_train(args, parser.train_parser)
        elif args.command == "evaluate":
            run_estimate(args.run_dir, args)
        else:
            {"sample": run_sample, "plot": run_plot, "score": run_score, "embed": run_embed}[args.command](args)
    except (cfg.ConfigError, DataFileError, CheckpointError) as error:
        print(f"pyro-vae {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (TrainingDiverged, ReplicasOutOfSync) as error:
        print(f"pyro-vae {args.command}: error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        hint = "; the last finished epoch is in checkpoints/last.pt (continue with --resume)"
        print(f"interrupted{hint if args.command == 'train' else ''}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run settings as dataclasses: what the CLI resolves, what ``config.json`` stores, what is validated."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("mnist", "fashion-mnist", "binarized-mnist", "mnist-sample")
BINARIZATIONS = ("dynamic", "static", "threshold", "none")
OBJECTIVES = ("elbo", "meanfield", "iwae")
GRADIENTS = ("standard", "dreg", "stl")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting and the fix."""


@dataclass
class DataConfig:
    """Which images to train on and how to present them to the likelihood.

    ``dataset="auto"`` means MNIST when it is on disk or downloadable, else the bundled
    ``mnist-sample``; ``binarize="auto"`` means ``dynamic`` for grey-scale data under the Bernoulli
    likelihood and ``none`` otherwise. Both are replaced by what was actually used.
    """

    dataset: str = "auto"
    data_dir: str = "data"
    binarize: str = "auto"
    valid_size: int | None = None
    download: bool = True
    shape: list[int] | None = None  # one datapoint's shape, recorded by training (e.g. [1, 28, 28], [2])
    valid_seed: int | None = None  # the seed validation was carved with, recorded by training (None: the data's own split)


@dataclass
class ModelConfig:
    """The model: a registered name (``vae``, ``cvae``, ``ssvae``, entry points) or an import path
    ``module:Class``, and the keyword arguments it is built with; enough to rebuild it from a checkpoint.

    ``args`` is None for a model that was handed to :func:`pyro_vae.fit` already built by other means
    than :func:`pyro_vae.build_model`: then the run cannot rebuild it by itself.
    """

    model: str = "vae"
    args: dict[str, Any] | None = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation settings of the SVI loop."""

    objective: str = "elbo"
    num_particles: int = 1
    gradient: str = "standard"  # the guide's gradient estimator: standard, dreg (IWAE) or stl (one particle)
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    epochs: int = 100
    batch_size: int = 128
    eval_batch_size: int = 1000
    lr: float = 1e-3
    lr_decay: float = 1.0  # the learning rate of epoch e is lr * lr_decay ** (e - 1)
    adam_beta1: float = 0.9  # Adam's decay of its running mean of gradients (beta2 stays 0.999)
    weight_decay: float = 0.0  # L2 penalty on the parameters (Adam's weight_decay); 1/N: a N(0, I) prior on the weights
    patience: int | None = None  # stop after this many epochs without a better validation score
    seed: int = 0
    device: str = "auto"
    fast: bool = True  # fused Adam; Pyro's validation on each epoch's first step only (see pyro_vae.training.fast_path)
    capture: bool = True  # replay the step from a recorded graph where it can be (see pyro_vae.training.capture)
    compile: bool = False  # torch.compile the recorded step (or the networks when not captured); see fast_path


# How fast a run trains, not what it computes: a run resumes under other values of these.
SPEED_SETTINGS = ("train.fast", "train.capture", "train.compile")


@dataclass
class DistributedConfig:
    """How training was spread over processes: recorded by training (torchrun decides), not chosen.

    ``--batch-size`` is the global batch, split evenly over the ranks, and gradients are averaged
    over it, so the effective batch size and learning rate are those of one process.
    """

    world_size: int = 1
    backend: str | None = None
    batch_size_per_rank: int | None = None
    effective_batch_size: int | None = None
    effective_lr: float | None = None


@dataclass
class RunConfig:
    """Everything needed to rebuild and continue a run; saved as the run's ``config.json``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        values = _upgrade_earlier_version(values)
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                    "distributed": DistributedConfig}
        unknown = set(values) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config sections {sorted(unknown)}; expected {sorted(sections)}")
        parts = {}
        for name, section in sections.items():
            given = values.get(name, {})
            names = {f.name for f in dataclasses.fields(section)}
            extra = set(given) - names
            if extra:
                raise ConfigError(f"unknown settings {sorted(extra)} in config section '{name}'")
            parts[name] = section(**given)
        return cls(**parts)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        try:
            values = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist: is this a run directory written by 'pyro-vae train'?") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON ({error}); restore it or start a new run") from None
        return cls.from_dict(values)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad setting and what would be accepted.

        Model settings are the model's own to check (its constructor and its training plan).
        """
        _choice("--dataset", self.data.dataset, DATASETS + ("auto", "custom"))
        _choice("--binarize", self.data.binarize, BINARIZATIONS + ("auto",))
        _choice("--objective", self.train.objective, OBJECTIVES)
        _choice("--gradient", self.train.gradient, GRADIENTS)
        _choice("--device", self.train.device, DEVICES)
        _at_least("--epochs", self.train.epochs, 1)
        _at_least("--batch-size", self.train.batch_size, 1)
        _at_least("--eval-batch-size", self.train.eval_batch_size, 1)
        _at_least("--num-particles", self.train.num_particles, 1)
        if not self.train.kl_warmup_epochs >= 0 or isinstance(self.train.kl_warmup_epochs, bool):
            raise ConfigError(f"--kl-warmup-epochs must be an integer >= 0, got {self.train.kl_warmup_epochs!r}")
        if not self.train.beta > 0:
            raise ConfigError(f"--beta must be positive, got {self.train.beta}")
        if self.train.objective == "iwae" and (self.train.beta != 1.0 or self.train.kl_warmup_epochs):
            raise ConfigError("--beta and --kl-warmup-epochs weight the ELBO's KL term, which the IWAE bound "
                              "does not have; use them with --objective elbo or meanfield")
        if self.train.gradient == "dreg" and self.train.objective != "iwae":
            raise ConfigError("--gradient dreg is the doubly reparameterized gradient of the IWAE bound; use it with "
                              "--objective iwae (with one particle it is --gradient stl)")
        if self.train.gradient == "stl" and (self.train.num_particles != 1 or self.train.objective == "meanfield"):
            raise ConfigError("--gradient stl is for the one-particle ELBO (--objective elbo or iwae, "
                              "--num-particles 1); with k particles use --objective iwae --gradient dreg")
        if self.data.valid_size is not None:
            _at_least("--valid-size", self.data.valid_size, 1)
        if not self.train.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.train.lr}")
        if not 0 < self.train.lr_decay <= 1:
            raise ConfigError(f"--lr-decay must be in (0, 1] (1: a constant learning rate), got {self.train.lr_decay}")
        if not 0 <= self.train.adam_beta1 < 1:
            raise ConfigError(f"--adam-beta1 must be in [0, 1), got {self.train.adam_beta1}")
        if not self.train.weight_decay >= 0:
            raise ConfigError(f"--weight-decay must be >= 0 (0: none), got {self.train.weight_decay}")
        if self.train.patience is not None:
            _at_least("--patience", self.train.patience, 1)


# Settings of runs written before models were named by import path and keyword arguments.
_EARLIER_MODEL_KEYS = ("arch", "hidden_dim", "z_dim", "likelihood", "gaussian_scale")


def _upgrade_earlier_version(values: dict[str, Any]) -> dict[str, Any]:
    """A config of an earlier version in today's form: the model's settings become its keyword
    arguments (28x28 images, the only data then), M2's labels and weights move to the model, and
    a validation split carved before its seed was recorded is recorded as carved with train's seed."""
    model = values.get("model", {})
    data, train = dict(values.get("data", {})), dict(values.get("train", {}))
    if "data" in values and "valid_seed" not in data:
        carved = data.get("dataset") not in ("custom", "binarized-mnist")  # binarized-mnist has its own split
        data["valid_seed"] = train.get("seed", 0) if carved else None
        values = {**values, "data": data}
    earlier = (any(key in model for key in _EARLIER_MODEL_KEYS) or "labels" in data
               or "aux_weight" in train or "labelled_weighting" in train)
    if not earlier:
        return values
    name = model.get("model", "vae")
    args = {"x_dim": 784, "z_dim": model.get("z_dim", 50), "hidden_dim": model.get("hidden_dim", 400)}
    if name == "vae":
        args.update(arch=model.get("arch", "mlp"), likelihood=model.get("likelihood", "bernoulli"),
                    gaussian_scale=model.get("gaussian_scale"))
    labels = data.pop("labels", None)
    # runs written before --labelled-weighting existed trained with what is now called "pass"
    semisupervised = {"labels": labels, "aux_weight": train.pop("aux_weight", 50.0),
                      "labelled_weighting": train.pop("labelled_weighting", "pass")}
    if name == "ssvae":
        args.update(semisupervised)
    data.setdefault("shape", [1, 28, 28])
    return {**values, "data": data, "train": train, "model": {"model": name, "args": args}}


def config_differences(requested: RunConfig, saved: RunConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """Settings that differ, as ``section.name: saved X, requested Y`` (``ignore`` by section or dotted name;
    :data:`SPEED_SETTINGS` always)."""
    ignore = ignore + SPEED_SETTINGS
    differences = []
    saved_values, requested_values = saved.to_dict(), requested.to_dict()
    for section, values in saved_values.items():
        for name, saved_value in values.items():
            requested_value = requested_values[section][name]
            setting = f"{section}.{name}"
            if section in ignore or setting in ignore:
                continue
            if isinstance(saved_value, dict) and isinstance(requested_value, dict):  # a model's arguments, by name
                for key in sorted(set(saved_value) | set(requested_value)):
                    saved_item, requested_item = saved_value.get(key, "unset"), requested_value.get(key, "unset")
                    if saved_item != requested_item:
                        differences.append(f"{setting}.{key}: checkpoint {saved_item!r}, requested {requested_item!r}")
            elif not _same_setting(setting, requested_value, saved_value):
                differences.append(f"{setting}: checkpoint {saved_value!r}, requested {requested_value!r}")
    return differences


def _same_setting(name: str, requested: Any, saved: Any) -> bool:
    """Equal values; data directories compare as resolved paths (earlier versions stored them relative)."""
    if name == "data.data_dir":
        return Path(requested).resolve() == Path(saved).resolve()
    return requested == saved


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} {value!r} is not one of: {', '.join(choices)}")


def _at_least(flag: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{flag} must be an integer >= {minimum}, got {value!r}")

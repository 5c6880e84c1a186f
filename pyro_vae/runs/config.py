"""Run settings as dataclasses: what the CLI resolves, what ``config.json`` stores, what is validated."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("mnist", "fashion-mnist", "binarized-mnist", "mnist-sample")
BINARIZATIONS = ("dynamic", "static", "threshold", "none")
LIKELIHOODS = ("bernoulli", "gaussian", "continuous-bernoulli")
ARCHITECTURES = ("mlp", "conv")
MODELS = ("vae", "cvae", "ssvae")
OBJECTIVES = ("elbo", "meanfield", "iwae")
LABELLED_WEIGHTINGS = ("pass", "batch")  # M2: how much the labelled terms of a step weigh (see --labelled-weighting)
DEVICES = ("auto", "cpu", "cuda")


# What runs written before a setting existed were trained with, where that differs from today's default.
_SETTINGS_OF_EARLIER_VERSIONS = {"train": {"labelled_weighting": "pass"}}


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
    labels: int | None = None  # --model ssvae: size of the class-balanced labelled subset of train


@dataclass
class ModelConfig:
    """Architecture of the model/guide pair; enough to rebuild the networks from a checkpoint."""

    model: str = "vae"
    arch: str = "mlp"
    hidden_dim: int = 400
    z_dim: int = 50
    likelihood: str = "bernoulli"
    gaussian_scale: float | None = None  # None: one learned scale shared by all pixels


@dataclass
class TrainConfig:
    """Optimisation settings of the SVI loop."""

    objective: str = "elbo"
    num_particles: int = 1
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    epochs: int = 100
    batch_size: int = 128
    eval_batch_size: int = 1000
    lr: float = 1e-3
    lr_decay: float = 1.0  # the learning rate of epoch e is lr * lr_decay ** (e - 1)
    patience: int | None = None  # stop after this many epochs without a better validation score
    seed: int = 0
    device: str = "auto"
    aux_weight: float = 50.0  # --model ssvae: weight of the classifier term log q(y|x) per labelled image
    labelled_weighting: str = "batch"  # --model ssvae: see LABELLED_WEIGHTINGS
    fast: bool = False  # fused Adam; Pyro's validation on each epoch's first step only (see pyro_vae.training.fast_path)
    compile: bool = False  # torch.compile the networks, eager when that fails (see pyro_vae.training.fast_path)


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
            parts[name] = section(**(_SETTINGS_OF_EARLIER_VERSIONS.get(name, {}) | given))
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
        """Raise :class:`ConfigError` naming the first bad setting and what would be accepted."""
        _choice("--dataset", self.data.dataset, DATASETS + ("auto",))
        _choice("--binarize", self.data.binarize, BINARIZATIONS + ("auto",))
        _choice("--model", self.model.model, MODELS)
        _choice("--arch", self.model.arch, ARCHITECTURES)
        _choice("--likelihood", self.model.likelihood, LIKELIHOODS)
        _choice("--objective", self.train.objective, OBJECTIVES)
        _choice("--device", self.train.device, DEVICES)
        _at_least("--hidden-dim", self.model.hidden_dim, 1)
        _at_least("--z-dim", self.model.z_dim, 1)
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
        if self.data.valid_size is not None:
            _at_least("--valid-size", self.data.valid_size, 1)
        if not self.train.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.train.lr}")
        if not 0 < self.train.lr_decay <= 1:
            raise ConfigError(f"--lr-decay must be in (0, 1] (1: a constant learning rate), got {self.train.lr_decay}")
        if self.train.patience is not None:
            _at_least("--patience", self.train.patience, 1)
        if self.model.gaussian_scale is not None:
            if self.model.likelihood != "gaussian":
                raise ConfigError("--gaussian-scale applies only to --likelihood gaussian")
            if not self.model.gaussian_scale > 0:
                raise ConfigError(f"--gaussian-scale must be positive, got {self.model.gaussian_scale}")
        self._validate_semisupervised()
        if self.model.model == "cvae":
            _only_supported("--model cvae", {"--arch": (self.model.arch, "mlp"),
                                             "--likelihood": (self.model.likelihood, "bernoulli")})
        if self.model.likelihood != "bernoulli" and self.data.binarize not in ("auto", "none"):
            raise ConfigError(
                f"--likelihood {self.model.likelihood} models grey-scale pixels, so --binarize "
                f"{self.data.binarize} would throw information away; use --binarize none or --likelihood bernoulli"
            )


    def _validate_semisupervised(self) -> None:
        if self.model.model != "ssvae":
            if self.data.labels is not None:
                raise ConfigError("--labels chooses the labelled subset of --model ssvae; drop it or add --model ssvae")
            return
        if self.data.labels is None:
            raise ConfigError("--model ssvae needs --labels N, the number of labelled training images (e.g. 100)")
        _at_least("--labels", self.data.labels, 1)
        if not self.train.aux_weight >= 0:
            raise ConfigError(f"--aux-weight must be >= 0, got {self.train.aux_weight}")
        _choice("--labelled-weighting", self.train.labelled_weighting, LABELLED_WEIGHTINGS)
        unsupported = {"--arch": (self.model.arch, "mlp"), "--likelihood": (self.model.likelihood, "bernoulli"),
                       "--objective": (self.train.objective, "elbo"), "--beta": (self.train.beta, 1.0),
                       "--kl-warmup-epochs": (self.train.kl_warmup_epochs, 0), "--num-particles": (self.train.num_particles, 1)}
        _only_supported("--model ssvae", unsupported, why=" (it trains with TraceEnum_ELBO, labels enumerated)")


def config_differences(requested: RunConfig, saved: RunConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """Settings that differ, as ``section.name: saved X, requested Y`` (``ignore`` by section or dotted name)."""
    differences = []
    saved_values, requested_values = saved.to_dict(), requested.to_dict()
    for section, values in saved_values.items():
        for name, saved_value in values.items():
            requested_value = requested_values[section][name]
            ignored = section in ignore or f"{section}.{name}" in ignore
            if not ignored and not _same_setting(f"{section}.{name}", requested_value, saved_value):
                differences.append(f"{section}.{name}: checkpoint {saved_value!r}, requested {requested_value!r}")
    return differences


def _same_setting(name: str, requested: Any, saved: Any) -> bool:
    """Equal values; data directories compare as resolved paths (earlier versions stored them relative)."""
    if name == "data.data_dir":
        return Path(requested).resolve() == Path(saved).resolve()
    return requested == saved


def _only_supported(model: str, settings: dict[str, tuple[Any, Any]], why: str = "") -> None:
    """Raise for the first ``flag: (value, supported)`` of ``model`` whose value is not the supported one."""
    for flag, (value, supported) in settings.items():
        if value != supported:
            raise ConfigError(f"{model} supports only {flag} {supported}{why}, got {value!r}")


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} {value!r} is not one of: {', '.join(choices)}")


def _at_least(flag: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{flag} must be an integer >= {minimum}, got {value!r}")

"""The one training loop: any model/guide pair, trained by SVI with a torch optimizer, written to a run directory.

:func:`fit` takes a model object and data; :func:`fit_config` builds both from a
:class:`~pyro_vae.runs.config.RunConfig` (what the CLI does) and calls the same loop. What a model
family trains on and how it is scored comes from its :mod:`training plan <pyro_vae.training.plan>`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn
from tqdm.auto import tqdm

from pyro_vae.contract import build_configured_model, check_model, model_spec
from pyro_vae.data.batches import evaluation_split, resolve_binarization
from pyro_vae.data.datasets import Dataset, as_dataset
from pyro_vae.data.resolve import load_run_data
from pyro_vae.devices import resolve_device
from pyro_vae.runs.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from pyro_vae.runs.config import DATASETS, ConfigError, DataConfig, DistributedConfig, ModelConfig, RunConfig, TrainConfig, config_differences
from pyro_vae.runs.layout import BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE, SUMMARY_FILE
from pyro_vae.training.distributed import (Replicas, ShardedBatches, barrier, broadcast_from_main,
                                           check_replicas_in_sync, device_of, reduce_min, reduce_sum,
                                           replicas_from_environment, seed_rank_for_epoch, wrap_loss)
from pyro_vae.training.capture import CapturedStep, EagerStep
from pyro_vae.training.fast_path import compile_networks, make_adam
from pyro_vae.training.plan import TrainingPlan, training_plan
from pyro_vae.training.tensorboard_log import TensorBoardLog, summary_writer_class

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """Where the run lives and how its best checkpoint scored (per-datapoint means; test empty without a test split)."""

    run_dir: Path
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]


@dataclass
class RunOptions:
    """How :func:`fit` treats the run directory and what it reports, beside the training settings."""

    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    detect_anomaly: bool = False
    plot_every: int = 0
    tensorboard: bool = False


@dataclass
class TrainingState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    step: int = 0
    best_valid_score: float = -math.inf
    best_epoch: int = 0


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> list[Path]:
    """Refuse to mix two runs in one directory; return the old run's files that ``overwrite`` replaces."""
    if resume:
        if not (run_dir / LAST_CHECKPOINT).is_file():
            raise ConfigError(f"resume: {run_dir / LAST_CHECKPOINT} not found; nothing to resume")
        return []
    existing = [run_dir / name for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, "checkpoints")
                if (run_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(p.name for p in existing)}); resume it, "
            "overwrite it, or choose another run directory"
        )
    return existing


def fit(model: nn.Module, data: Any, *, out: str | Path, valid: Any = None, test: Any = None,
        binarize: str = "auto", valid_size: int | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True, detect_anomaly: bool = False, plot_every: int = 0, tensorboard: bool = False,
        **settings: Any) -> FitResult:
    """Train any model/guide pair (see :mod:`pyro_vae.contract`) by SVI and write the run directory ``out``.

    Args:
        model: an ``nn.Module`` with ``model(x, y=None)`` and ``guide(x, y=None)``; its class and, when
            built with :func:`pyro_vae.build_model`, its keyword arguments are recorded.
        data: a named dataset from :func:`pyro_vae.load_dataset`, or data of your own: a tensor, a pair
            ``(x, y)``, a torch ``Dataset`` or ``DataLoader`` (see :func:`pyro_vae.data.as_dataset`).
        out: the run directory.
        valid: held-out data of your own for model selection (default: ``valid_size`` datapoints
            carved from ``data``).
        test: held-out data of your own scored at the end (default: the named dataset's test split).
        binarize: ``auto``, ``dynamic``, ``static``, ``threshold`` or ``none``.
        resume: continue the run in ``out`` from ``checkpoints/last.pt`` (the same settings; ``epochs``
            may grow).
        overwrite: replace a run already in ``out``.
        valid_size: datapoints carved from ``data`` for validation when ``valid`` is not given.
        progress: progress bars.
        detect_anomaly: torch's autograd anomaly detection (slow), to find where a NaN arises.
        plot_every: also write figures every this many epochs (0: only at the end).
        tensorboard: also log metrics and figures to ``out/tensorboard``.
        **settings: optimisation settings, the fields of :class:`~pyro_vae.runs.config.TrainConfig`
            (``epochs``, ``objective``, ``num_particles``, ``lr``, ``batch_size``, ``seed``, ``fast``, ...).

    Writes ``config.json``, ``metrics.jsonl`` (one object per epoch), ``checkpoints/last.pt`` every
    epoch and ``checkpoints/best.pt`` whenever the validation score improves, ``summary.json`` and
    figures. A non-finite loss or parameter stops training with :class:`TrainingDiverged`, keeping the
    last good checkpoints. Under ``torchrun`` every process calls ``fit`` alike and rank 0 writes.
    """
    check_model(model)
    train = _train_config(settings)
    spec = model_spec(model)
    named = isinstance(data, Dataset) and data.name in DATASETS  # else data of the user's own: "custom"
    data_dir = str(Path(data.source).resolve()) if named and Path(data.source).exists() else ""
    config = RunConfig(data=DataConfig(dataset=data.name if named else "custom", data_dir=data_dir,
                                       binarize=binarize, valid_size=valid_size, download=False),
                       model=ModelConfig(model=spec.target, args=spec.args), train=train)
    config.validate()
    options = RunOptions(resume, overwrite, progress, detect_anomaly, plot_every, tensorboard)
    with replicas_from_environment(train.device) as replicas:
        device = device_of(replicas, resolve_device(train.device))
        dataset = as_dataset(data, valid=valid, test=test, valid_size=valid_size, seed=train.seed, device=device)
        config.data.valid_size, config.data.shape = len(dataset.valid_images), list(dataset.shape)
        config.data.valid_seed = dataset.valid_seed
        return Trainer(model.to(device), dataset, config, Path(out), replicas, options).run()


def fit_config(config: RunConfig, run_dir: str | Path, **options: Any) -> FitResult:
    """Train the model a :class:`RunConfig` names, on the data it names: what ``pyro-vae train`` runs.

    The data is loaded (``auto`` resolved), the model built with the seed set and its arguments
    recorded (``x_dim`` filled from the data where the class takes it), then :func:`fit`'s loop runs.
    ``options`` are :class:`RunOptions`' fields.
    """
    config.validate()
    run_options = RunOptions(**options)
    with replicas_from_environment(config.train.device) as replicas:
        device = device_of(replicas, resolve_device(config.train.device))
        if not replicas.is_main:
            barrier(replicas)  # rank 0 downloads the data, if it must, before the others read it
        dataset, config.data = load_run_data(config.data, config.train.seed, device)
        if replicas.is_main:
            barrier(replicas)
        pyro.set_rng_seed(config.train.seed)
        model = build_configured_model(config.model, dataset.x_dim)
        config.model = ModelConfig(model=config.model.model, args=model_spec(model).args)
        return Trainer(model.to(device), dataset, config, Path(run_dir), replicas, run_options).run()


def _train_config(settings: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ConfigError(f"fit() has no setting {unknown[0]!r}; the settings are: {', '.join(sorted(names))}")
    return TrainConfig(**settings)


def learning_rate_at(epoch: int, train_config: TrainConfig) -> float:
    """The learning rate of ``epoch`` (from 1): ``lr * lr_decay ** (epoch - 1)``, so resuming needs no state."""
    return train_config.lr * train_config.lr_decay ** (epoch - 1)


class Trainer:
    """One run: the model, its data, the plan, the optimizer and the run directory."""

    def __init__(self, model: nn.Module, dataset: Dataset, config: RunConfig, run_dir: Path, replicas: Replicas,
                 options: RunOptions) -> None:
        if options.plot_every < 0:
            raise ConfigError(f"plot_every must be >= 0 (0: only at the end), got {options.plot_every}")
        if options.tensorboard and replicas.is_main:
            summary_writer_class()  # refuse before anything is written when the package is missing
        self.model, self.dataset, self.config, self.run_dir = model, dataset, config, run_dir
        self.replicas, self.options = replicas, options
        self.settings = config.train
        config.data.binarize = resolve_binarization(config.data.binarize, getattr(model, "observes_binary_data", True),
                                                    dataset.is_binary, dataset.in_unit_interval)
        config.distributed = _distributed_settings(self.settings, replicas)
        self.replaced = check_run_dir(run_dir, resume=options.resume, overwrite=options.overwrite) \
            if replicas.is_main else []
        pyro.clear_param_store()
        pyro.set_rng_seed(self.settings.seed)
        logger.info("data: %s (%s), %d train / %d valid / %s test datapoints of shape %s, binarization %s",
                    dataset.name, dataset.source, len(dataset.train_images), len(dataset.valid_images),
                    "no" if dataset.test_images is None else len(dataset.test_images), tuple(dataset.shape),
                    config.data.binarize)
        self.plan: TrainingPlan = training_plan(model, self.settings, dataset, config.data.binarize)
        self.batches = ShardedBatches(self.plan.batches, replicas, self.plan.loss_module.num_images)
        self.state = TrainingState()

    def run(self) -> FitResult:
        settings, replicas, options = self.settings, self.replicas, self.options
        loss_module = self.plan.loss_module
        eager_because = self._eager_because()
        compiled = (settings.compile and eager_because is not None
                    and compile_networks(loss_module, next(iter(self.batches.epoch(1)))[0]))
        if compiled:
            logger.info("networks compiled with torch.compile")
        self.optimizer = make_adam(self.model.parameters(), settings.lr, fused=settings.fast, beta1=settings.adam_beta1,
                                   weight_decay=settings.weight_decay)
        if options.resume:
            self._restore()
            logger.info("resuming after epoch %d (step %d)", self.state.epoch, self.state.step)
        self.step = self._training_step(loss_module, eager_because)
        if replicas.is_main:
            if options.resume:
                _truncate_metrics(self.run_dir / METRICS_FILE, self.state.epoch)
            for path in self.replaced:  # only now that the new run is known to start
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.config.save(self.run_dir / CONFIG_FILE)
        self.log = TensorBoardLog(self.run_dir) if options.tensorboard and replicas.is_main else None
        if replicas.is_distributed:
            logger.info("data-parallel over %d processes (%s): %d datapoints per rank per step, global batch %d, "
                        "lr %g", replicas.world_size, replicas.backend, self.config.distributed.batch_size_per_rank,
                        settings.batch_size, settings.lr)
        anomaly_detection = torch.autograd.detect_anomaly() if options.detect_anomaly else nullcontext()
        try:
            with anomaly_detection:
                for epoch in range(self.state.epoch + 1, settings.epochs + 1):
                    if self._patience_ran_out():
                        break
                    for group in self.optimizer.param_groups:
                        group["lr"] = learning_rate_at(epoch, settings)
                    record = self._run_epoch(epoch)
                    if self.log is not None:
                        self.log.log_epoch(record)
                    if replicas.is_main and options.plot_every and epoch % options.plot_every == 0:
                        self._write_snapshot(epoch, f"_epoch{epoch:03d}")
            return self._summarize()
        finally:
            if self.log is not None:
                self.log.close()

    def _eager_because(self) -> str | None:
        """Why this run's steps cannot be captured (see :mod:`pyro_vae.training.capture`), or None."""
        settings = self.settings
        return ("--no-capture" if not settings.capture else
                "data-parallel training" if self.replicas.is_distributed else
                "--detect-anomaly" if self.options.detect_anomaly else
                "Pyro validates every step (--validate-every-step)" if not settings.fast else None)

    def _training_step(self, loss_module: nn.Module, eager_because: str | None) -> EagerStep | CapturedStep:
        """The captured step (its graphs compiled with ``--compile``), or the eager one and why."""
        if eager_because is None:
            return CapturedStep(loss_module, compile=self.settings.compile)
        if self.settings.capture:
            logger.info("training step not captured: %s; Pyro runs the model and guide every step", eager_because)
        return EagerStep(loss_module, wrap_loss(loss_module, self.replicas))

    def _patience_ran_out(self) -> bool:
        """Early stopping: ``patience`` epochs have passed since the best validation score (rank 0's count),
        counted from the end of the KL warm-up at the earliest (the objective still changes during it)."""
        patience = self.settings.patience
        if patience is None or self.state.epoch == 0:
            return False
        best_epoch = broadcast_from_main(self.state.best_epoch, self.replicas)
        if self.state.epoch - max(best_epoch, self.settings.kl_warmup_epochs) < patience:
            return False
        logger.info("early stopping: no better validation score in the %d epochs after epoch %d", patience, best_epoch)
        return True

    def _scored_splits(self, splits: tuple[str, ...]) -> dict[str, dict[str, float]]:
        return {split: self.plan.score(split) for split in splits if split in self.dataset.splits}

    def _run_epoch(self, epoch: int) -> dict[str, Any] | None:
        """Train one epoch, score held-out splits, append metrics, then checkpoint (last, and best if
        improved); return the epoch's metrics record (None on ranks other than 0).

        Distributed: training statistics are summed over ranks; rank 0 alone scores and writes.
        """
        started = time.perf_counter()
        state, replicas, loss_module = self.state, self.replicas, self.plan.loss_module
        if replicas.is_distributed:
            seed_rank_for_epoch(self.settings.seed, epoch, replicas)
        self.model.train()
        totals, first_nonfinite_step = train_steps(epoch, state.step, loss_module, self.optimizer, self.batches,
                                                   self.settings, self.options.progress and replicas.is_main,
                                                   self.step, self.plan.before_step)
        first_nonfinite_step = reduce_min(first_nonfinite_step, replicas)
        _stop_if_diverged(first_nonfinite_step, self.model, epoch, state.epoch, self.run_dir)
        check_replicas_in_sync(self.model, replicas)
        state.step += len(self.batches)
        train = loss_module.epoch_summary(reduce_sum(totals, replicas).tolist())
        train_seconds = time.perf_counter() - started
        if not replicas.is_main:
            state.epoch = epoch
            return None

        self.model.eval()
        scores = self._scored_splits(self.plan.scored_splits)
        valid_score = scores["valid"][self.plan.selection_metric]
        improved = valid_score > state.best_valid_score
        if improved:
            state.best_valid_score, state.best_epoch = valid_score, epoch
        record = {
            "epoch": epoch,
            "step": state.step,
            "seconds": time.perf_counter() - started,
            "train_seconds": train_seconds,
            "objective": self.settings.objective,
            "lr": self.optimizer.param_groups[0]["lr"],
            "kl_weight": getattr(loss_module, "kl_weight", 1.0),
            "train": train,
            **scores,
            "best": improved,
        }
        with open(self.run_dir / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        state.epoch = epoch
        checkpoint = {**dataclasses.asdict(state), "config": self.config.to_dict(), "model": self.model.state_dict(),
                      "optimizer": self.optimizer.state_dict(), "rng": rng_states()}
        save_checkpoint(checkpoint, self.run_dir / LAST_CHECKPOINT)
        if improved:
            save_checkpoint(checkpoint, self.run_dir / BEST_CHECKPOINT)
        logger.info("epoch %3d/%d  %s  %.1fs%s", epoch, self.settings.epochs, self.plan.describe(record),
                    record["seconds"], "  *" if improved else "")
        return record

    def _restore(self) -> None:
        """Load ``last.pt`` into model and optimizer; distributed, rank 0 reads it and sends it to the others
        (their nodes need not share its disk). The number of processes may differ from the run's start."""
        checkpoint = None
        if self.replicas.is_main:
            checkpoint = load_checkpoint(self.run_dir / LAST_CHECKPOINT, map_location=self.dataset.train_images.device)
            saved = RunConfig.from_dict(checkpoint["config"])
            ignore = ("train.epochs", "distributed") + (("model.args",) if self.config.model.args is None else ())
            differences = config_differences(self.config, saved, ignore=ignore)
            if differences:
                raise ConfigError(f"cannot resume {self.run_dir}: its checkpoint was trained with other settings "
                                  f"({'; '.join(differences)}); restore its config.json or start a new run")
        if self.replicas.is_distributed:
            checkpoint = broadcast_from_main(checkpoint, self.replicas)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if not self.replicas.is_distributed:  # ranks reseed every epoch instead
            restore_rng_states(checkpoint["rng"])
        self.state = TrainingState(**{field.name: checkpoint[field.name]
                                      for field in dataclasses.fields(TrainingState)})

    def _write_snapshot(self, epoch: int, suffix: str = "") -> None:
        """Reconstructions of 10 validation datapoints and prior samples in figures/ (what the model allows)."""
        from pyro_vae.viz.run_figures import snapshot_figures, write_figures  # matplotlib

        images, labels = evaluation_split(self.dataset, "valid", self.config.data.binarize, self.settings.seed)
        figures = snapshot_figures(self.model, self.dataset, images, labels, self.settings.seed)
        paths = write_figures(figures, self.run_dir, suffix)
        if self.log is not None:
            self.log.log_figures(figures, epoch)
        if paths:
            logger.info("figures: %s", ", ".join(str(path) for path in paths))

    def _summarize(self) -> FitResult:
        """Score the best checkpoint on validation and test; write and return the summary (rank 0 scores and
        sends the summary to the other ranks)."""
        if not self.replicas.is_main:
            summary = broadcast_from_main(None, self.replicas)
            return FitResult(run_dir=self.run_dir, best_epoch=summary["best_epoch"], valid=summary["valid"],
                             test=summary["test"])
        best = load_checkpoint(self.run_dir / BEST_CHECKPOINT, map_location=self.dataset.train_images.device)
        self.model.load_state_dict(best["model"])
        self.model.eval()
        scores = self._scored_splits(("valid", "test"))
        result = FitResult(run_dir=self.run_dir, best_epoch=best["best_epoch"], valid=scores["valid"],
                           test=scores.get("test", {}))
        summary = {"best_epoch": result.best_epoch, "dataset": self.config.data.dataset,
                   "binarization": self.config.data.binarize, "valid": result.valid, "test": result.test}
        (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        self._write_snapshot(result.best_epoch)
        if self.replicas.is_distributed:
            broadcast_from_main(summary, self.replicas)
        logger.info("best epoch %d: %s", result.best_epoch,
                    "  ".join(f"{split} {_describe_scores(values)}" for split, values in scores.items()))
        return result


def _describe_scores(scores: dict[str, float]) -> str:
    parts = []
    if "accuracy" in scores:
        parts.append(f"accuracy {100 * scores['accuracy']:.2f}%")
    if "elbo" in scores:
        parts.append(f"-ELBO {-scores['elbo']:.2f}")
    if "reconstruction" in scores and "kl" in scores:
        parts.append(f"(recon {-scores['reconstruction']:.2f} + KL {scores['kl']:.2f})")
    return " ".join(parts)


def _distributed_settings(train_config: TrainConfig, replicas: Replicas) -> DistributedConfig:
    """What ``config.json`` records about the processes; refuses a batch that does not split evenly."""
    if train_config.batch_size % replicas.world_size:
        raise ConfigError(f"--batch-size {train_config.batch_size} (the global batch) does not split evenly over "
                          f"{replicas.world_size} processes; use a multiple of {replicas.world_size}")
    return DistributedConfig(world_size=replicas.world_size, backend=replicas.backend,
                             batch_size_per_rank=train_config.batch_size // replicas.world_size,
                             effective_batch_size=train_config.batch_size, effective_lr=train_config.lr)


def train_steps(epoch: int, first_step: int, loss_module, optimizer, batches, train_config,
                progress: bool, step: EagerStep | CapturedStep | None = None,
                before_step: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the training data. Returns the loss module's statistics summed over the epoch
    and the first step (counted from 1 over the run) whose loss was not finite, inf if none; both
    stay on the device, so there is no per-step host synchronisation.

    ``batches`` is a :class:`~pyro_vae.distributed.ShardedBatches` or batches of one process;
    ``step`` runs a step's forward and backward (:class:`~pyro_vae.training.capture.EagerStep` by
    default, or the captured step). With ``train_config.fast`` Pyro validates distributions and
    sites on the epoch's first step only. ``before_step(step, steps_per_epoch)`` runs before each
    step (a plan's KL warm-up).
    """
    if not isinstance(batches, ShardedBatches):
        batches = ShardedBatches(batches, Replicas(), loss_module.num_images)
    step_function = step or EagerStep(loss_module)
    device = next(loss_module.parameters()).device
    totals = None
    step_counter = torch.full((), float(first_step), device=device)
    first_nonfinite_step = torch.full((), math.inf, device=device)
    bar = tqdm(batches.epoch(epoch), total=len(batches), desc=f"epoch {epoch}", leave=False,
               disable=not progress or None)
    for step_index, (batch, images_per_rank) in enumerate(bar, start=first_step):
        validate = not train_config.fast or step_index == first_step
        if before_step is not None:
            before_step(step_index, len(batches))
        optimizer.zero_grad(set_to_none=True)
        try:
            loss, statistics = step_function(batch, images_per_rank, validate)
        except ValueError:  # distribution validation meets NaN parameters before the loss can
            if _parameters_finite(loss_module.model):
                raise
            first_nonfinite_step.clamp_(max=step_index + 1)
            break
        optimizer.step()
        totals = statistics if totals is None else totals + statistics
        step_counter += 1
        first_nonfinite_step = torch.where(torch.isfinite(loss), first_nonfinite_step,
                                           torch.minimum(first_nonfinite_step, step_counter))
    return totals, first_nonfinite_step


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became NaN or infinite; the message names where and why it may be."""


def _parameters_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _stop_if_diverged(first_nonfinite_step: torch.Tensor, model, epoch: int, last_good_epoch: int,
                      run_dir: Path) -> None:
    """Raise before anything of a diverged epoch is written, so the last good checkpoint stays."""
    bad_step = first_nonfinite_step.item()
    if math.isinf(bad_step) and _parameters_finite(model):
        return
    where = f"step {int(bad_step)}" if not math.isinf(bad_step) else "its last step (non-finite parameters)"
    kept = (f"the last good checkpoint is {run_dir / LAST_CHECKPOINT} (epoch {last_good_epoch})"
            if last_good_epoch else "no epoch had finished, so no checkpoint was written")
    raise TrainingDiverged(
        f"training diverged in epoch {epoch} at {where}: the loss became NaN or infinite; {kept}. "
        "Likely causes: a learning rate too high (try a smaller --lr), data outside the likelihood's range, "
        "or a too small --gaussian-scale; rerun with --detect-anomaly to find the operation"
    )


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop metrics of epochs after the checkpoint (written before a crash lost their checkpoint)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= last_epoch]
    path.write_text("".join(line + "\n" for line in kept))



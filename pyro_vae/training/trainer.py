"""The SVI training loop: Pyro ELBO as a loss module, torch Adam, checkpoints and metrics per epoch."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn
from tqdm.auto import tqdm

from pyro_vae.data.batches import EpochBatches
from pyro_vae.runs.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from pyro_vae.runs.config import ConfigError, DistributedConfig, RunConfig, config_differences
from pyro_vae.devices import resolve_device
from pyro_vae.training.distributed import (Replicas, ShardedBatches, barrier, broadcast_from_main, check_replicas_in_sync,
                          device_of, reduce_min, reduce_sum, replicas_from_environment, seed_rank_for_epoch,
                          wrap_loss)
from pyro_vae.inference.evaluate import dataset_elbo_terms
from pyro_vae.training.fast_path import compile_networks, make_adam
from pyro_vae.models import build_model
from pyro_vae.inference.objectives import NegativeELBO, kl_weight_at, make_objective
from pyro_vae.data.resolve import load_run_data
from pyro_vae.runs.run_dir import (BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE, SUMMARY_FILE, evaluation_split,
                   summarize_terms)
from pyro_vae.models.semisupervised import (SemiSupervisedBatches, SemiSupervisedLoss, balanced_labelled_indices,
                             semisupervised_scores)
from pyro_vae.training.tensorboard_log import TensorBoardLog, summary_writer_class

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """Where the run lives and how its best checkpoint scored (ELBO terms in nats per image)."""

    run_dir: Path
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> list[Path]:
    """Refuse to mix two runs in one directory; return the old run's files that ``overwrite`` replaces."""
    if resume:
        if not (run_dir / LAST_CHECKPOINT).is_file():
            raise ConfigError(f"--resume: {run_dir / LAST_CHECKPOINT} not found; nothing to resume")
        return []
    existing = [run_dir / name for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, "checkpoints")
                if (run_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(p.name for p in existing)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    return existing


def fit(config: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, detect_anomaly: bool = False, plot_every: int = 0,
        tensorboard: bool = False) -> FitResult:
    """Train the configured model by SVI and write the run directory.

    Writes ``config.json`` (resolved settings), ``metrics.jsonl`` (one object per epoch),
    ``checkpoints/last.pt`` every epoch and ``checkpoints/best.pt`` whenever the validation ELBO
    improves, and ``summary.json`` with the best checkpoint's validation and test ELBO terms.
    With ``resume=True`` the run continues from ``last.pt`` and ``config`` must be the run's own.
    A non-finite loss or parameter stops training with :class:`TrainingDiverged`, keeping the last
    good checkpoints; ``detect_anomaly`` runs torch's anomaly detection to find the operation.
    At the end, ``figures/`` gets reconstructions of validation images and samples from the best
    checkpoint, and every ``plot_every`` epochs (0: never) the same of the current model.
    ``tensorboard`` also logs metrics and those figures to ``tensorboard/`` (needs the package).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls ``fit`` with the same arguments:
    they train one model data-parallel (see :mod:`pyro_vae.training.distributed`) and only rank 0 writes.
    """
    config.validate()
    with replicas_from_environment(config.train.device) as replicas:
        return _fit(config, Path(run_dir), replicas, resume=resume, overwrite=overwrite,
                    progress=progress and replicas.is_main, detect_anomaly=detect_anomaly, plot_every=plot_every,
                    tensorboard=tensorboard)


def _fit(config: RunConfig, run_dir: Path, replicas: Replicas, *, resume: bool, overwrite: bool, progress: bool,
         detect_anomaly: bool, plot_every: int, tensorboard: bool) -> FitResult:
    if plot_every < 0:
        raise ConfigError(f"--plot-every must be >= 0 (0: only at the end), got {plot_every}")
    if tensorboard and replicas.is_main:
        summary_writer_class()  # refuse before anything is written when the package is missing
    train_config = config.train
    config.distributed = _distributed_settings(train_config, replicas)
    replaced = check_run_dir(run_dir, resume=resume, overwrite=overwrite) if replicas.is_main else []
    device = device_of(replicas, resolve_device(train_config.device))
    pyro.clear_param_store()
    pyro.set_rng_seed(train_config.seed)

    if not replicas.is_main:
        barrier(replicas)  # rank 0 downloads the data, if it must, before the others read it
    dataset, config.data = load_run_data(config.data, config.model.likelihood, train_config.seed, device)
    if replicas.is_main:
        barrier(replicas)
    logger.info("data: %s (%s), %d train / %d valid / %d test images, binarization %s",
                dataset.name, dataset.source, len(dataset.train_images), len(dataset.valid_images),
                len(dataset.test_images), config.data.binarize)

    model = build_model(config.model, x_dim=dataset.train_images.shape[1]).to(device)
    loss_module, batches = _loss_and_batches(config, dataset, model)
    batches = ShardedBatches(batches, replicas, loss_module.num_images)
    if train_config.compile and compile_networks(loss_module, next(iter(batches.epoch(1)))[0]):
        logger.info("networks compiled with torch.compile")
    optimizer = make_adam(model.parameters(), train_config.lr, fused=train_config.fast)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_valid_score": -math.inf, "best_epoch": 0}
    if resume:
        state = _restore(run_dir, config, model, optimizer, device, replicas)
        logger.info("resuming after epoch %d (step %d)", state["epoch"], state["step"])
    forward = wrap_loss(loss_module, replicas)
    if replicas.is_main:
        if resume:
            _truncate_metrics(run_dir / METRICS_FILE, state["epoch"])
        for path in replaced:  # only now that the new run is known to start
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / CONFIG_FILE)
    log = TensorBoardLog(run_dir) if tensorboard and replicas.is_main else None
    if replicas.is_distributed:
        logger.info("data-parallel over %d processes (%s): %d images per rank per step, global batch %d, lr %g",
                    replicas.world_size, replicas.backend, config.distributed.batch_size_per_rank,
                    train_config.batch_size, train_config.lr)

    anomaly_detection = torch.autograd.detect_anomaly() if detect_anomaly else nullcontext()
    try:
        with anomaly_detection:
            for epoch in range(state["epoch"] + 1, train_config.epochs + 1):
                if _patience_ran_out(state, train_config, replicas):
                    break
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate_at(epoch, train_config)
                record = _run_epoch(epoch, state, run_dir, config, dataset, model, loss_module, forward, optimizer,
                                    batches, replicas, progress)
                if log is not None:
                    log.log_epoch(record)
                if replicas.is_main and plot_every and epoch % plot_every == 0:
                    _write_snapshot(run_dir, config, dataset, model, epoch, f"_epoch{epoch:03d}", log)
        return _summarize_run(run_dir, config, dataset, model, loss_module, device, replicas, log)
    finally:
        if log is not None:
            log.close()


def learning_rate_at(epoch: int, train_config) -> float:
    """The learning rate of ``epoch`` (from 1): ``lr * lr_decay ** (epoch - 1)``, so resuming needs no state."""
    return train_config.lr * train_config.lr_decay ** (epoch - 1)


def _patience_ran_out(state: dict[str, Any], train_config, replicas: Replicas) -> bool:
    """Early stopping: ``patience`` epochs have passed since the best validation score (rank 0's count)."""
    if train_config.patience is None or state["epoch"] == 0:
        return False
    best_epoch = broadcast_from_main(state["best_epoch"], replicas)
    if state["epoch"] - best_epoch < train_config.patience:
        return False
    logger.info("early stopping: no better validation score in the %d epochs after epoch %d",
                train_config.patience, best_epoch)
    return True


def _distributed_settings(train_config, replicas: Replicas) -> DistributedConfig:
    """What ``config.json`` records about the processes; refuses a batch that does not split evenly."""
    if train_config.batch_size % replicas.world_size:
        raise ConfigError(f"--batch-size {train_config.batch_size} (the global batch) does not split evenly over "
                          f"{replicas.world_size} processes; use a multiple of {replicas.world_size}")
    return DistributedConfig(world_size=replicas.world_size, backend=replicas.backend,
                             batch_size_per_rank=train_config.batch_size // replicas.world_size,
                             effective_batch_size=train_config.batch_size, effective_lr=train_config.lr)


def _loss_and_batches(config: RunConfig, dataset, model) -> tuple[nn.Module, EpochBatches | SemiSupervisedBatches]:
    """The loss module the optimizer minimises and the training batches it is fed, for the configured model."""
    train_config = config.train
    if config.model.model in ("cvae", "ssvae") and dataset.train_labels is None:
        raise ConfigError(f"--model {config.model.model} needs labels but {dataset.name} has none; use --dataset "
                          "mnist, fashion-mnist or mnist-sample")
    if config.model.model == "ssvae":
        labelled = balanced_labelled_indices(dataset.train_labels, config.data.labels, model.num_classes,
                                             train_config.seed)
        batches = SemiSupervisedBatches(dataset.train_images, dataset.train_labels, labelled,
                                        train_config.batch_size, config.data.binarize, train_config.seed)
        labelled_scale = batches.labelled_scale if train_config.labelled_weighting == "pass" else 1.0
        return SemiSupervisedLoss(model, train_config.aux_weight, labelled_scale), batches
    batches = EpochBatches(dataset.train_images, dataset.train_labels, train_config.batch_size,
                           config.data.binarize, train_config.seed)
    return NegativeELBO(model, make_objective(train_config.objective, train_config.num_particles)), batches


def selection_metric(config: RunConfig) -> str:
    """The validation score that picks ``best.pt``: accuracy for M2, the ELBO otherwise."""
    return "accuracy" if config.model.model == "ssvae" else "elbo"


def score_split(config: RunConfig, model, loss_module, images: torch.Tensor, labels: torch.Tensor | None
                ) -> dict[str, float]:
    """Held-out scores of a split: the ELBO terms; for M2 its accuracy and the unlabelled ELBO."""
    batch_size = config.train.eval_batch_size
    if isinstance(loss_module, SemiSupervisedLoss):
        return semisupervised_scores(loss_module, images, labels, batch_size)
    return summarize_terms(dataset_elbo_terms(model, images, labels, batch_size=batch_size))


def train_steps(epoch: int, first_step: int, loss_module, optimizer, batches, train_config,
                progress: bool, forward: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the training data. Returns the loss module's statistics summed over the epoch
    and the first step (counted from 1 over the run) whose loss was not finite, inf if none; both
    stay on the device, so there is no per-step host synchronisation.

    ``batches`` is a :class:`~pyro_vae.distributed.ShardedBatches` or batches of one process;
    ``forward`` calls ``loss_module`` (DistributedDataParallel around it when distributed). With
    ``train_config.fast`` Pyro validates distributions and sites on the epoch's first step only.
    """
    if not isinstance(batches, ShardedBatches):
        batches = ShardedBatches(batches, Replicas(), loss_module.num_images)
    forward = forward or loss_module
    device = next(loss_module.parameters()).device
    totals = None
    step_counter = torch.full((), float(first_step), device=device)
    first_nonfinite_step = torch.full((), math.inf, device=device)
    bar = tqdm(batches.epoch(epoch), total=len(batches), desc=f"epoch {epoch}", leave=False,
               disable=not progress or None)
    for step, (batch, images_per_rank) in enumerate(bar, start=first_step):
        validate = not train_config.fast or step == first_step
        if isinstance(loss_module, NegativeELBO):
            loss_module.kl_weight = kl_weight_at(step, len(batches), train_config.beta, train_config.kl_warmup_epochs)
        try:
            with pyro.validation_enabled(validate):
                loss = forward(*batch)
        except ValueError:  # distribution validation meets NaN parameters before the loss can
            if _parameters_finite(loss_module.model):
                raise
            first_nonfinite_step.clamp_(max=step + 1)
            break
        optimizer.zero_grad(set_to_none=True)
        (loss / images_per_rank).backward()
        optimizer.step()
        statistics = loss_module.last_statistics()
        totals = statistics if totals is None else totals + statistics
        step_counter += 1
        first_nonfinite_step = torch.where(torch.isfinite(loss.detach()), first_nonfinite_step,
                                           torch.minimum(first_nonfinite_step, step_counter))
    return totals, first_nonfinite_step


def _run_epoch(epoch: int, state: dict[str, Any], run_dir: Path, config: RunConfig, dataset, model,
               loss_module, forward, optimizer, batches: ShardedBatches, replicas: Replicas, progress: bool
               ) -> dict[str, Any] | None:
    """Train one epoch, score validation, append metrics, then checkpoint (last, and best if improved);
    return the epoch's metrics record (None on ranks other than 0).

    Distributed: training statistics are summed over ranks; rank 0 alone scores and writes.
    """
    started = time.perf_counter()
    train_config = config.train
    if replicas.is_distributed:
        seed_rank_for_epoch(train_config.seed, epoch, replicas)
    model.train()
    totals, first_nonfinite_step = train_steps(epoch, state["step"], loss_module, optimizer, batches,
                                               train_config, progress, forward)
    first_nonfinite_step = reduce_min(first_nonfinite_step, replicas)
    _stop_if_diverged(first_nonfinite_step, model, epoch, state, run_dir)
    check_replicas_in_sync(model, replicas)
    state["step"] += len(batches)
    train = loss_module.epoch_summary(reduce_sum(totals, replicas).tolist())
    train_seconds = time.perf_counter() - started
    if not replicas.is_main:
        state["epoch"] = epoch
        return None

    model.eval()
    splits = ("valid", "test") if isinstance(loss_module, SemiSupervisedLoss) else ("valid",)
    scores = {split: score_split(config, model, loss_module,
                                 *evaluation_split(dataset, split, config.data.binarize, train_config.seed))
              for split in splits}
    valid_score = scores["valid"][selection_metric(config)]
    improved = valid_score > state["best_valid_score"]
    if improved:
        state["best_valid_score"], state["best_epoch"] = valid_score, epoch
    record = {
        "epoch": epoch,
        "step": state["step"],
        "seconds": time.perf_counter() - started,
        "train_seconds": train_seconds,
        "objective": train_config.objective,
        "lr": optimizer.param_groups[0]["lr"],
        "kl_weight": getattr(loss_module, "kl_weight", 1.0),
        "train": train,
        **scores,
        "best": improved,
    }
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    state["epoch"] = epoch
    checkpoint = _checkpoint_state(config, model, optimizer, state)
    save_checkpoint(checkpoint, run_dir / LAST_CHECKPOINT)
    if improved:
        save_checkpoint(checkpoint, run_dir / BEST_CHECKPOINT)
    logger.info("epoch %3d/%d  %s  %.1fs%s", epoch, train_config.epochs, _describe_epoch(record), record["seconds"],
                "  *" if improved else "")
    return record


def _describe_epoch(record: dict[str, Any]) -> str:
    train, valid = record["train"], record["valid"]
    if "accuracy" in valid:
        return (f"train loss {train['loss']:.2f} (unlabelled -ELBO {train['unsupervised']:.2f}, labelled -ELBO "
                f"{train['supervised']:.2f}, classifier {train['classification']:.2f})  valid -ELBO "
                f"{-valid['elbo']:.2f} accuracy {100 * valid['accuracy']:.2f}%  test accuracy "
                f"{100 * record['test']['accuracy']:.2f}%")
    return (f"train -ELBO {-train['elbo']:.2f} (recon {-train['reconstruction']:.2f} + KL {train['kl']:.2f})  "
            f"valid -ELBO {-valid['elbo']:.2f} (recon {-valid['reconstruction']:.2f} + KL {valid['kl']:.2f})")


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became NaN or infinite; the message names where and why it may be."""


def _parameters_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _stop_if_diverged(first_nonfinite_step: torch.Tensor, model, epoch: int, state: dict[str, Any],
                      run_dir: Path) -> None:
    """Raise before anything of a diverged epoch is written, so the last good checkpoint stays."""
    bad_step = first_nonfinite_step.item()
    if math.isinf(bad_step) and _parameters_finite(model):
        return
    where = f"step {int(bad_step)}" if not math.isinf(bad_step) else "its last step (non-finite parameters)"
    kept = (f"the last good checkpoint is {run_dir / LAST_CHECKPOINT} (epoch {state['epoch']})"
            if state["epoch"] else "no epoch had finished, so no checkpoint was written")
    raise TrainingDiverged(
        f"training diverged in epoch {epoch} at {where}: the loss became NaN or infinite; {kept}. "
        "Likely causes: a learning rate too high (try a smaller --lr), data outside the likelihood's range, "
        "or a too small --gaussian-scale; rerun with --detect-anomaly to find the operation"
    )


def _checkpoint_state(config: RunConfig, model, optimizer, state: dict[str, Any]) -> dict[str, Any]:
    return {
        **state,
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_states(),
    }


def _restore(run_dir: Path, config: RunConfig, model, optimizer, device: torch.device,
             replicas: Replicas) -> dict[str, Any]:
    """Load ``last.pt`` into model and optimizer; distributed, rank 0 reads it and sends it to the others
    (their nodes need not share its disk). The number of processes may differ from the run's start."""
    checkpoint = None
    if replicas.is_main:
        checkpoint = load_checkpoint(run_dir / LAST_CHECKPOINT, map_location=device)
        differences = config_differences(config, RunConfig.from_dict(checkpoint["config"]),
                                         ignore=("train.epochs", "distributed"))
        if differences:
            raise ConfigError(f"cannot resume {run_dir}: its checkpoint was trained with other settings "
                              f"({'; '.join(differences)}); restore its config.json or start a new run")
    if replicas.is_distributed:
        checkpoint = broadcast_from_main(checkpoint, replicas)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if not replicas.is_distributed:  # ranks reseed every epoch instead
        restore_rng_states(checkpoint["rng"])
    return {key: checkpoint[key] for key in ("epoch", "step", "best_valid_score", "best_epoch")}


def _write_snapshot(run_dir: Path, config: RunConfig, dataset, model, epoch: int, suffix: str = "",
                    log: TensorBoardLog | None = None) -> None:
    """Reconstructions of 10 validation images (one per class where labelled) and prior samples in figures/."""
    from pyro_vae.viz.run_figures import FIGURES_DIR, first_of_each_class, save_figure, snapshot_figures  # matplotlib

    images, labels = evaluation_split(dataset, "valid", config.data.binarize, config.train.seed)
    chosen = first_of_each_class(labels, 10) if labels is not None else torch.arange(min(10, len(images)))
    conditioned = config.model.model == "cvae"
    figures = snapshot_figures(model, images[chosen], labels[chosen] if conditioned else None, config.train.seed)
    paths = [save_figure(figure, run_dir / FIGURES_DIR / f"{name}{suffix}.png") for name, figure in figures.items()]
    if log is not None:
        log.log_figures(figures, epoch)
    logger.info("figures: %s", ", ".join(str(path) for path in paths))


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop metrics of epochs after the checkpoint (written before a crash lost their checkpoint)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= last_epoch]
    path.write_text("".join(line + "\n" for line in kept))


def _summarize_run(run_dir: Path, config: RunConfig, dataset, model, loss_module, device,
                   replicas: Replicas, log: TensorBoardLog | None = None) -> FitResult:
    """Score the best checkpoint on validation and test; write and return the summary (rank 0 scores and
    sends the summary to the other ranks)."""
    if not replicas.is_main:
        summary = broadcast_from_main(None, replicas)
        return FitResult(run_dir=run_dir, best_epoch=summary["best_epoch"], valid=summary["valid"],
                         test=summary["test"])
    best = load_checkpoint(run_dir / BEST_CHECKPOINT, map_location=device)
    model.load_state_dict(best["model"])
    model.eval()
    scores = {split: score_split(config, model, loss_module,
                                 *evaluation_split(dataset, split, config.data.binarize, config.train.seed))
              for split in ("valid", "test")}
    result = FitResult(run_dir=run_dir, best_epoch=best["best_epoch"], valid=scores["valid"], test=scores["test"])
    summary = {"best_epoch": result.best_epoch, "dataset": config.data.dataset,
               "binarization": config.data.binarize, "valid": result.valid, "test": result.test}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    _write_snapshot(run_dir, config, dataset, model, result.best_epoch, log=log)
    if replicas.is_distributed:
        broadcast_from_main(summary, replicas)
    if "accuracy" in result.test:
        logger.info("best epoch %d: test accuracy %.2f%% (error %.2f%%), test -ELBO %.2f nats per image",
                    result.best_epoch, 100 * result.test["accuracy"], 100 * (1 - result.test["accuracy"]),
                    -result.test["elbo"])
    else:
        logger.info("best epoch %d: test -ELBO %.2f (recon %.2f + KL %.2f) nats per image",
                    result.best_epoch, -result.test["elbo"], -result.test["reconstruction"], result.test["kl"])
    return result

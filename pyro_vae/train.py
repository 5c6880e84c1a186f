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
from tqdm.auto import tqdm

from .batches import EpochBatches
from .checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from .config import ConfigError, RunConfig, config_differences
from .devices import resolve_device
from .evaluate import dataset_elbo_terms
from .models import build_model
from .objectives import NegativeELBO, kl_weight_at, make_objective
from .run_data import load_run_data
from .runs import (BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE, SUMMARY_FILE, evaluation_split,
                   summarize_terms)

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
        progress: bool = True, detect_anomaly: bool = False) -> FitResult:
    """Train the configured model by SVI and write the run directory.

    Writes ``config.json`` (resolved settings), ``metrics.jsonl`` (one object per epoch),
    ``checkpoints/last.pt`` every epoch and ``checkpoints/best.pt`` whenever the validation ELBO
    improves, and ``summary.json`` with the best checkpoint's validation and test ELBO terms.
    With ``resume=True`` the run continues from ``last.pt`` and ``config`` must be the run's own.
    A non-finite loss or parameter stops training with :class:`TrainingDiverged`, keeping the last
    good checkpoints; ``detect_anomaly`` runs torch's anomaly detection to find the operation.
    """
    run_dir = Path(run_dir)
    config.validate()
    replaced = check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    device = resolve_device(config.train.device)
    train_config = config.train
    pyro.clear_param_store()
    pyro.set_rng_seed(train_config.seed)

    dataset, config.data = load_run_data(config.data, config.model.likelihood, train_config.seed, device)
    logger.info("data: %s (%s), %d train / %d valid / %d test images, binarization %s",
                dataset.name, dataset.source, len(dataset.train_images), len(dataset.valid_images),
                len(dataset.test_images), config.data.binarize)

    model = build_model(config.model, x_dim=dataset.train_images.shape[1]).to(device)
    elbo = make_objective(train_config.objective, train_config.num_particles)
    loss_module = NegativeELBO(model, elbo)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_valid_elbo": -math.inf, "best_epoch": 0}
    if resume:
        state = _restore(run_dir, config, model, optimizer, device)
        _truncate_metrics(run_dir / METRICS_FILE, state["epoch"])
        logger.info("resuming after epoch %d (step %d)", state["epoch"], state["step"])
    for path in replaced:  # only now that the new run is known to start
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / CONFIG_FILE)

    batches = EpochBatches(dataset.train_images, dataset.train_labels, train_config.batch_size,
                           config.data.binarize, train_config.seed)
    valid_images, valid_labels = evaluation_split(dataset, "valid", config.data.binarize, train_config.seed)

    anomaly_detection = torch.autograd.detect_anomaly() if detect_anomaly else nullcontext()
    with anomaly_detection:
        for epoch in range(state["epoch"] + 1, train_config.epochs + 1):
            _run_epoch(epoch, state, run_dir, config, dataset, model, loss_module, optimizer, batches,
                       (valid_images, valid_labels), progress)

    return _summarize_run(run_dir, config, dataset, model, device)


def _train_steps(epoch: int, first_step: int, loss_module: NegativeELBO, optimizer, batches: EpochBatches,
                 train_config, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the training data. Returns the summed (loss, log p(x|z), KL) and the first
    step (counted from 1 over the run) whose loss was not finite, inf if none; both stay on the
    device, so there is no per-step host synchronisation."""
    elbo = loss_module.elbo
    device = batches.images.device
    totals = torch.zeros(3, device=device)
    step_counter = torch.full((), float(first_step), device=device)
    first_nonfinite_step = torch.full((), math.inf, device=device)
    bar = tqdm(batches.epoch(epoch), total=len(batches), desc=f"epoch {epoch}", leave=False,
               disable=not progress or None)
    for step, (x, y) in enumerate(bar, start=first_step):
        loss_module.kl_weight = kl_weight_at(step, len(batches), train_config.beta, train_config.kl_warmup_epochs)
        try:
            loss = loss_module(x, y)
        except ValueError:  # distribution validation meets NaN parameters before the loss can
            if _parameters_finite(loss_module.model):
                raise
            first_nonfinite_step.clamp_(max=step + 1)
            break
        optimizer.zero_grad(set_to_none=True)
        (loss / x.shape[0]).backward()
        optimizer.step()
        reconstruction, kl = elbo.last_terms()
        totals += torch.stack([loss.detach(), reconstruction, kl])
        step_counter += 1
        first_nonfinite_step = torch.where(torch.isfinite(loss.detach()), first_nonfinite_step,
                                           torch.minimum(first_nonfinite_step, step_counter))
    return totals, first_nonfinite_step


def _run_epoch(epoch: int, state: dict[str, Any], run_dir: Path, config: RunConfig, dataset, model,
               loss_module: NegativeELBO, optimizer, batches: EpochBatches, valid_split, progress: bool) -> None:
    """Train one epoch, score validation, append metrics, then checkpoint (last, and best if improved)."""
    started = time.perf_counter()
    train_config = config.train
    model.train()
    totals, first_nonfinite_step = _train_steps(epoch, state["step"], loss_module, optimizer, batches,
                                                train_config, progress)
    _stop_if_diverged(first_nonfinite_step, model, epoch, state, run_dir)
    state["step"] += len(batches)
    train_loss, train_reconstruction, train_kl = (totals / len(dataset.train_images)).tolist()

    model.eval()
    valid = summarize_terms(dataset_elbo_terms(model, *valid_split, batch_size=train_config.eval_batch_size))
    improved = valid["elbo"] > state["best_valid_elbo"]
    if improved:
        state["best_valid_elbo"], state["best_epoch"] = valid["elbo"], epoch
    record = {
        "epoch": epoch,
        "step": state["step"],
        "seconds": time.perf_counter() - started,
        "objective": train_config.objective,
        "kl_weight": loss_module.kl_weight,
        "train": {"loss": train_loss, "elbo": train_reconstruction - train_kl,
                  "reconstruction": train_reconstruction, "kl": train_kl},
        "valid": valid,
        "best": improved,
    }
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    state["epoch"] = epoch
    checkpoint = _checkpoint_state(config, model, optimizer, state)
    save_checkpoint(checkpoint, run_dir / LAST_CHECKPOINT)
    if improved:
        save_checkpoint(checkpoint, run_dir / BEST_CHECKPOINT)
    logger.info(
        "epoch %3d/%d  train -ELBO %.2f (recon %.2f + KL %.2f)  valid -ELBO %.2f (recon %.2f + KL %.2f)  %.1fs%s",
        epoch, train_config.epochs, -record["train"]["elbo"], -train_reconstruction, train_kl,
        -valid["elbo"], -valid["reconstruction"], valid["kl"], record["seconds"], "  *" if improved else "",
    )


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


def _restore(run_dir: Path, config: RunConfig, model, optimizer, device: torch.device) -> dict[str, Any]:
    checkpoint = load_checkpoint(run_dir / LAST_CHECKPOINT, map_location=device)
    differences = config_differences(config, RunConfig.from_dict(checkpoint["config"]), ignore=("train.epochs",))
    if differences:
        raise ConfigError(f"cannot resume {run_dir}: its checkpoint was trained with other settings "
                          f"({'; '.join(differences)}); restore its config.json or start a new run")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    restore_rng_states(checkpoint["rng"])
    return {key: checkpoint[key] for key in ("epoch", "step", "best_valid_elbo", "best_epoch")}


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop metrics of epochs after the checkpoint (written before a crash lost their checkpoint)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= last_epoch]
    path.write_text("".join(line + "\n" for line in kept))


def _summarize_run(run_dir: Path, config: RunConfig, dataset, model, device) -> FitResult:
    """Score the best checkpoint on validation and test; write and return the summary."""
    best = load_checkpoint(run_dir / BEST_CHECKPOINT, map_location=device)
    model.load_state_dict(best["model"])
    model.eval()
    scores = {}
    for split in ("valid", "test"):
        images, labels = evaluation_split(dataset, split, config.data.binarize, config.train.seed)
        scores[split] = summarize_terms(dataset_elbo_terms(model, images, labels,
                                                           batch_size=config.train.eval_batch_size))
    result = FitResult(run_dir=run_dir, best_epoch=best["best_epoch"], valid=scores["valid"], test=scores["test"])
    summary = {"best_epoch": result.best_epoch, "dataset": config.data.dataset,
               "binarization": config.data.binarize, "valid": result.valid, "test": result.test}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("best epoch %d: test -ELBO %.2f (recon %.2f + KL %.2f) nats per image",
                result.best_epoch, -result.test["elbo"], -result.test["reconstruction"], result.test["kl"])
    return result

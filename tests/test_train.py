"""Training on the bundled sample: the ELBO improves, checkpoints reload, resume continues exactly."""

import json
import math
from pathlib import Path

import pytest
import torch

from pyro_vae import VAE, ELBOPlan, DataConfig, ModelConfig, RunConfig, TrainConfig, fit_config
from pyro_vae.runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.run_dir import estimate_run, load_run
from pyro_vae.training.trainer import TrainingDiverged


def small_config(epochs=2, **train):
    return RunConfig(
        data=DataConfig(dataset="mnist-sample", valid_size=500, download=False),
        model=ModelConfig("vae", {"hidden_dim": 64, "z_dim": 8}),
        train=TrainConfig(epochs=epochs, batch_size=100, device="cpu", **train),
    )


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    result = fit_config(small_config(epochs=3), run_dir, progress=False)
    return run_dir, result


def test_training_lowers_the_validation_negative_elbo(trained_run):
    run_dir, result = trained_run
    metrics = read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["valid"]["elbo"] > metrics[0]["valid"]["elbo"] + 5  # nats per image
    for record in metrics:
        for split in ("train", "valid"):
            terms = record[split]
            assert terms["elbo"] == pytest.approx(terms["reconstruction"] - terms["kl"])
            assert terms["kl"] > 0 and terms["reconstruction"] < 0
        assert record["train"]["loss"] == pytest.approx(-record["train"]["elbo"], rel=1e-5)
    assert result.best_epoch == max(metrics, key=lambda m: m["valid"]["elbo"])["epoch"]
    assert result.test["elbo"] < 0


def test_run_directory_holds_config_metrics_checkpoints_and_summary(trained_run):
    run_dir, _ = trained_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"] == {"dataset": "mnist-sample", "data_dir": str(Path("data").resolve()),
                              "binarize": "dynamic", "valid_size": 500, "download": False, "shape": [1, 28, 28],
                              "valid_seed": 0}
    # the model by name and every keyword argument it was built with, the data's size included
    assert RunConfig.from_dict(config).model == ModelConfig("vae", {"hidden_dim": 64, "z_dim": 8, "x_dim": 784})
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and last["step"] == 3 * 75
    assert set(last) >= {"model", "optimizer", "rng", "config", "best_epoch", "best_valid_score"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] == load_checkpoint(run_dir / "checkpoints" / "best.pt")["epoch"]


def test_checkpoint_reloads_to_identical_reconstructions(trained_run):
    run_dir, _ = trained_run
    # rebuilt from config.json's name and arguments, or given as an instance of the class the name stands for
    first, second = load_run(run_dir), load_run(run_dir, model=VAE(hidden_dim=64, z_dim=8))
    x = first.dataset.test_images[:10]
    assert torch.equal(first.model.reconstruct(x), second.model.reconstruct(x))
    torch.manual_seed(11)
    samples = first.model.sample_images(5)
    torch.manual_seed(11)
    assert torch.equal(samples, second.model.sample_images(5))
    assert samples.shape == (5, 784) and 0 <= samples.min() and samples.max() <= 1


def test_resume_continues_from_the_saved_epoch_exactly(tmp_path):
    straight = tmp_path / "straight"
    fit_config(small_config(epochs=2), straight, progress=False)
    resumed = tmp_path / "resumed"
    fit_config(small_config(epochs=1), resumed, progress=False)
    config = RunConfig.load(resumed / "config.json")
    config.train.epochs = 2
    fit_config(config, resumed, resume=True, progress=False)
    assert [m["epoch"] for m in read_metrics(resumed)] == [1, 2]
    for a, b in zip(read_metrics(straight), read_metrics(resumed)):
        assert a["train"] == pytest.approx(b["train"], rel=1e-5) and a["valid"] == pytest.approx(b["valid"], rel=1e-5)
    final_straight = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    final_resumed = load_checkpoint(resumed / "checkpoints" / "last.pt")["model"]
    for name in final_straight:
        torch.testing.assert_close(final_straight[name], final_resumed[name])


def test_resume_drops_metrics_written_after_the_last_checkpoint(tmp_path):
    fit_config(small_config(epochs=1), tmp_path, progress=False)
    with open(tmp_path / "metrics.jsonl", "a") as handle:  # an epoch whose checkpoint a crash lost
        handle.write(json.dumps({"epoch": 2}) + "\n")
    config = RunConfig.load(tmp_path / "config.json")
    config.train.epochs = 2
    fit_config(config, tmp_path, resume=True, progress=False)
    metrics = read_metrics(tmp_path)
    assert [m["epoch"] for m in metrics] == [1, 2] and "train" in metrics[1]


def test_an_existing_run_is_never_overwritten_by_accident(trained_run, tmp_path):
    run_dir, _ = trained_run
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run.*resume it, overwrite it"):
        fit_config(small_config(epochs=1), run_dir, progress=False)
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit_config(small_config(), tmp_path / "empty", resume=True, progress=False)


def test_meanfield_objective_and_particles_train(tmp_path):
    result = fit_config(small_config(epochs=1, objective="meanfield", num_particles=2), tmp_path, progress=False)
    metrics = read_metrics(tmp_path)[0]
    assert metrics["train"]["loss"] > 0 and result.valid["kl"] > 0


def test_estimate_run_reports_terms_likelihood_and_bounds(trained_run):
    run_dir, result = trained_run
    summary, per_datapoint = estimate_run(run_dir, "test", num_samples=50, num_particles=3, device="cpu",
                                          progress=False)
    assert summary["n"] == 2000 and summary["dataset"] == "mnist-sample" and summary["split"] == "test"
    assert summary["elbo"] == pytest.approx(summary["reconstruction"] - summary["kl"])
    assert summary["elbo"] == pytest.approx(result.test["elbo"], abs=5 * summary["elbo_se"] + 0.5)
    assert summary["elbo"] < summary["log_likelihood"] == pytest.approx(summary["iwae_bounds"]["50"])
    assert summary["iwae_bounds"]["1"] < summary["iwae_bounds"]["5"] < summary["iwae_bounds"]["50"]
    assert summary["nll"] == -summary["log_likelihood"]
    assert summary["bits_per_dim"] == pytest.approx(summary["nll"] / (784 * math.log(2)))
    assert 0 < summary["active_units"] <= 8 and 0 < summary["log_likelihood_se"] < 5
    assert all(values.shape == (2000,) for values in per_datapoint.values())


def test_bad_settings_are_refused_with_the_flag_named(tmp_path):
    bad = small_config()
    bad.model.args["z_dim"] = 0
    with pytest.raises(ConfigError, match="z_dim must be an integer >= 1, got 0"):
        fit_config(bad, tmp_path, progress=False)
    bad = small_config()
    bad.train.device = "cuda"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            fit_config(bad, tmp_path, progress=False)
    assert not (tmp_path / "config.json").exists()


def test_checkpoints_are_written_atomically_and_load_safely(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)
    assert not list(tmp_path.glob(".*.tmp"))
    assert load_checkpoint(path)["epoch"] == 1
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="ckpt.pt: not a readable checkpoint"):
        load_checkpoint(path)


class RunsCodeOnLoad:
    def __reduce__(self):
        return (print, ("this ran on load",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": RunsCodeOnLoad()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused to load"):
        load_checkpoint(path)


@pytest.mark.parametrize("speed", [{}, {"capture": False}, {"capture": False, "fast": False}],
                         ids=["captured", "eager", "validating every step"])
def test_divergence_stops_with_the_epoch_and_step_named_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, speed):
    """A parameter turned NaN before global step 78 (the third of epoch 2): the captured replay, the eager
    step and Pyro's validation (which raises on the NaN distribution parameters) all stop there."""
    fit_config(small_config(epochs=1), tmp_path, progress=False)
    good = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    original = ELBOPlan.before_step

    def poisoned(self, step, steps_per_epoch):
        original(self, step, steps_per_epoch)
        if step == 77:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(ELBOPlan, "before_step", poisoned)
    config = RunConfig.load(tmp_path / "config.json")
    config.train.epochs = 2
    for name, value in speed.items():
        setattr(config.train, name, value)
    with pytest.raises(TrainingDiverged, match=r"epoch 2 at step 78: .*last good checkpoint .* \(epoch 1\).*--lr"):
        fit_config(config, tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good
    assert [m["epoch"] for m in read_metrics(tmp_path)] == [1]


def test_resume_accepts_checkpoints_of_earlier_versions(tmp_path, monkeypatch):
    """Earlier checkpoints named the best score ``best_valid_elbo``, kept the data directory relative
    (config.json, written later, holds it resolved) and did not record the validation split's seed."""
    monkeypatch.chdir(tmp_path)
    config = small_config(epochs=1)
    config.data.data_dir = "data"
    fit_config(config, Path("run"), progress=False)
    for name in ("last.pt", "best.pt"):
        path = tmp_path / "run" / "checkpoints" / name
        checkpoint = load_checkpoint(path)
        best_score = checkpoint["best_valid_elbo"] = checkpoint.pop("best_valid_score")
        checkpoint["config"]["data"]["data_dir"] = "data"
        del checkpoint["config"]["data"]["valid_seed"]
        save_checkpoint({key: value for key, value in checkpoint.items() if key != "format_version"}, path)
    assert load_run(Path("run")).config.data.data_dir == "data"  # the checkpoint's own, beside config.json's
    config.train.epochs = 2
    fit_config(config, Path("run"), resume=True, progress=False)
    metrics = read_metrics(tmp_path / "run")
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[1]["best"] == (metrics[1]["valid"]["elbo"] > best_score)


def test_resume_with_a_checkpoint_of_another_architecture_names_the_difference(tmp_path):
    fit_config(small_config(epochs=1), tmp_path, progress=False)
    edited = json.loads((tmp_path / "config.json").read_text())
    edited["model"]["args"]["z_dim"] = 16
    (tmp_path / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match=r"model.args.z_dim: checkpoint 8, requested 16"):
        fit_config(RunConfig.load(tmp_path / "config.json"), tmp_path, resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"model.args.z_dim: checkpoint 8, requested 16"):
        load_run(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["args"]["z_dim"] == 16  # left as it was


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)

    def crash_halfway(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk died")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="disk died"):
        save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_detect_anomaly_runs_training_under_torch_anomaly_detection(tmp_path):
    with pytest.warns(UserWarning, match="Anomaly Detection has been enabled"):
        result = fit_config(small_config(epochs=1), tmp_path, progress=False, detect_anomaly=True)
    assert result.best_epoch == 1


def test_learning_rate_decays_every_epoch_and_resumes_from_the_epoch(tmp_path):
    fit_config(small_config(epochs=2, lr_decay=0.5), tmp_path, progress=False)
    fit_config(small_config(epochs=3, lr_decay=0.5), tmp_path, resume=True, progress=False)
    assert [m["lr"] for m in read_metrics(tmp_path)] == [1e-3, 5e-4, 2.5e-4]
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["optimizer"]["param_groups"][0]["lr"] == 2.5e-4


def test_early_stopping_ends_the_run_patience_epochs_after_the_best(tmp_path, monkeypatch):
    real_score = ELBOPlan.score
    calls = []

    def worse_after_epoch_2(plan, split):
        scores = real_score(plan, split)
        calls.append(None)
        epoch = len(calls)  # one validation score per epoch, then valid and test at the end
        return {**scores, "elbo": -100.0 - abs(epoch - 2)}

    monkeypatch.setattr(ELBOPlan, "score", worse_after_epoch_2)
    result = fit_config(small_config(epochs=10, patience=3), tmp_path, progress=False)
    assert [m["epoch"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    assert result.best_epoch == 2
    resumed = fit_config(small_config(epochs=10, patience=3), tmp_path, resume=True, progress=False)
    assert len(read_metrics(tmp_path)) == 5 and resumed.best_epoch == 2  # already out of patience


def test_adam_beta1_reaches_the_optimizer_and_a_resume_must_keep_it(tmp_path):
    fit_config(small_config(epochs=1, adam_beta1=0.95), tmp_path, progress=False)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["optimizer"]["param_groups"][0]["betas"] == (0.95, 0.999)
    with pytest.raises(ConfigError, match=r"trained with other settings \(train.adam_beta1: checkpoint 0.95, requested 0.9\)"):
        fit_config(small_config(epochs=2), tmp_path, resume=True, progress=False)


def test_weight_decay_reaches_the_optimizer_and_a_resume_must_keep_it(tmp_path):
    fit_config(small_config(epochs=1, weight_decay=2e-5), tmp_path, progress=False)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["optimizer"]["param_groups"][0]["weight_decay"] == 2e-5
    refused = r"trained with other settings \(train.weight_decay: checkpoint 2e-05, requested 0.0\)"
    with pytest.raises(ConfigError, match=refused):
        fit_config(small_config(epochs=2), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("change, message", [
    ({"lr_decay": 1.5}, "--lr-decay must be in (0, 1]"),
    ({"adam_beta1": 1.0}, "--adam-beta1 must be in [0, 1"),
    ({"weight_decay": -1e-5}, "--weight-decay must be >= 0"),
    ({"patience": 0}, "--patience must be an integer >= 1"),
])
def test_schedule_settings_are_checked(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[").replace("]", r"\]")):
        fit_config(small_config(**change), tmp_path, progress=False)

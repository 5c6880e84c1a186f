"""The ``pyro-vae`` command as a user runs it: in a subprocess, from a clean working directory."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyro_vae import RunConfig
from pyro_vae.runs.checkpoint import load_checkpoint


def pyro_vae(*args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    return subprocess.run([sys.executable, "-m", "pyro_vae.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_one_epoch_on_the_sample_writes_the_run_directory(tmp_path):
    result = pyro_vae("train", "--dataset", "mnist-sample", "--epochs", "1", "--hidden-dim", "64",
                      "--z-dim", "8", "--out", "run", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epoch   1/1  train -ELBO" in result.stdout and "test -ELBO" in result.stdout
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "figures", "metrics.jsonl",
                                                     "summary.json"]
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["reconstructions.png", "samples.png"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert json.loads((run / "config.json").read_text())["model"]["args"]["z_dim"] == 8
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1

    resumed = pyro_vae("train", "--out", "run", "--resume", "--epochs", "2", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1" in resumed.stdout and "epoch   2/2" in resumed.stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2

    evaluated = pyro_vae("evaluate", "run", "--num-samples", "20", "--num-particles", "2", "--json", "eval.json",
                         "--no-progress", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["split"] == "test" and report["n"] == 2000 and report["epoch"] in (1, 2)
    expected_keys = {"dataset", "binarization", "split", "n", "num_samples", "elbo", "reconstruction", "kl",
                     "log_likelihood", "log_likelihood_se", "nll", "bits_per_dim", "active_units", "iwae_bounds"}
    assert expected_keys <= set(report) and report["num_samples"] == 20
    assert list(report["iwae_bounds"]) == ["1", "5", "20"]


@pytest.mark.slow
def test_default_dataset_without_mnist_uses_the_sample_with_a_notice(tmp_path):
    result = pyro_vae("train", "--epochs", "1", "--hidden-dim", "32", "--z-dim", "4", "--no-download",
                      "--out", "run", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "using the bundled mnist-sample instead" in result.stdout
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["dataset"] == "mnist-sample"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "-1"], "--epochs: must be >= 1, got -1"),
        (["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        (["--z-dim", "0"], "--z-dim: must be >= 1, got 0"),
        (["--lr", "abc"], "--lr: expected a number, got 'abc'"),
        (["--dataset", "cifar"], "--dataset: invalid choice: 'cifar'"),
        (["--dataset", "mnist", "--no-download"], "mnist not found in"),
        (["--likelihood", "gaussian", "--binarize", "static"], "use --binarize none"),
        (["--gaussian-scale", "0.1"], "gaussian_scale (--gaussian-scale) is a positive pixel std of likelihood 'gaussian'"),
        (["--resume"], "--resume needs --out"),
        (["--model", "ssvae"], "SSVAE trains semi-supervised and needs labels=N"),
        (["--model", "ssvae", "--labels", "105", "--dataset", "mnist-sample"], "use a multiple of 10"),
        (["--labels", "100"], "--labels: VAE accepts no argument 'labels'"),
        (["--model", "nowhere.models:MyVAE"], "cannot import module 'nowhere.models'"),
        (["--model", "vae", "--model-arg", "df=3"], "--model-arg df: VAE accepts no argument 'df'"),
        (["--model", "torch.nn:Linear"], "Linear() failed"),
        (["--model", "collections:OrderedDict"], "OrderedDict is not a torch.nn.Module"),
        (["--model", "torch.nn:Identity"], "Identity has no model and no guide method"),
        (["--model-arg", "z_dim"], "expected NAME=VALUE"),
        (["--model", "ssvae", "--labels", "100", "--aux-weight", "-1"], "--aux-weight: must be >= 0, got -1.0"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(tmp_path, args, message):
    out = [] if "--resume" in args else ["--out", "run"]
    result = pyro_vae("train", *args, *out, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_refuses_changed_settings(tmp_path):
    (tmp_path / "run").mkdir()
    RunConfig().save(tmp_path / "run" / "config.json")
    result = pyro_vae("train", "--out", "run", "--resume", "--lr", "0.1", "--z-dim", "3", cwd=tmp_path)
    assert result.returncode == 2
    assert "--lr 0.1 (the run has 0.001)" in result.stderr
    assert "drop them or start a new run" in result.stderr


def test_evaluate_of_a_missing_run_names_the_directory(tmp_path):
    result = pyro_vae("evaluate", "nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert "nowhere: checkpoint not found" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    settings = ["--dataset", "mnist-sample", "--hidden-dim", "32", "--z-dim", "4", "--batch-size", "50",
                "--valid-size", "500", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    process = subprocess.Popen([sys.executable, "-m", "pyro_vae.cli", "train", *settings, "--epochs", "3",
                                "--out", "killed"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first_checkpoint = tmp_path / "killed" / "checkpoints" / "last.pt"  # renamed into place whole
    deadline = time.monotonic() + 300
    while not first_checkpoint.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the first epoch never finished"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # somewhere in epoch 2
    process.wait()
    assert process.returncode == -signal.SIGKILL
    # the same command with --resume appended: settings equal to the run's own are accepted
    resumed = pyro_vae("train", *settings, "--epochs", "3", "--out", "killed", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    straight = pyro_vae("train", *settings, "--epochs", "3", "--out", "straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr

    def final(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines], load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")

    killed_metrics, killed_state = final("killed")
    straight_metrics, straight_state = final("straight")
    assert [m["epoch"] for m in killed_metrics] == [1, 2, 3]
    for a, b in zip(killed_metrics, straight_metrics):
        assert a["train"] == pytest.approx(b["train"], rel=1e-6) and a["valid"] == pytest.approx(b["valid"], rel=1e-6)
    for name, value in straight_state["model"].items():
        torch.testing.assert_close(killed_state["model"][name], value)

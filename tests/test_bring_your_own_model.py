"""Models written outside the package, on the documented contract only, get the whole toolkit:
training through the API and the CLI (by import path), resume, reload, estimators, figures."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import pyro_vae
from pyro_vae import ModelContractError, as_dataset, build_model, estimate_run, fit, load_dataset, load_run, log_likelihood
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.config import ConfigError

TESTS = Path(__file__).parent


class StudentTVAE(nn.Module):
    """A user's VAE with a heavy-tailed prior: z ~ StudentT(df, 0, 1), x ~ Bernoulli(decoder(z)).

    Only ``model`` and ``guide``: no encode, decode or sample_images.
    """

    def __init__(self, x_dim: int = 784, z_dim: int = 4, hidden_dim: int = 32, df: float = 3.0) -> None:
        super().__init__()
        self.df, self.z_dim = df, z_dim
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, x_dim))
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, 2 * z_dim))

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(x.shape[0], self.z_dim)
            z = pyro.sample("z", dist.StudentT(self.df, zeros, torch.ones_like(zeros)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            loc, raw_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw_scale) + 1e-4).to_event(1))


class PPCA(nn.Module):
    """Probabilistic PCA: z ~ N(0, I), x ~ N(W z + b, sigma^2 I); an amortized linear-Gaussian guide,
    whose family holds the exact posterior. log p(x) = log N(x; b, W W^T + sigma^2 I)."""

    observes_binary_data = False

    def __init__(self, x_dim: int = 2, z_dim: int = 1) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.weight = nn.Parameter(torch.randn(x_dim, z_dim))
        self.bias = nn.Parameter(torch.zeros(x_dim))
        self.raw_noise = nn.Parameter(torch.zeros(()))
        self.guide_loc = nn.Linear(x_dim, z_dim)
        self.guide_raw_scale = nn.Parameter(torch.zeros(z_dim))

    def noise(self):
        return F.softplus(self.raw_noise) + 1e-3

    def model(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(x.shape[0], self.z_dim)
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.weight.T + self.bias, self.noise()).to_event(1), obs=x)

    def guide(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            scale = F.softplus(self.guide_raw_scale).expand(x.shape[0], self.z_dim)
            pyro.sample("z", dist.Normal(self.guide_loc(x), scale).to_event(1))

    @torch.no_grad()
    def analytic_log_likelihood(self, x):
        covariance = self.weight @ self.weight.T + self.noise() ** 2 * torch.eye(len(self.bias))
        return torch.distributions.MultivariateNormal(self.bias, covariance).log_prob(x)


class NoGuide(nn.Module):
    def model(self, x, y=None):
        pass


def points_from_a_ppca(num: int = 600, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(num, 1, generator=generator)
    return z @ torch.tensor([[2.0, -1.0]]) + torch.tensor([0.5, 1.0]) + 0.3 * torch.randn(num, 2, generator=generator)


@pytest.fixture(scope="module")
def sample():
    return load_dataset("mnist-sample", valid_size=500, seed=0)


@pytest.fixture(scope="module")
def student_run(tmp_path_factory, sample):
    run_dir = tmp_path_factory.mktemp("student")
    torch.manual_seed(0)
    model = build_model("test_bring_your_own_model:StudentTVAE", df=3.0, z_dim=4)
    result = fit(model, sample, out=run_dir, epochs=2, batch_size=100, device="cpu", progress=False)
    return run_dir, result


@pytest.mark.slow
def test_a_model_written_in_a_test_trains_through_the_api(student_run):
    run_dir, result = student_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == {"model": "test_bring_your_own_model:StudentTVAE", "args": {"df": 3.0, "z_dim": 4}}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[1]["valid"]["elbo"] > metrics[0]["valid"]["elbo"]
    for record in metrics:  # the ELBO's terms read from the traces of the user's model and guide
        assert record["train"]["elbo"] == pytest.approx(record["train"]["reconstruction"] - record["train"]["kl"])
        assert record["valid"]["kl"] == pytest.approx(record["valid"]["kl_monte_carlo"])  # no closed form here
    assert result.test["elbo"] < 0 and result.best_epoch == 2
    # figures through the model's own traces: reconstructions from q(z|x), samples from its StudentT prior
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == ["reconstructions.png", "samples.png"]


@pytest.mark.slow
def test_a_user_model_reloads_from_its_run_directory_and_log_p_x_bounds_the_elbo(student_run):
    run_dir, _ = student_run
    run = load_run(run_dir)  # rebuilt from the recorded import path and arguments
    assert type(run.model).__name__ == "StudentTVAE" and run.model.df == 3.0
    assert load_run(run_dir, model=StudentTVAE(df=3.0, z_dim=4)).checkpoint["epoch"] == 2  # or given, if preferred
    with pytest.raises(ModelContractError, match="the run trained test_bring_your_own_model:StudentTVAE but model= "
                                                 "is a pyro_vae.models.vae:VAE"):
        load_run(run_dir, model=pyro_vae.VAE())
    summary, per_datapoint = estimate_run(run_dir, "test", num_samples=100, num_particles=2, device="cpu",
                                          progress=False)
    assert summary["model"] == "test_bring_your_own_model:StudentTVAE" and summary["estimator"] == "is"
    assert summary["log_likelihood"] > summary["elbo"]
    assert summary["iwae_bounds"]["1"] < summary["iwae_bounds"]["5"] < summary["iwae_bounds"]["100"]
    assert 0 < summary["active_units"] <= 4  # the guide has a site "z": its mean is the Normal's
    assert per_datapoint["log_likelihood"].shape == (2000,)


@pytest.mark.slow
def test_figures_a_model_cannot_have_are_skipped_with_the_reason(student_run, tmp_path, caplog):
    from pyro_vae.viz.run_figures import write_run_figures

    run_dir, _ = student_run
    with caplog.at_level("INFO"):
        paths = write_run_figures(load_run(run_dir), run_dir, tmp_path)
    assert sorted(p.name for p in paths) == ["latent_space.png", "reconstructions.png", "samples.png",
                                             "training_curves.png"]
    assert "figure interpolation skipped: interpolation needs a decode(z, y=None) method, which StudentTVAE does " \
           "not have" in caplog.text


@pytest.mark.slow
def test_a_model_handed_over_already_built_needs_itself_to_reload(tmp_path, sample):
    torch.manual_seed(0)
    fit(StudentTVAE(z_dim=2), sample, out=tmp_path, epochs=1, batch_size=200, device="cpu", progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["args"] is None
    with pytest.raises(ModelContractError, match="pass load_run\\(..., model=YourModel\\(...\\)\\)"):
        load_run(tmp_path)
    run = load_run(tmp_path, model=StudentTVAE(z_dim=2))
    assert run.checkpoint["epoch"] == 1
    with pytest.raises(ModelContractError, match="the weights do not fit StudentTVAE"):
        load_run(tmp_path, model=StudentTVAE(z_dim=3))


def test_a_two_dimensional_ppca_on_points_trains_reloads_and_scores_against_its_analytic_likelihood(tmp_path):
    points = points_from_a_ppca()
    torch.manual_seed(0)
    model = build_model("test_bring_your_own_model:PPCA")  # x_dim=2 is its default
    fit(model, points[:500], valid=points[500:550], test=points[550:], out=tmp_path, epochs=60, batch_size=50,
        lr=0.02, device="cpu", progress=False)
    config_text = (tmp_path / "config.json").read_text()
    assert "784" not in config_text and json.loads(config_text)["data"]["shape"] == [2]
    assert json.loads(config_text)["data"]["binarize"] == "none"
    with pytest.raises(ConfigError, match="pass the same data to load_run"):
        load_run(tmp_path)
    data = as_dataset(points[:500], valid=points[500:550], test=points[550:])
    run = load_run(tmp_path, data=data)
    assert run.dataset.shape == (2,)
    summary, per_datapoint = estimate_run(tmp_path, "test", num_samples=2000, device="cpu", progress=False, data=data)
    exact = run.model.analytic_log_likelihood(points[550:])
    assert summary["n"] == 50 and summary["bits_per_dim"] == pytest.approx(summary["nll"] / (2 * math.log(2)))
    assert (per_datapoint["log_likelihood"] - exact).abs().mean() < 0.02  # the guide family holds the posterior
    assert summary["elbo"] <= summary["log_likelihood"] + 0.01
    assert exact.mean() > -3.5  # it learned the data: the generating PPCA scores about -2.1
    pyro.set_rng_seed(1)
    direct = log_likelihood(run.model, points[550:], num_samples=2000)  # the same estimator, no run directory
    assert (direct - exact).abs().mean() < 0.02


@pytest.mark.slow
def test_a_user_model_trains_by_import_path_from_the_cli_and_resumes_after_a_kill(tmp_path):
    settings = ["--model", "test_bring_your_own_model:StudentTVAE", "--model-arg", "df=5", "--z-dim", "3",
                "--dataset", "mnist-sample", "--valid-size", "500", "--batch-size", "50", "--device", "cpu",
                "--no-progress", "--epochs", "3"]
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PYTHONWARNINGS": "error"}
    command = [sys.executable, "-m", "pyro_vae.cli", "train", *settings]
    process = subprocess.Popen([*command, "--out", "killed"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first_checkpoint = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not first_checkpoint.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the first epoch never finished"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = lambda *args: subprocess.run([*command, *args], cwd=tmp_path, env=env, capture_output=True, text=True)  # noqa: E731
    resumed = run("--out", "killed", "--resume")  # the same command, --resume appended
    assert resumed.returncode == 0, resumed.stderr
    straight = run("--out", "straight")
    assert straight.returncode == 0, straight.stderr
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["model"] == {"model": "test_bring_your_own_model:StudentTVAE",
                               "args": {"df": 5, "z_dim": 3, "x_dim": 784}}
    killed = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    uninterrupted = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert killed["epoch"] == uninterrupted["epoch"] == 3
    for name, value in uninterrupted["model"].items():
        torch.testing.assert_close(killed["model"][name], value)
    changed = run("--out", "killed", "--resume", "--model-arg", "df=7")
    assert changed.returncode == 2 and "model argument df=7 (the run has 5)" in changed.stderr

    evaluated = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "evaluate", "straight", "--num-samples", "10",
                                "--num-particles", "1", "--no-progress"], cwd=tmp_path, env=env, capture_output=True,
                               text=True)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["log_likelihood"] > report["elbo"] and math.isfinite(report["nll"])
    gone = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "evaluate", "straight"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True)
    assert gone.returncode == 2 and "cannot import module 'test_bring_your_own_model'" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_the_contract_is_checked_with_one_line_naming_the_problem(sample):
    with pytest.raises(ModelContractError, match="NoGuide has no guide method; a model needs model"):
        fit(NoGuide(), sample, out="unused")
    with pytest.raises(ModelContractError, match="StudentTVAE accepts no argument 'dof'"):
        build_model("test_bring_your_own_model:StudentTVAE", dof=3)
    with pytest.raises(ModelContractError, match="module 'test_bring_your_own_model' has no 'StudentVAE'"):
        build_model("test_bring_your_own_model:StudentVAE")
    with pytest.raises(ModelContractError, match="unknown model 'studentvae'"):
        build_model("studentvae")
    with pytest.raises(ConfigError, match="fit\\(\\) has no setting 'epoch'"):
        fit(StudentTVAE(), sample, out="unused", epoch=3)


def test_registered_names_are_import_paths_of_the_built_ins():
    names = pyro_vae.registered_models()
    assert names["vae"] == "pyro_vae.models.vae:VAE" and names["ssvae"] == "pyro_vae.models.ssvae:SSVAE"
    assert type(build_model("cvae", z_dim=2, hidden_dim=8)).__name__ == "ConditionalVAE"


def test_an_installed_package_adds_model_names_through_entry_points(monkeypatch):
    from importlib import metadata

    import pyro_vae.contract

    student = metadata.EntryPoint(name="student-t", value="test_bring_your_own_model:StudentTVAE",
                                  group="pyro_vae.models")
    shadowing = metadata.EntryPoint(name="vae", value="elsewhere:VAE", group="pyro_vae.models")
    monkeypatch.setattr(pyro_vae.contract.metadata, "entry_points",
                        lambda group: [student, shadowing] if group == "pyro_vae.models" else [])
    names = pyro_vae.registered_models()
    assert names["student-t"] == "test_bring_your_own_model:StudentTVAE"
    assert names["vae"] == "pyro_vae.models.vae:VAE"  # a package cannot take over a built-in name
    model = build_model("student-t", df=2.0, z_dim=3)
    assert type(model).__name__ == "StudentTVAE" and model.df == 2.0
    assert pyro_vae.contract.model_spec(model).target == "test_bring_your_own_model:StudentTVAE"

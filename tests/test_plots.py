"""Figures, corrupted inputs, anomaly scores and embeddings, on tiny models trained on the bundled sample."""

import csv
import json
import sys

import numpy as np
import pytest
import torch

from conftest import write_fake_mnist
from pyro_vae import DataConfig, ModelConfig, RunConfig, TrainConfig, fit_config, load_run
from pyro_vae.viz import plots
from pyro_vae.runs.config import ConfigError
from pyro_vae.data.corruption import masked_block, salt_and_pepper
from pyro_vae.inference.evaluate import latent_means
from pyro_vae.viz.run_figures import first_of_each_class, write_run_figures
from pyro_vae.runs.run_dir import write_embeddings
from pyro_vae.applications.scoring import auroc
from test_cli import pyro_vae


def canvas(figure):
    """The pixel array of a figure's image grid (its first axes' image)."""
    return figure.axes[0].images[0].get_array()


def tiny_config(model="vae", z_dim=2, labels=None, epochs=1):
    args = {"hidden_dim": 32, "z_dim": z_dim, **({} if labels is None else {"labels": labels})}
    return RunConfig(data=DataConfig(dataset="mnist-sample", valid_size=500, download=False),
                     model=ModelConfig(model, args),
                     train=TrainConfig(epochs=epochs, batch_size=100, device="cpu"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directories of a VAE (2-D latent, 2 epochs, a figure snapshot every epoch), a CVAE and M2."""
    root = tmp_path_factory.mktemp("runs")
    fit_config(tiny_config(epochs=2), root / "vae", progress=False, plot_every=1)
    fit_config(tiny_config("cvae", z_dim=4), root / "cvae", progress=False)
    fit_config(tiny_config("ssvae", z_dim=4, labels=100), root / "ssvae", progress=False)
    return root


@pytest.fixture(scope="module")
def test_images(runs):
    run = load_run(runs / "vae")
    return run.dataset.test_images[:6].bernoulli(generator=torch.Generator().manual_seed(0)), run.dataset.test_labels[:6]


def test_training_writes_reconstructions_and_samples_at_the_end_and_every_n_epochs(runs):
    assert sorted(p.name for p in (runs / "vae" / "figures").iterdir()) == [
        "reconstructions.png", "reconstructions_epoch001.png", "reconstructions_epoch002.png",
        "samples.png", "samples_epoch001.png", "samples_epoch002.png"]
    assert sorted(p.name for p in (runs / "cvae" / "figures").iterdir()) == ["reconstructions.png", "samples.png"]



def test_a_run_directory_may_be_named_from_the_home_directory(runs, monkeypatch):
    monkeypatch.setenv("HOME", str(runs))
    assert load_run("~/vae").config == load_run(runs / "vae").config

def test_reconstructions_put_inputs_over_their_reconstructions(runs, test_images):
    model = load_run(runs / "vae").model
    x, _ = test_images
    pixels = canvas(plots.reconstructions_figure(model, x))
    assert pixels.shape == (2 * 28, 6 * 28)
    torch.testing.assert_close(torch.as_tensor(pixels[:28, 28:56]), x[1].reshape(28, 28))
    torch.testing.assert_close(torch.as_tensor(pixels[28:, 28:56]), model.reconstruct(x[1:2]).reshape(28, 28))


def test_conditional_figures_need_or_infer_labels(runs, test_images):
    x, y = test_images
    cvae, m2 = load_run(runs / "cvae").model, load_run(runs / "ssvae").model
    with pytest.raises(ValueError, match="given its label y; pass y"):
        plots.reconstructions_figure(cvae, x)
    assert canvas(plots.reconstructions_figure(cvae, x, y)).shape == (56, 6 * 28)
    assert canvas(plots.reconstructions_figure(m2, x)).shape == (56, 6 * 28)  # labels from q(y|x)
    for model in (cvae, m2):
        assert canvas(plots.class_conditional_grid(model, num_columns=7)).shape == (10 * 28, 7 * 28)



def test_analogies_keep_each_rows_style_and_vary_the_class(runs, test_images):
    x, y = test_images
    m2 = load_run(runs / "ssvae").model
    pixels = torch.as_tensor(canvas(plots.analogies_figure(m2, x[:3])))
    assert pixels.shape == (3 * 28, 11 * 28)
    torch.testing.assert_close(pixels[28:56, :28], x[1].reshape(28, 28))  # the image, then its analogies
    style = m2.encode(x[1:2])  # the style under the classifier's label
    torch.testing.assert_close(pixels[28:56, 28 * 8:28 * 9], m2.decode(style, torch.tensor([7])).reshape(28, 28))
    cvae = load_run(runs / "cvae").model
    pixels = torch.as_tensor(canvas(plots.analogies_figure(cvae, x[:2], y[:2])))
    style = cvae.encode(x[:1], y[:1])
    torch.testing.assert_close(pixels[:28, 28:56], cvae.decode(style, torch.tensor([0])).reshape(28, 28))
    with pytest.raises(ValueError, match="analogies need num_classes and decode"):
        plots.analogies_figure(load_run(runs / "vae").model, x)

def test_samples_manifold_interpolation_traversals_and_denoising_have_their_grids(runs, test_images):
    model = load_run(runs / "vae").model
    x, _ = test_images
    assert canvas(plots.samples_figure(model, 16)).shape == (4 * 28, 4 * 28)
    assert canvas(plots.manifold_grid(model, num_per_side=5)).shape == (5 * 28, 5 * 28)
    interpolation = canvas(plots.interpolation_figure(model, x[:3], x[3:], num_steps=7))
    assert interpolation.shape == (3 * 28, 7 * 28)
    torch.testing.assert_close(torch.as_tensor(interpolation[28:56, :28]), model.reconstruct(x[1:2]).reshape(28, 28))
    torch.testing.assert_close(torch.as_tensor(interpolation[28:56, -28:]), model.reconstruct(x[4:5]).reshape(28, 28))
    traversal = canvas(plots.traversal_figure(model, x[:1], dims=[1, 0], values=(-2, 0, 2)))
    assert traversal.shape == (2 * 28, 3 * 28)
    z = model.encode(x[:1])
    expected = model.decode(torch.stack([z[0, 0], torch.tensor(2.0)])[None])  # row of z[1], value 2
    torch.testing.assert_close(torch.as_tensor(traversal[:28, 56:]), expected.reshape(28, 28))
    corrupted = salt_and_pepper(x, 0.2)
    assert canvas(plots.denoising_figure(model, x, corrupted)).shape == (3 * 28, 6 * 28)


def test_figures_refuse_what_they_cannot_draw(runs, test_images):
    x, _ = test_images
    with pytest.raises(ValueError, match="needs an unconditional model with a 2-D latent"):
        plots.manifold_grid(load_run(runs / "cvae").model)
    model = load_run(runs / "vae").model
    with pytest.raises(ValueError, match=r"latent dimensions \[5\] do not exist; use 0..1"):
        plots.traversal_figure(model, x[:1], dims=[5])
    with pytest.raises(ValueError, match="starts from one image"):
        plots.traversal_figure(model, x[:2], dims=[0])
    with pytest.raises(ValueError, match="num_steps must be >= 2"):
        plots.interpolation_figure(model, x[:1], x[1:2], num_steps=1)


def test_latent_scatter_uses_2d_latents_directly_and_pca_for_more(monkeypatch):
    labels = torch.arange(200) % 10
    direct = plots.latent_scatter(torch.randn(200, 2), labels)
    assert len(direct.axes) == 2  # the scatter and its colour bar
    assert len(direct.axes[0].collections[0].get_offsets()) == 200
    line = torch.randn(200, 1) * torch.tensor([[3.0, 4.0, 0.0, 0.0, 0.0]]) + 0.01 * torch.randn(200, 5)
    projected = plots.latent_scatter(line, labels)
    assert projected.axes[0].get_xlabel() == "PC 1 (100% of variance)"
    points = projected.axes[0].collections[0].get_offsets()
    along = (line - line.mean(0)) @ torch.tensor([3.0, 4.0, 0, 0, 0]) / 5
    assert abs(np.corrcoef(points[:, 0], along.numpy())[0, 1]) > 0.999
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # as if scikit-learn were not installed
    with pytest.raises(ValueError, match="t-SNE needs scikit-learn"):
        plots.latent_scatter(line, labels, method="tsne")


def test_training_curves_have_a_panel_per_term_and_a_line_per_split(runs):
    for run, titles, lines in (("vae", ["-ELBO (nats per image)", "-E_q[log p(x|z)] (nats)", "KL(q(z|x) || p(z)) (nats)"],
                                [2, 2, 2]),
                               ("ssvae", ["loss per unlabelled image (nats)", "-ELBO, y summed out (nats)",
                                          "accuracy of q(y|x)"], [1, 1, 2])):
        records = [json.loads(line) for line in (runs / run / "metrics.jsonl").read_text().splitlines()]
        figure = plots.training_curves(records)
        assert [axes.get_title() for axes in figure.axes] == titles
        assert [len(axes.lines) for axes in figure.axes] == lines
        assert list(figure.axes[0].lines[0].get_xdata()) == [r["epoch"] for r in records]


def test_accuracy_against_labels_shows_every_seed_and_the_anchors():
    figure = plots.accuracy_vs_labels({100: [10.0, 12.0], 600: [5.0, 6.0]}, {"Kingma et al.": {100: 11.97, 600: 4.94}})
    axes = figure.axes[0]
    assert [len(c.get_offsets()) for c in axes.collections] == [2, 2]
    assert list(axes.lines[0].get_ydata()) == [11.0, 5.5]
    assert [line.get_label() for line in axes.lines] == ["pyro-vae M2 (mean; dots: seeds)", "Kingma et al."]


def test_pyro_vae_plot_writes_the_figures_it_promises(runs, tmp_path):
    result = pyro_vae("plot", str(runs / "vae"), "--out", "vae-figures", "--num-images", "6", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    common = ["denoising.png", "interpolation.png", "latent_space.png", "reconstructions.png", "samples.png",
              "training_curves.png", "traversals.png"]
    assert sorted(p.name for p in (tmp_path / "vae-figures").iterdir()) == sorted(common + ["manifold.png"])
    assert result.stdout.count("wrote ") == 8
    written = write_run_figures(load_run(runs / "cvae"), runs / "cvae", tmp_path / "cvae-figures")
    assert sorted(p.name for p in written) == sorted(common + ["analogies.png", "class_conditional.png"])
    assert all(p.stat().st_size > 1000 for p in written)


def test_auroc_matches_hand_computed_examples():
    assert auroc(torch.tensor([0.1, 0.4]), torch.tensor([0.35, 0.8])) == pytest.approx(0.75)
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 3.0])) == pytest.approx(3.5 / 4)  # a tie counts half
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])) == 1.0
    assert auroc(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert auroc(torch.full((4,), 7.0), torch.full((3,), 7.0)) == 0.5
    with pytest.raises(ValueError, match="finite"):
        auroc(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_score_separates_noise_from_digits_end_to_end(runs, tmp_path):
    write_fake_mnist(tmp_path / "noise", num_train=60, num_test=40)  # uniform random pixels as "mnist"
    result = pyro_vae("score", str(runs / "vae"), "--dataset", "mnist", "--data-dir", "noise", "--no-download",
                      "--num-samples", "8", "--num-particles", "2", "--csv", "scores.csv", "--json", "scores.json",
                      "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "scores.json").read_text())
    assert summary["in_distribution"] == "mnist-sample" and summary["out_of_distribution"] == "mnist"
    assert summary["sets"]["mnist-sample"]["n"] == 2000 and summary["sets"]["mnist"]["n"] == 40
    assert summary["auroc"]["negative_elbo"] > 0.95 and summary["auroc"]["negative_log_likelihood"] > 0.95
    rows = list(csv.DictReader((tmp_path / "scores.csv").read_text().splitlines()))
    assert len(rows) == 2040 and set(rows[0]) == {"dataset", "index", "negative_elbo", "negative_log_likelihood"}
    noise_scores = torch.tensor([float(r["negative_log_likelihood"]) for r in rows if r["dataset"] == "mnist"])
    assert noise_scores.mean().item() == pytest.approx(summary["sets"]["mnist"]["negative_log_likelihood"], rel=1e-5)
    refused = pyro_vae("score", str(runs / "cvae"), "--no-progress", cwd=tmp_path)
    assert refused.returncode == 2 and "score needs a model of x alone" in refused.stderr


def test_corruptions_touch_the_pixels_they_say():
    images = torch.full((50, 784), 0.5)
    noisy = salt_and_pepper(images, 0.3, seed=1)
    changed = noisy != 0.5
    assert abs(changed.float().mean().item() - 0.3) < 0.02
    assert set(noisy[changed].unique().tolist()) == {0.0, 1.0}
    blocked = masked_block(torch.ones(50, 784), 6, seed=2)
    for image in blocked.reshape(50, 28, 28):
        rows, columns = torch.nonzero(image == 0, as_tuple=True)
        assert len(rows) == 36 and rows.max() - rows.min() == 5 and columns.max() - columns.min() == 5
    with pytest.raises(ValueError, match="size must be between 1 and 28"):
        masked_block(images, 29)


def test_first_of_each_class_takes_the_classes_in_turn():
    assert first_of_each_class(torch.tensor([3, 1, 1, 0, 3, 2, 0]), 6).tolist() == [3, 1, 5, 0, 6, 2]


def test_embeddings_are_written_as_npy_and_csv(runs, tmp_path):
    run = load_run(runs / "cvae")
    means = write_embeddings(run, "test", tmp_path / "z.npy")
    assert np.load(tmp_path / "z.npy").shape == (2000, 4)
    labels = np.load(tmp_path / "z.labels.npy")
    assert labels.tolist() == run.dataset.test_labels.tolist()
    from pyro_vae.runs.run_dir import evaluation_split
    images, _ = evaluation_split(run.dataset, "test", run.config.data.binarize, run.config.train.seed)
    torch.testing.assert_close(means[:5], latent_means(run.model, images[:5], run.dataset.test_labels[:5]))
    result = pyro_vae("embed", str(runs / "vae"), "--out", "z.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2000 test images x 2 latent dimensions" in result.stdout
    rows = list(csv.reader((tmp_path / "z.csv").read_text().splitlines()))
    assert rows[0] == ["index", "label", "z0", "z1"] and len(rows) == 2001
    refused = pyro_vae("embed", str(runs / "vae"), "--out", "z.txt", cwd=tmp_path)
    assert refused.returncode == 2 and "write embeddings to a .npy or .csv file" in refused.stderr


class RecordingWriter:
    """Stands in for torch's SummaryWriter: records what would be logged."""

    instances = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.figures, self.closed = log_dir, [], [], False
        RecordingWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_figure(self, tag, figure, step, close=True):
        self.figures.append((tag, step, len(figure.axes)))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_logs_every_epoch_metric_and_the_training_figures(tmp_path, monkeypatch):
    fake = type(sys)("torch.utils.tensorboard")
    fake.SummaryWriter = RecordingWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    fit_config(tiny_config(epochs=2), tmp_path / "run", progress=False, plot_every=2, tensorboard=True)
    writer = RecordingWriter.instances[-1]
    assert writer.log_dir == str(tmp_path / "run" / "tensorboard") and writer.closed
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        for split in ("train", "valid"):
            for name, value in record[split].items():
                assert (f"{split}/{name}", value, record["epoch"]) in writer.scalars
    assert [(tag, step) for tag, step, _ in writer.figures] == [("reconstructions", 2), ("samples", 2),
                                                                ("reconstructions", 2), ("samples", 2)]


def test_tensorboard_without_the_package_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"--tensorboard needs the tensorboard package; install it with pip install"):
        fit_config(tiny_config(), tmp_path / "run", progress=False, tensorboard=True)
    assert not (tmp_path / "run").exists()

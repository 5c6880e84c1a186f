"""Semi-supervised M2: exact enumeration, the labelled subset, batches, and learning on the bundled sample."""

import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO, config_enumerate
from torch.nn import functional as F

from pyro_vae import build_model, DataConfig, ModelConfig, RunConfig, TrainConfig, estimate_run, fit_config, load_dataset
from pyro_vae.runs.config import ConfigError
from pyro_vae.inference.evaluate import class_elbos, generative_accuracy
from pyro_vae.inference.enumeration import enumerated_negative_elbo
from pyro_vae.training.plan import training_plan
from pyro_vae.models import SSVAE
from pyro_vae.viz.plots import class_conditional_grid
from pyro_vae.models.semisupervised import SemiSupervisedBatches, SemiSupervisedLoss, balanced_labelled_indices

NUM_CLASSES = 10


def normal_log_density(z, loc, scale):
    return (-0.5 * ((z - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


def labelled_elbo_by_hand(model, x, label, z):
    """log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y) for every image, class ``label``, style ``z``."""
    one_hot = F.one_hot(torch.full((len(x),), label), NUM_CLASSES).float()
    log_likelihood = -F.binary_cross_entropy_with_logits(model.decoder(torch.cat([z, one_hot], -1)), x,
                                                         reduction="none").sum(-1)
    loc, scale = model.encoder(torch.cat([x, one_hot], -1))
    log_prior = normal_log_density(z, torch.zeros_like(z), torch.ones_like(z)) - math.log(NUM_CLASSES)
    return log_likelihood + log_prior - normal_log_density(z, loc, scale)


@pytest.fixture
def tiny_model():
    return SSVAE(x_dim=784, z_dim=3, hidden_dim=16)


def test_enumerated_loss_equals_the_hand_summed_expectation_over_classes(tiny_model, binary_batch):
    loss_module = SemiSupervisedLoss(tiny_model, aux_weight=1.0)
    pyro.set_rng_seed(11)
    loss = loss_module.unsupervised_loss(binary_batch)

    pyro.set_rng_seed(11)
    enumerated = poutine.enum(config_enumerate(tiny_model.guide, "parallel"), first_available_dim=-2)
    z = poutine.trace(enumerated).get_trace(binary_batch).nodes["z"]["value"]
    assert z.shape == (NUM_CLASSES, len(binary_batch), 3)  # one style per enumerated class
    log_q_y = torch.log_softmax(tiny_model.classifier(binary_batch), -1)
    by_class = torch.stack([labelled_elbo_by_hand(tiny_model, binary_batch, c, z[c]) for c in range(NUM_CLASSES)], -1)
    elbo = (log_q_y.exp() * (by_class - log_q_y)).sum()
    assert loss.item() == pytest.approx(-elbo.item(), rel=1e-5)

    # the classifier learns from unlabelled images through q(y|x): same gradient as the hand-summed loss
    classifier_grads = torch.autograd.grad(loss, list(tiny_model.classifier.parameters()), retain_graph=True)
    hand_grads = torch.autograd.grad(-elbo, list(tiny_model.classifier.parameters()))
    assert classifier_grads[0].abs().sum() > 0
    for pyro_grad, hand_grad in zip(classifier_grads, hand_grads):  # float32 sums of ~10^4 nats
        assert (pyro_grad - hand_grad).abs().max() <= 2e-4 * hand_grad.abs().max()


def test_labelled_and_classifier_losses_equal_their_formulas(tiny_model, binary_batch):
    labels = torch.arange(len(binary_batch)) % NUM_CLASSES
    loss_module = SemiSupervisedLoss(tiny_model, aux_weight=7.0)
    pyro.set_rng_seed(4)
    supervised = loss_module.supervised_loss(binary_batch, labels)
    pyro.set_rng_seed(4)
    z = poutine.trace(tiny_model.guide).get_trace(binary_batch, labels).nodes["z"]["value"]
    one_hot = F.one_hot(labels, NUM_CLASSES).float()
    log_likelihood = -F.binary_cross_entropy_with_logits(tiny_model.decoder(torch.cat([z, one_hot], -1)),
                                                         binary_batch, reduction="sum")
    loc, scale = tiny_model.encoder(torch.cat([binary_batch, one_hot], -1))
    log_prior = normal_log_density(z, 0 * z, 1 + 0 * z).sum() - len(z) * math.log(NUM_CLASSES)
    expected = -(log_likelihood + log_prior - normal_log_density(z, loc, scale).sum())
    assert supervised.item() == pytest.approx(expected.item(), rel=1e-5)

    cross_entropy = F.cross_entropy(tiny_model.classifier(binary_batch), labels, reduction="sum")
    assert loss_module.classification_loss(binary_batch, labels).item() == pytest.approx(7.0 * cross_entropy.item(),
                                                                                        rel=1e-5)



def test_class_elbos_score_each_label_and_tell_apart_classes_the_decoder_draws(binary_batch):
    torch.manual_seed(0)
    model = SSVAE(x_dim=784, z_dim=3, hidden_dim=16)
    templates = (torch.rand(NUM_CLASSES, 784) < 0.3).float()
    with torch.no_grad():  # q(z|x, y) = p(z) up to MIN_SCALE; p(x|y, z) ~ Bernoulli(logits 4 (2 template_y - 1))
        model.encoder.loc.weight.zero_(), model.encoder.loc.bias.zero_(), model.encoder.scale.weight.zero_()
        model.encoder.scale.bias.fill_(math.log(math.e - 1))
        model.decoder.hidden.weight.zero_()
        model.decoder.hidden.weight[:NUM_CLASSES, 3:] = 10 * torch.eye(NUM_CLASSES)  # hidden unit c on for y = c
        model.decoder.hidden.bias.fill_(-5.0)
        model.decoder.logits.weight.zero_()
        model.decoder.logits.weight[:, :NUM_CLASSES] = 4 * (2 * templates.T - 1) / F.softplus(torch.tensor(5.0))
        model.decoder.logits.bias.zero_()
    logits = model.decoder.logits(F.softplus(model.decoder.hidden(torch.cat(
        [torch.zeros(NUM_CLASSES, 3), torch.eye(NUM_CLASSES)], -1))))
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    x = templates[labels].clone()
    x[:, :40] = binary_batch[: len(labels), :40]  # not exactly the templates
    expected = torch.stack([-F.binary_cross_entropy_with_logits(logits[c].expand_as(x), x, reduction="none").sum(-1)
                            for c in range(NUM_CLASSES)], -1) - math.log(NUM_CLASSES)
    torch.testing.assert_close(class_elbos(model, x, num_particles=4), expected, rtol=0, atol=1e-3)
    assert generative_accuracy(model, x, labels, batch_size=3) == 1.0
    with torch.no_grad():
        model.decoder.hidden.weight[:, 3:] = 0.0  # the decoder now ignores y: every class scores the same
    assert (class_elbos(model, x).std(-1) < 1e-3).all()
    with pytest.raises(ValueError, match="has no num_classes attribute"):
        class_elbos(build_model("vae", z_dim=2, hidden_dim=8), x)

@pytest.fixture(scope="module")
def sample_dataset():
    return load_dataset("mnist-sample", download=False, valid_size=1000)


def test_labelled_subset_is_class_balanced_seeded_and_disjoint_from_validation(sample_dataset):
    labels = sample_dataset.train_labels
    chosen = balanced_labelled_indices(labels, 100, NUM_CLASSES, seed=3)
    assert len(chosen) == len(set(chosen.tolist())) == 100
    assert torch.bincount(labels[chosen], minlength=NUM_CLASSES).tolist() == [10] * NUM_CLASSES
    assert torch.equal(chosen, balanced_labelled_indices(labels, 100, NUM_CLASSES, seed=3))
    assert not torch.equal(chosen, balanced_labelled_indices(labels, 100, NUM_CLASSES, seed=4))
    labelled_images, valid_images = sample_dataset.train_images[chosen], sample_dataset.valid_images
    same = (labelled_images[:, None, :] == valid_images[None, :, :]).all(-1)
    assert not same.any()


def test_labelled_subset_refuses_uneven_or_too_many_labels(sample_dataset):
    with pytest.raises(ConfigError, match="does not split evenly into 10 classes"):
        balanced_labelled_indices(sample_dataset.train_labels, 105, NUM_CLASSES, seed=0)
    with pytest.raises(ConfigError, match="training split has"):
        balanced_labelled_indices(sample_dataset.train_labels, 10_000, NUM_CLASSES, seed=0)


def test_batches_cover_the_unlabelled_images_once_per_epoch_and_reproducibly(sample_dataset):
    images, labels = sample_dataset.train_images[:1000], sample_dataset.train_labels[:1000]
    chosen = balanced_labelled_indices(labels, 50, NUM_CLASSES, seed=0)
    batches = SemiSupervisedBatches(images, labels, chosen, batch_size=128, binarize="threshold", seed=0)
    epoch = list(batches.epoch(1))
    assert len(epoch) == len(batches) == math.ceil(950 / 128)
    unlabelled = torch.cat([x_u for x_u, _, _ in epoch])
    assert unlabelled.shape == (950, 784)
    expected = (images > 0.5).float()[torch.ones(1000, dtype=torch.bool).index_fill_(0, chosen, False)]
    assert torch.equal(unlabelled.sum(0), expected.sum(0))  # the same images, in a shuffled order
    for x_u, x_l, y_l in epoch:
        assert x_l.shape == (50, 784) and y_l.shape == (50,)
        assert torch.bincount(y_l, minlength=NUM_CLASSES).tolist() == [5] * NUM_CLASSES  # the whole subset
    again = list(batches.epoch(1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch, again))
    assert not torch.equal(epoch[0][0], next(iter(batches.epoch(2)))[0])



def test_interleaved_epochs_pass_over_the_labelled_subset_once_in_steps_of_their_own(sample_dataset):
    images, labels = sample_dataset.train_images[:1000], sample_dataset.train_labels[:1000]
    chosen = balanced_labelled_indices(labels, 50, NUM_CLASSES, seed=0)
    batches = SemiSupervisedBatches(images, labels, chosen, batch_size=20, binarize="threshold", seed=0,
                                    interleave=True)
    epoch = list(batches.epoch(1))
    kinds = ["l" if x_u is None else "u" for x_u, _, _ in epoch]
    assert len(epoch) == len(batches) == 48 + 3  # 950 unlabelled in batches of 20, 50 labelled in 3
    assert [i for i, kind in enumerate(kinds) if kind == "l"] == [8, 25, 42]  # spread evenly
    assert all((x_l is None) == (kind == "u") for kind, (_, x_l, _) in zip(kinds, epoch))
    labelled = torch.cat([x_l for _, x_l, _ in epoch if x_l is not None])
    assert torch.equal(labelled.sum(0), (images[chosen] > 0.5).float().sum(0))  # each labelled image once
    drawn_labels = torch.cat([y for _, _, y in epoch if y is not None])
    assert drawn_labels.sort().values.tolist() == labels[chosen].sort().values.tolist()
    assert torch.cat([x for x, _, _ in epoch if x is not None]).shape == (950, 784)


def test_a_step_of_one_kind_has_only_its_own_terms(sample_dataset):
    torch.manual_seed(0)
    model = SSVAE(z_dim=8, hidden_dim=64, labels=100, labelled_weighting="interleave")
    plan = training_plan(model, ssvae_config().train, sample_dataset, "dynamic")
    loss, epoch = plan.loss_module, list(plan.batches.epoch(1))
    assert len(epoch) == len(plan.batches) == math.ceil((len(sample_dataset.train_images) - 100) / 100) + 1
    x_u = next(x for x, _, _ in epoch if x is not None)
    _, x_l, y_l = next(step for step in epoch if step[0] is None)
    pyro.set_rng_seed(2)
    unlabelled_step = loss(x_u, None, None)
    statistics = loss.last_statistics()
    pyro.set_rng_seed(2)
    assert unlabelled_step.item() == pytest.approx(loss.unsupervised_loss(x_u).item(), rel=1e-6)
    assert statistics[[2, 4]].tolist() == [100.0, 0.0] and loss.num_images(x_u, None, None) == 100
    pyro.set_rng_seed(3)
    labelled_step = loss(None, x_l, y_l)
    statistics = loss.last_statistics()
    pyro.set_rng_seed(3)
    expected = loss.supervised_loss(x_l, y_l) + loss.classification_loss(x_l, y_l)
    assert labelled_step.item() == pytest.approx(expected.item(), rel=1e-6)  # full weight: scale 1
    assert statistics[[1, 2, 4]].tolist() == [0.0, 0.0, 100.0] and loss.num_images(None, x_l, y_l) == 100

def ssvae_config(epochs=2):
    return RunConfig(
        data=DataConfig(dataset="mnist-sample", valid_size=1000, download=False),
        model=ModelConfig("ssvae", {"hidden_dim": 64, "z_dim": 8, "labels": 100}),
        train=TrainConfig(epochs=epochs, batch_size=100, device="cpu"),
    )


@pytest.fixture(scope="module")
def trained_ssvae(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ssvae")
    return run_dir, fit_config(ssvae_config(), run_dir, progress=False)


def test_accuracy_rises_far_above_chance_in_a_short_run(trained_ssvae):
    run_dir, result = trained_ssvae
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for record in metrics:
        assert set(record["train"]) >= {"unsupervised", "supervised", "classification", "loss"}
        assert 0 <= record["valid"]["accuracy"] <= 1 and 0 <= record["test"]["accuracy"] <= 1
        assert record["valid"]["elbo"] < 0
    assert result.best_epoch == max(metrics, key=lambda m: m["valid"]["accuracy"])["epoch"]
    assert result.test["accuracy"] > 0.5  # chance is 0.1


def test_estimate_run_scores_log_p_x_with_the_label_summed_out(trained_ssvae):
    run_dir, result = trained_ssvae
    summary, per_datapoint = estimate_run(run_dir, "test", num_samples=50, num_particles=2, progress=False,
                                          device="cpu")
    assert summary["accuracy"] == pytest.approx(result.test["accuracy"])
    assert per_datapoint["log_likelihood"].shape == (2000,)
    assert summary["log_likelihood"] > summary["elbo"]  # IS with K=50 tightens the one-sample bound


def test_class_conditional_grid_has_a_row_per_class(trained_ssvae):
    run_dir, _ = trained_ssvae
    from pyro_vae import load_run

    figure = class_conditional_grid(load_run(run_dir).model, num_columns=6)
    (axes,) = figure.axes
    canvas = axes.get_images()[0].get_array()
    assert canvas.shape == (10 * 28, 6 * 28)
    assert [label.get_text() for label in axes.get_yticklabels()] == [str(c) for c in range(10)]


@pytest.mark.parametrize(
    "args, settings, message",
    [
        ({"labels": None}, {}, "SSVAE trains semi-supervised and needs labels=N"),
        ({"labels": 100}, {"beta": 2.0}, "SSVAE supports only beta=1.0"),
        ({"labels": 100}, {"objective": "iwae"}, "SSVAE trains on the ELBO with the labels summed out: objective elbo "
                                                  "or meanfield"),
        ({"labels": 100, "labelled_weighting": "epoch"}, {}, "labelled_weighting 'epoch' is not one of: pass, batch"),
        ({"labels": 100, "aux_weight": -1.0}, {}, "aux_weight must be >= 0"),
    ],
)
def test_semisupervised_settings_are_validated(sample_dataset, args, settings, message):
    with pytest.raises(ConfigError, match=message):
        model = build_model("ssvae", z_dim=8, hidden_dim=16, **args)
        training_plan(model, TrainConfig(**settings), sample_dataset, "dynamic")


def test_labelled_weighting_sets_the_weight_of_a_steps_labelled_terms(sample_dataset):
    losses = {}
    for weighting in ("pass", "batch"):
        torch.manual_seed(0)
        model = SSVAE(z_dim=8, hidden_dim=64, labels=100, labelled_weighting=weighting)
        plan = training_plan(model, ssvae_config().train, sample_dataset, "dynamic")
        loss, batches = plan.loss_module, plan.batches
        x_u, x_l, y_l = next(iter(batches.epoch(1)))
        pyro.set_rng_seed(1)
        losses[weighting] = loss(x_u, x_l, y_l).item()
    pyro.set_rng_seed(1)  # the same draws of z, in the order forward takes them
    unsupervised = loss.unsupervised_loss(x_u).item()
    labelled = (loss.supervised_loss(x_l, y_l) + loss.classification_loss(x_l, y_l)).item()
    # pass: an epoch's labelled terms add up to one pass over the 100 labelled images, 100 of them per step
    assert batches.labelled_scale == pytest.approx(100 / (len(batches) * 100))
    assert losses["pass"] == pytest.approx(unsupervised + batches.labelled_scale * labelled, rel=1e-6)
    assert losses["batch"] == pytest.approx(unsupervised + labelled, rel=1e-6)


def test_meanfield_objective_takes_the_kl_of_z_in_closed_form_in_both_elbos(sample_dataset):
    torch.manual_seed(0)
    model = SSVAE(z_dim=8, hidden_dim=64, labels=100)
    loss = training_plan(model, TrainConfig(objective="meanfield"), sample_dataset, "dynamic").loss_module
    x, y = sample_dataset.train_images[:32].bernoulli(), sample_dataset.train_labels[:32]
    pyro.set_rng_seed(1)
    expected = TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x, y)
    pyro.set_rng_seed(1)
    assert loss.supervised_loss(x, y).item() == pytest.approx(expected.item(), rel=1e-6)
    pyro.set_rng_seed(1)
    expected = enumerated_negative_elbo(model.model, model.guide, x, analytic_kl=True)
    pyro.set_rng_seed(1)
    assert loss.unsupervised_loss(x).item() == pytest.approx(expected.item(), rel=1e-6)


def test_configs_of_earlier_versions_read_as_model_arguments():
    earlier = {"data": {"dataset": "mnist-sample", "labels": 100},
               "model": {"model": "ssvae", "arch": "mlp", "hidden_dim": 64, "z_dim": 8, "likelihood": "bernoulli",
                         "gaussian_scale": None},
               "train": {"aux_weight": 10.0, "epochs": 3}}
    config = RunConfig.from_dict(earlier)  # written before --labelled-weighting existed: it trained as "pass"
    assert config.model == ModelConfig("ssvae", {"x_dim": 784, "z_dim": 8, "hidden_dim": 64, "labels": 100,
                                                 "aux_weight": 10.0, "labelled_weighting": "pass"})
    assert config.data.shape == [1, 28, 28] and config.train.epochs == 3
    vae = RunConfig.from_dict({"model": {"model": "vae", "arch": "conv", "hidden_dim": 64, "z_dim": 8,
                                         "likelihood": "gaussian", "gaussian_scale": 0.1}})
    assert vae.model.args == {"x_dim": 784, "z_dim": 8, "hidden_dim": 64, "arch": "conv", "likelihood": "gaussian",
                              "gaussian_scale": 0.1}

"""Probes of latent means: nearest-neighbour and logistic accuracies, exact on constructed features."""

import torch
from torch import nn

from pyro_vae.applications.probes import logistic_regression_accuracy, nearest_neighbour_accuracy, probe_latents
from pyro_vae.data.datasets import Dataset


def test_nearest_neighbour_accuracy_counts_the_test_rows_whose_nearest_training_row_shares_their_label():
    train, train_labels = torch.tensor([[0.0], [10.0]]), torch.tensor([0, 1])
    test, test_labels = torch.tensor([[1.0], [9.0], [6.0]]), torch.tensor([0, 1, 0])  # 6 is nearer 10
    assert nearest_neighbour_accuracy(train, train_labels, test, test_labels, chunk_size=2) == 2 / 3


def test_logistic_regression_separates_separable_classes_and_nothing_else():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(200, 2, generator=generator, dtype=torch.float64)
    labels = (points[:, 0] > 0).long() + 2 * (points[:, 1] > 0).long()  # four quadrants
    assert logistic_regression_accuracy(points, labels, points, labels, num_classes=4) == 1.0
    assert logistic_regression_accuracy(points, labels, points, (labels + 1) % 4, num_classes=4) == 0.0


class FirstTwoValues(nn.Module):
    """A 'model' whose latent mean is an image's first two values, plus a constant (inactive) unit."""

    def encode(self, x, y=None):
        return torch.cat([x[:, :2], torch.ones(len(x), 1)], -1)


def test_probe_reads_the_active_units_of_the_latent_means():
    generator = torch.Generator().manual_seed(0)

    def split(count):
        labels = torch.arange(count) % 4
        images = torch.rand(count, 5, generator=generator)
        images[:, 0], images[:, 1] = labels % 2 * 10.0, labels // 2 * 10.0  # the class, in the first two values
        return images, labels

    (train, train_labels), (valid, valid_labels) = split(400), split(100)
    dataset = Dataset("quadrants", "generated", train, train_labels, valid, valid_labels, shape=(5,))
    result = probe_latents(FirstTwoValues(), dataset, "none", num_labels=8)
    assert result.active_units == 2  # the constant unit is left out
    assert (result.nearest_neighbour_few_labels, result.nearest_neighbour_all_labels,
            result.logistic_all_labels) == (1.0, 1.0, 1.0)

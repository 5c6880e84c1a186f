"""Each data format is read from small generated files; each bad file gives a clear error."""

import logging

import numpy as np
import pytest
import torch

from conftest import write_amat, write_fake_mnist, write_idx
from pyro_vae.data.batches import EpochBatches, fixed_binarization, resolve_binarization
from pyro_vae.runs.config import DataConfig
from pyro_vae.data.datasets import as_dataset, DatasetUnavailable, load_dataset
from pyro_vae.data.formats import DataFileError, read_amat, read_idx
from pyro_vae.data.resolve import load_run_data


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reads_a_torchvision_root(tmp_path, compress):
    arrays = write_fake_mnist(tmp_path, num_train=60, num_test=20, compress=compress)
    dataset = load_dataset("mnist", tmp_path, valid_size=10, seed=3, download=False)
    assert dataset.train_images.shape == (50, 784) and dataset.valid_images.shape == (10, 784)
    assert dataset.test_images.shape == (20, 784)
    torch.testing.assert_close(dataset.test_images, torch.tensor(arrays["t10k"][0].reshape(20, 784) / 255.0,
                                                                 dtype=torch.float32))
    assert dataset.test_labels.tolist() == arrays["t10k"][1].tolist()
    # train and valid are a seeded partition of the 60 training images, labels kept with their images
    together = torch.cat([dataset.train_images, dataset.valid_images]) * 255
    original = torch.tensor(arrays["train"][0].reshape(60, 784), dtype=torch.float32)
    assert sorted(map(tuple, together.round().tolist())) == sorted(map(tuple, original.tolist()))
    again = load_dataset("mnist", tmp_path, valid_size=10, seed=3, download=False)
    assert torch.equal(again.valid_images, dataset.valid_images)


def test_default_validation_is_one_sixth_of_train(tmp_path):
    write_fake_mnist(tmp_path, num_train=60)
    assert len(load_dataset("mnist", tmp_path, download=False).valid_images) == 10


def test_read_idx_refuses_truncated_and_foreign_files(tmp_path):
    path = write_idx(tmp_path / "images", np.zeros((3, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataFileError, match="truncated or corrupt"):
        read_idx(path)
    (tmp_path / "foreign").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataFileError, match="not an idx file"):
        read_idx(tmp_path / "foreign")
    with pytest.raises(DataFileError, match="file not found"):
        read_idx(tmp_path / "missing")
    (tmp_path / "floats").write_bytes(bytes([0, 0, 0x0D, 1]) + (2).to_bytes(4, "big") + bytes(8))
    with pytest.raises(DataFileError, match=r"idx type code 0x0d; only unsigned bytes \(0x08\)"):
        read_idx(tmp_path / "floats")


def test_missing_mnist_names_the_places_looked_and_the_fix(tmp_path):
    with pytest.raises(DatasetUnavailable, match="--data-dir"):
        load_dataset("mnist", tmp_path, download=False)


def test_mismatched_image_and_label_counts_are_refused(tmp_path):
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))
    with pytest.raises(DataFileError, match="labels for 20 images"):
        load_dataset("mnist", tmp_path, download=False)


def test_labels_out_of_range_are_refused(tmp_path):
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.full(20, 12, dtype=np.uint8))
    with pytest.raises(DataFileError, match="mnist test: labels outside 0..9"):
        load_dataset("mnist", tmp_path, download=False)


def test_wrong_image_size_is_refused(tmp_path):
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", np.zeros((20, 32, 32), dtype=np.uint8))
    with pytest.raises(DataFileError, match="expected 28x28"):
        load_dataset("mnist", tmp_path, download=False)


def amat_files(directory, counts=(30, 10, 12), seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "valid", "test"), counts):
        arrays[split] = rng.integers(0, 2, size=(count, 784))
        write_amat(directory / f"binarized_mnist_{split}.amat", arrays[split])
    return arrays


def test_binarized_mnist_keeps_its_own_splits(tmp_path):
    arrays = amat_files(tmp_path)
    dataset = load_dataset("binarized-mnist", tmp_path, download=False)
    for split in ("train", "valid", "test"):
        images, labels = dataset.split(split)
        assert labels is None
        assert torch.equal(images, torch.tensor(arrays[split], dtype=torch.float32))
    assert dataset.is_binary


def test_amat_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "short.amat"
    path.write_text("0 1 0\n")
    with pytest.raises(DataFileError, match=r"short.amat, line 1: 3 values, expected 784"):
        read_amat(path)
    rows = np.zeros((3, 784), dtype=int)
    rows[2, 5] = 2
    with pytest.raises(DataFileError, match=r"line 3: values other than 0 and 1"):
        read_amat(write_amat(tmp_path / "two.amat", rows))
    (tmp_path / "grey.amat").write_text(" ".join(["0.5"] * 784) + "\n")
    with pytest.raises(DataFileError, match="values other than 0 and 1"):
        read_amat(tmp_path / "grey.amat")
    with pytest.raises(DatasetUnavailable, match="binarized_mnist_train.amat"):
        load_dataset("binarized-mnist", tmp_path / "empty", download=False)


def test_amat_accepts_decimal_zero_one(tmp_path):
    (tmp_path / "decimal.amat").write_text(" ".join(["1.0", "0.0"] * 392) + "\n")
    assert read_amat(tmp_path / "decimal.amat").tolist() == [[1.0, 0.0] * 392]


def test_bundled_sample_is_real_labelled_mnist():
    dataset = load_dataset("mnist-sample", valid_size=1000)
    assert (len(dataset.train_images), len(dataset.valid_images), len(dataset.test_images)) == (7000, 1000, 2000)
    counts = torch.bincount(torch.cat([dataset.train_labels, dataset.valid_labels, dataset.test_labels]))
    assert counts.sum() == 10_000 and counts.min() > 800  # every digit well represented
    assert not dataset.is_binary and dataset.test_images.min() == 0 and dataset.test_images.max() == 1
    assert 0.1 < dataset.test_images.mean() < 0.15  # MNIST's mean intensity is about 0.13


def test_auto_dataset_falls_back_to_the_sample_with_a_notice(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        dataset, resolved = load_run_data(DataConfig(data_dir=str(tmp_path), download=False), 0, "cpu")
    assert dataset.name == resolved.dataset == "mnist-sample"
    assert resolved.valid_size == len(dataset.valid_images) and resolved.shape == [1, 28, 28]
    assert "using the bundled mnist-sample" in caplog.text


def test_auto_dataset_prefers_mnist_when_present(tmp_path):
    write_fake_mnist(tmp_path)
    dataset, resolved = load_run_data(DataConfig(data_dir=str(tmp_path), download=False), 0, "cpu")
    assert resolved.dataset == "mnist" and len(dataset.test_images) == 20


def test_explicit_dataset_never_falls_back(tmp_path):
    with pytest.raises(DatasetUnavailable):
        load_run_data(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False), 0, "cpu")


def test_bernoulli_refuses_grey_data_without_binarization():
    assert resolve_binarization("auto", True, data_is_binary=False, data_in_unit_interval=True) == "dynamic"
    assert resolve_binarization("auto", True, data_is_binary=True, data_in_unit_interval=True) == "none"
    assert resolve_binarization("auto", False, data_is_binary=False, data_in_unit_interval=True) == "none"
    with pytest.raises(DataFileError, match="--binarize dynamic"):
        resolve_binarization("none", True, data_is_binary=False, data_in_unit_interval=True)


def test_data_outside_the_unit_interval_is_never_binarized():
    assert resolve_binarization("auto", True, data_is_binary=False, data_in_unit_interval=False) == "none"
    with pytest.raises(DataFileError, match="values outside"):
        resolve_binarization("dynamic", True, data_is_binary=False, data_in_unit_interval=False)


def test_any_data_becomes_a_dataset_with_its_shape_and_a_seeded_validation_split():
    points = torch.randn(60, 2)
    dataset = as_dataset(points, valid_size=12, seed=3)
    assert dataset.shape == (2,) and dataset.image_shape is None and dataset.splits == ("train", "valid")
    assert (len(dataset.train_images), len(dataset.valid_images)) == (48, 12)
    assert torch.equal(torch.cat([dataset.train_images, dataset.valid_images]).sort(0).values, points.sort(0).values)
    again = as_dataset(points, valid_size=12, seed=3)
    assert torch.equal(again.valid_images, dataset.valid_images)

    images = torch.rand(30, 28, 28)
    labels = torch.arange(30) % 10
    pairs = torch.utils.data.TensorDataset(images, labels)
    from_pairs = as_dataset(pairs, valid=(images[:5], labels[:5]), test=torch.utils.data.DataLoader(pairs, 7))
    assert from_pairs.shape == (28, 28) and from_pairs.image_shape == (28, 28)
    assert from_pairs.train_images.shape == (30, 784) and torch.equal(from_pairs.train_labels, labels)
    assert torch.equal(from_pairs.test_images, images.reshape(30, 784)) and from_pairs.splits[-1] == "test"


@pytest.mark.parametrize("data, message", [
    ([1, 2, 3], "expected a tensor, a pair"),
    (torch.tensor([[0.0, float("nan")]] * 10), "NaN or infinite"),
    ((torch.rand(10, 3), torch.rand(10)), "labels must be one integer per datapoint"),
    (torch.rand(10), "expected datapoints along the first dimension"),
])
def test_bad_data_is_refused_with_the_problem_named(data, message):
    with pytest.raises(ValueError, match=message):
        as_dataset(data)


def test_dynamic_binarization_redraws_each_epoch_reproducibly():
    images = torch.rand(50, 784)
    batches = EpochBatches(images, None, batch_size=50, binarize="dynamic", seed=4)
    first, second = next(batches.epoch(1))[0], next(batches.epoch(2))[0]
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    assert torch.equal(first, next(EpochBatches(images, None, 50, "dynamic", seed=4).epoch(1))[0])
    # pixel means follow the grey levels
    many = torch.stack([next(batches.epoch(e))[0].sum(0) for e in range(200)])
    assert torch.allclose(many.sum(0) / (200 * 50), images.mean(0), atol=0.05)


def test_static_and_threshold_binarizations_are_fixed():
    images = torch.rand(40, 784)
    static = EpochBatches(images, None, batch_size=40, binarize="static", seed=1)
    assert torch.equal(static.images, fixed_binarization(images, "static", 1))
    epoch_one = next(static.epoch(1))[0]
    epoch_two = next(static.epoch(2))[0]
    assert torch.equal(epoch_one.sum(), epoch_two.sum())  # same images, only the order changes
    assert torch.equal(fixed_binarization(images, "threshold", 0), (images > 0.5).float())


def test_epoch_batches_cover_every_image_once_with_labels_aligned():
    images = torch.arange(25, dtype=torch.float32).unsqueeze(1).repeat(1, 784) / 25
    labels = torch.arange(25)
    batches = EpochBatches(images, labels, batch_size=8, binarize="none", seed=0)
    seen = list(batches.epoch(3))
    assert len(seen) == len(batches) == 4 and [len(x) for x, _ in seen] == [8, 8, 8, 1]
    assert sorted(torch.cat([y for _, y in seen]).tolist()) == list(range(25))
    for x, y in seen:
        assert torch.equal(x[:, 0], images[y, 0])


def test_a_run_reloads_the_validation_split_it_was_carved_with():
    from pyro_vae.runs.config import RunConfig, TrainConfig
    from pyro_vae.runs.run_dir import _run_data

    dataset = load_dataset("mnist-sample", valid_size=300, seed=5)
    assert dataset.valid_seed == 5 and as_dataset(torch.rand(12, 2), valid_size=3, seed=2).valid_seed == 2
    config = RunConfig(data=DataConfig(dataset="mnist-sample", valid_size=300, valid_seed=5), train=TrainConfig(seed=0))
    assert torch.equal(_run_data(config, None, "cpu").valid_images, dataset.valid_images)

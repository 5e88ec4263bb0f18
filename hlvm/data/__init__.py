"""Data: offline datasets as :class:`DataSplit` tensors (:mod:`.datasets`), the files they are
read from — MNIST/Fashion-MNIST IDX files (:mod:`.mnist`) and CIFAR-10 batches (:mod:`.cifar`),
MD5-checked and never downloaded — and the cache of decoded arrays (:mod:`.cache`)."""

from .datasets import (MNIST_TEST_SEED, SPLIT_SEED, SPLITS, VALIDATION_SEED, DataSplit, batches, default_binarization,
                       digits, five_clusters, gaussian, load_dataset, mnist, mnist5k, ppca, validation_split)
from ..limits import DATASETS

__all__ = ["DataSplit", "load_dataset", "default_binarization", "batches", "DATASETS", "MNIST_TEST_SEED", "SPLIT_SEED",
           "VALIDATION_SEED", "SPLITS", "validation_split", "mnist", "mnist5k", "digits", "gaussian", "ppca", "five_clusters"]

"""Datasets: a registry of presets, preparing them once, loading splits into memory, class-balanced subsets and
validation splits."""

from smallvit.data.datasets import (
    DATASETS,
    DatasetInfo,
    ImageDataset,
    data_root,
    get_dataset_info,
    load_dataset,
    prepare_dataset,
)
from smallvit.data.subset import split_validation, stratified_subset

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "ImageDataset",
    "data_root",
    "get_dataset_info",
    "load_dataset",
    "prepare_dataset",
    "split_validation",
    "stratified_subset",
]

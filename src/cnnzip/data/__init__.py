"""Datasets for cnnzip: CIFAR (pickle layout), image-folder trees and archives, digits; splits; batching.

Every loader returns a `Dataset` of uint8 `Split`s; `Loader` turns a split into normalised float batches.
"""

from cnnzip.data._types import Dataset, Split
from cnnzip.data.cifar import load_cifar
from cnnzip.data.digits import load_digits
from cnnzip.data.folder import default_cache_dir, load_image_folder
from cnnzip.data.loader import Loader, crop_flip, normalize, random_crop_flip, sample_crop_flip
from cnnzip.data.spec import load_dataset
from cnnzip.data.split import train_val_split

__all__ = [
    "Dataset",
    "Loader",
    "Split",
    "crop_flip",
    "default_cache_dir",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "normalize",
    "random_crop_flip",
    "sample_crop_flip",
    "train_val_split",
]

"""Datasets as uint8 tensors ``(N, C, H, W)`` that live on the training device.

The embedded dataset is scikit-learn's bundled ``load_digits`` (1,797 real 8x8 digits, upsampled
to 16x16 RGB, a fixed stratified 80/20 split). CIFAR-10/100 and STL-10 come through
``torchvision.datasets``, downloaded to ``data_root()``: ``$DESUPCON_DATA``, by default ``data/`` in the
output home (``$DESUPCON_HOME``, by default the repository root), whatever the working directory.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}
DIGITS_SIZE = 16


class DatasetUnavailableError(RuntimeError):
    """The dataset is not on disk and could not be downloaded."""


@dataclass
class ImageDataset:
    """Images as uint8 ``(N, C, H, W)``, integer labels ``(N,)`` and normalisation constants."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: labels {tuple(self.labels.shape)} do not match "
                             f"{self.images.shape[0]} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> "ImageDataset":
        return ImageDataset(self.name, self.images.to(device), self.labels.to(device), self.num_classes,
                            self.mean, self.std)


def data_root() -> Path:
    """Where torchvision datasets are read from and downloaded to; the same place from the CLI, a
    notebook (whose working directory is ``notebooks/``) or any other working directory.

    ``$DESUPCON_DATA`` if set: an absolute path (or ``~/...``) as it is, a relative one resolved against
    the output home, so ``DESUPCON_DATA=datasets`` means ``$DESUPCON_HOME/datasets``. Otherwise
    ``$DESUPCON_HOME/data``, ``$DESUPCON_HOME`` defaulting to the repository root
    (``desupcon.store.output_root()``).
    """
    from .store import output_root  # here, not at the top: store must not depend on data's import order

    home = Path(output_root())
    value = os.environ.get("DESUPCON_DATA")
    if not value:
        return home / "data"
    path = Path(value).expanduser()
    return path if path.is_absolute() else home / path


def load_dataset(name: str, train: bool) -> ImageDataset:
    """Load the ``train`` or test split of a dataset of ``DATASETS``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}': choose one of {list(DATASETS)}")
    return DATASETS[name](train)


def load_splits(name: str, device="cpu") -> tuple[ImageDataset, ImageDataset]:
    """``(train, test)`` of ``name`` on ``device``."""
    return load_dataset(name, True).to(device), load_dataset(name, False).to(device)


def _digits(train: bool) -> ImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=DIGITS_SIZE, mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0,
                                           stratify=digits.target)
    train_pixels = images[torch.from_numpy(np.sort(train_idx))].float() / 255  # statistics of the train split
    mean, std = tuple(train_pixels.mean(dim=(0, 2, 3)).tolist()), tuple(train_pixels.std(dim=(0, 2, 3)).tolist())
    idx = torch.from_numpy(np.sort(train_idx if train else test_idx))
    return ImageDataset("digits", images[idx], labels[idx], 10, mean, std)


def _torchvision(name: str, train: bool) -> ImageDataset:
    from torchvision import datasets

    root = data_root()
    if name == "stl10":
        make = lambda download: datasets.STL10(str(root), split="train" if train else "test", download=download)
    else:
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        make = lambda download: cls(str(root), train=train, download=download)
    try:
        ds = make(False)
    except RuntimeError:
        try:
            ds = make(True)
        except Exception as err:
            raise DatasetUnavailableError(
                f"dataset '{name}' is not in {root.resolve()} and could not be downloaded ({type(err).__name__}: "
                f"{err}); put it there (or set DESUPCON_DATA to where it is), or use DESUPCON_PROFILE=smoke"
            ) from None
    if name == "stl10":
        images = torch.from_numpy(ds.data)  # (N, 3, 96, 96)
        labels = torch.from_numpy(ds.labels.astype(np.int64))
    else:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        labels = torch.tensor(ds.targets, dtype=torch.long)
    mean, std = CIFAR_MEAN_STD[name]
    return ImageDataset(name, images, labels, 10 if name in ("cifar10", "stl10") else 100, mean, std)


# name -> loader(train: bool) -> ImageDataset: the one list of valid dataset names
DATASETS = {"digits": _digits, **{name: functools.partial(_torchvision, name) for name in CIFAR_MEAN_STD}}


@dataclass
class Data:
    """Train and test splits of one dataset on the training device."""

    train: ImageDataset
    test: ImageDataset

    @classmethod
    def load(cls, name: str, device) -> "Data":
        return cls(*load_splits(name, device))

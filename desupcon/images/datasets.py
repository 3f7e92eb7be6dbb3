"""Datasets as uint8 images ``(N, C, H, W)`` with labels, kept on the training device or streamed to it.

The embedded dataset is scikit-learn's bundled ``load_digits`` (1,797 real 8x8 digits, upsampled
to 16x16 RGB, a fixed stratified 80/20 split). CIFAR-10/100 and STL-10 (splits train, test,
unlabeled) come through ``torchvision.datasets``, downloaded to ``data_root()``: ``$DESUPCON_DATA``, by
default ``data/`` in the output home (``$DESUPCON_HOME``, by default the repository root), whatever
the working directory. Your own images (``desupcon.images.sources``: a folder of images, a Hugging Face
dataset on disk) are decoded once into the prepared cache (``desupcon.images.prepared``) and read from there.

A run names its data with a ``DataSpec``: a dataset name alone (a distillation run's
``RunConfig.dataset``: a built-in, or a folder of ``data_root()`` read at ``OWN_DATA_SIZE``), or the
``DatasetName`` a MoCo-v3 config gives (its ``data`` section: source, split, evaluation source,
columns, side). ``Data.load`` returns the split it trains on, the labelled test split and, when the
evaluation reads another labelled train split, that one too.

Residency (``$DESUPCON_RESIDENCY``, default ``auto``): ``device`` keeps every split on the training
device; ``stream`` keeps the training split (and a separate labelled train split) in its prepared
file on the host, ``ImageDataset.gather`` reading each step's images ahead of the step
(``desupcon.images.stream``), and the test split, which the evaluation augments on the device, on the
device; ``auto`` picks ``device`` when all splits take at most ``AUTO_SHARE`` of the free memory of
the device (of the host for the CPU), and says so. Views are made from the same uint8 images
either way, so a run's result does not depend on its residency.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from desupcon.core import distributed as dist
from desupcon.core.errors import ConfigError, DatasetUnavailableError
from desupcon.core.paths import data_root
from desupcon.images.prepared import (Prepared, checksum, data_fingerprint, human_bytes, prepare, store_builtin,
                                      stored_builtin)
from desupcon.images.sources import BUILTIN_SIDES, BUILTIN_SPLITS, Source, resolve, split_parts, splits_of
from desupcon.images.stream import ArrayFile, Prefetcher

CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}
DIGITS_SIZE = 16
OWN_DATA_SIZE = 32  # the side your own images are read at when a run names them by dataset name alone
RESIDENCIES = ("auto", "device", "stream")
AUTO_SHARE = 0.5  # auto keeps the data on the device when it takes at most this share of the free memory
NOT_YOURS = ("cifar-10-batches-py", "cifar-100-python", "stl10_binary", "prepared")  # folders of data_root() that
# hold torchvision's downloads and the prepared cache, not datasets of your own


@dataclass
class ImageDataset:
    """Images as uint8 ``(N, C, H, W)``, integer labels ``(N,)`` (-1 = unlabelled) and normalisation constants.

    ``images`` is on the training device, or for ``stream`` residency a tensor over the memory map of
    ``file`` on the host (for slicing); ``labels`` are on the training device either way. Training
    reads images through ``gather``. ``fingerprint`` identifies the data (``Data.fingerprints``); None
    for a dataset made otherwise than by ``Data.load``.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    file: ArrayFile | None = None
    fingerprint: dict | None = None
    _prefetcher: Prefetcher | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: labels {tuple(self.labels.shape)} do not match "
                             f"{self.images.shape[0]} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def residency(self) -> str:
        return "device" if self.file is None else "stream"

    def to(self, device) -> "ImageDataset":
        """On ``device`` (a ``stream`` dataset moves its labels; its images stay in their file)."""
        images = self.images if self.file is not None else self.images.to(device)
        return ImageDataset(self.name, images, self.labels.to(device), self.num_classes, self.mean, self.std,
                            self.file, self.fingerprint)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """The images ``idx`` ((B,) indices on the training device) as uint8 ``(B, C, H, W)`` on that device:
        indexed there, or (``stream``) the next batch of the running ``prefetch`` block, else read from the file."""
        if self.file is None:
            return self.images.index_select(0, idx)  # a row copy each: on a CPU several times faster than images[idx]
        if self._prefetcher is not None:
            return self._prefetcher.next(idx)
        rows = idx.cpu().numpy()
        batch = torch.empty((len(rows), *self.images.shape[1:]), dtype=torch.uint8)
        self.file.read(rows, batch.numpy())
        return batch.to(self.labels.device)

    @contextlib.contextmanager
    def prefetch(self, batches: list[torch.Tensor]):
        """Within the block ``gather`` is asked for ``batches`` (index tensors, in this order): a ``stream``
        dataset reads each ahead of the step in a background thread; a ``device`` one needs nothing."""
        if self.file is None:
            yield
            return
        self._prefetcher = Prefetcher(self.file, batches, self.labels.device)
        try:
            yield
        finally:
            self._prefetcher.close()
            self._prefetcher = None


def dataset_names() -> list[str]:
    """The names a run may give as its dataset: the built-ins of ``DATASETS``, then your own, the folders of
    ``data_root()`` (all but hidden ones and ``NOT_YOURS``), sorted."""
    root = data_root()
    own = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")
                 and e.name not in NOT_YOURS and e.name not in DATASETS) if root.is_dir() else []
    return [*DATASETS, *own]


def load_dataset(name: str, train: bool) -> ImageDataset:
    """Load the ``train`` or test split of a dataset of ``dataset_names()`` (on the CPU)."""
    if name in DATASETS:
        return DATASETS[name](train)
    data = Data.load(name, "cpu").evaluation
    return data.train if train else data.test


def load_splits(name: str, device="cpu") -> tuple[ImageDataset, ImageDataset]:
    """``(train, test)`` of ``name`` (of ``dataset_names()``) on ``device``."""
    if name not in DATASETS:
        data = Data.load(name, device).evaluation
        return data.train, data.test
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
    return _torchvision_split(name, "train" if train else "test")


def _torchvision_split(name: str, split: str) -> ImageDataset:
    """``split`` ("train", "test"; STL-10 also "unlabeled", labels -1) of a torchvision dataset, downloaded if missing."""
    from torchvision import datasets

    root = data_root()
    if name == "stl10":
        make = lambda download: datasets.STL10(str(root), split=split, download=download)
    else:
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        make = lambda download: cls(str(root), train=split == "train", download=download)
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


def builtin_split(name: str, split: str) -> ImageDataset:
    """A split of a built-in dataset in host memory; ``a+b`` concatenates splits (``stl10`` ``train+unlabeled``)."""
    known = BUILTIN_SPLITS[name]
    if any(part not in known for part in split_parts(split)):
        raise ConfigError(f"dataset '{name}' has the splits {list(known)} (joined with '+'), not '{split}'")
    parts = [DATASETS[name](part == "train") if part in ("train", "test") else _torchvision_split(name, part)
             for part in split_parts(split)]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return ImageDataset(name, torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                        first.num_classes, first.mean, first.std)


@dataclass(frozen=True)
class DataSpec:
    """What a run reads.

    name: the dataset's name in run names and results: a built-in, or a name for your own data.
    source: where training reads images from: "" = the dataset named ``name`` (a built-in, or the folder
        ``data_root()/name``), else a source string (``desupcon.images.sources``: a folder or a Hugging Face dataset).
    split: the split(s) of the source training reads ('+' joins them: ``train+unlabeled``).
    eval_source: the labelled train and test splits of the k-NN and linear probe: "" = those of the source.
    image_column, label_column: columns of a Hugging Face source ("" label column = unlabelled).
    size: the side your own images are stored and read at (built-ins keep their own).
    """

    name: str
    source: str = ""
    split: str = "train"
    eval_source: str = ""
    image_column: str = "image"
    label_column: str = "label"
    size: int = OWN_DATA_SIZE


class DatasetName(str):
    """A dataset's name carrying the ``DataSpec`` it is read with (``MocoConfig.dataset``). Wherever a string
    is wanted it is the plain name (run names, results, ``desupcon.engine.memory``); ``Data.load`` reads its ``spec``."""

    spec: DataSpec

    def __new__(cls, spec: DataSpec):
        name = super().__new__(cls, spec.name)
        name.spec = spec
        return name

    def __reduce__(self):
        return DatasetName, (self.spec,)


def residency(value: str | None = None) -> str:
    """``value``, or ``$DESUPCON_RESIDENCY`` when None: "auto" (unset), "device" or "stream"."""
    value = value or os.environ.get("DESUPCON_RESIDENCY") or "auto"
    if value not in RESIDENCIES:
        raise ConfigError(f"DESUPCON_RESIDENCY={value!r}: must be one of {list(RESIDENCIES)} (unset = auto)")
    return value


def free_memory(device: torch.device) -> int:
    """Free bytes of a CUDA device, or available host memory for the CPU (``MemAvailable`` of /proc/meminfo,
    else the free physical pages)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _source(spec: DataSpec, text: str) -> Source:
    """The source a spec's ``source`` or ``eval_source`` names ("" = the dataset named ``spec.name``)."""
    if text:
        return resolve(text, spec.image_column, spec.label_column)
    if spec.name in DATASETS:
        return Source("builtin", spec.name)
    path = data_root() / spec.name
    if not path.is_dir():
        raise DatasetUnavailableError(f"dataset '{spec.name}' is neither built-in ({', '.join(DATASETS)}) nor a folder "
                                      f"of $DESUPCON_DATA ({path} does not exist): put your images there (README: Your "
                                      f"own data), or (MoCo-v3) point data.source at them")
    return resolve(str(path), spec.image_column, spec.label_column)


def _stored(source: Source, split: str, size: int) -> ImageDataset | Prepared:
    """A split in its prepared cache entry (your own images; a built-in one stored before), else (a built-in)
    in host memory."""
    if source.kind != "builtin":
        return prepare(source, split, size)
    load = functools.partial(builtin_split, source.location, split)
    return stored_builtin(source, split, load) or load()


def _placed(name: str, source: Source, split: str, stored, stream: bool, device, stats) -> ImageDataset:
    """``stored`` as an ``ImageDataset`` on ``device``, or (``stream``) over its file, normalised with ``stats``,
    carrying its fingerprint (``Data.fingerprints``)."""
    if isinstance(stored, ImageDataset):  # a built-in split in host memory
        if not stream:
            identity = data_fingerprint(source.location, split, "builtin", checksum(stored.images.numpy()),
                                        checksum(stored.labels.numpy()))  # on the host, before the move
            return ImageDataset(name, stored.images, stored.labels, stored.num_classes, *stats,
                                fingerprint=identity).to(device)
        stored = store_builtin(source, split, stored)
    labels = torch.from_numpy(stored.labels()).to(device)
    if stream:
        file = ArrayFile(stored.images_path)
        return ImageDataset(name, file.mapped(), labels, len(stored.classes), *stats, file=file,
                            fingerprint=stored.fingerprint)
    images = np.load(stored.images_path, mmap_mode=None if device.type == "cpu" else "c")  # read straight to a GPU
    return ImageDataset(name, torch.from_numpy(images).to(device), labels, len(stored.classes), *stats,
                        fingerprint=stored.fingerprint)


def prepare_data(text: str, size: int | None, splits=(), image_column: str = "image", label_column: str = "label",
                 workers: int | None = None) -> list[tuple[str, Prepared]]:
    """Decode a source into the prepared cache ahead of a run (``python -m desupcon prepare-data``).

    Args:
        text: a source string (``desupcon.images.sources``): a built-in name, a folder or a Hugging Face dataset.
        size: the side to store your own images at (the run's ``data.image_size``); built-ins keep
            their own (None, or that side).
        splits: the splits to prepare, each a split or several joined by '+' (default: every split
            the source has).
        image_column, label_column: the columns of a Hugging Face source.
        workers: decoding processes (default: ``desupcon.images.prepared``'s).

    Returns ``(split, entry)`` for each split. Ctrl-C raises ``KeyboardInterrupt`` with one line naming the splits
    prepared, the one interrupted and how to continue.
    """
    source = resolve(text, image_column, label_column)
    if source.kind == "builtin":
        side = BUILTIN_SIDES[source.location]
        if size not in (None, side):
            raise ConfigError(f"prepare-data {text}: built-in datasets are stored at their own side ({side}x{side}; runs "
                              f"crop and resize on the device); drop --size or give --size {side}")
        loads = {split: functools.partial(builtin_split, text, split) for split in splits or BUILTIN_SPLITS[text]}
        return [(split, stored_builtin(source, split, load) or store_builtin(source, split, load()))
                for split, load in loads.items()]
    if size is None:
        raise ConfigError(f"prepare-data {text}: give --size, the side to store the images at (the run's "
                          f"data.image_size, e.g. --size 96)")
    prepared = []
    for split in splits or splits_of(source):
        try:
            prepared.append((split, prepare(source, split, size, workers)))
        except KeyboardInterrupt:
            done = f"prepared {', '.join(s for s, _ in prepared)}; " if prepared else ""
            raise KeyboardInterrupt(f"[interrupted] prepare-data {text}: {done}interrupted {split} (none of its images "
                                    f"is kept); rerun the same command to prepare what is missing") from None
    return prepared


def _nbytes(stored) -> int:
    return stored.images.numel() if isinstance(stored, ImageDataset) else stored.nbytes


def _load(spec: DataSpec, device: torch.device, choice: str) -> "Data":
    train_source = _source(spec, spec.source)
    eval_source = _source(spec, spec.eval_source) if spec.eval_source else train_source
    wanted = {"train": (train_source, spec.split), "labelled": (eval_source, "train"), "test": (eval_source, "test")}
    if wanted["labelled"] == wanted["train"]:
        del wanted["labelled"]  # the evaluation's labelled train split is the training split itself
    stored = {role: _stored(source, split, spec.size) for role, (source, split) in wanted.items()}
    total = sum(_nbytes(s) for s in stored.values())
    why = "DESUPCON_RESIDENCY"
    if choice == "auto":
        free = free_memory(device)
        choice = "device" if total <= AUTO_SHARE * free else "stream"
        why = f"auto: {'within' if choice == 'device' else 'more than'} {AUTO_SHARE:.0%} of the {free / 1e9:.1f} GB free"
    train = stored["train"]
    stats = (train.mean, train.std) if isinstance(train, ImageDataset) else train.mean_std
    placed = {role: _placed(spec.name, *wanted[role], s, choice == "stream" and role != "test", device, stats)
              for role, s in stored.items()}
    if dist.is_main():
        counts = " + ".join(f"{len(d):,} {role}" for role, d in placed.items())
        side = "x".join(map(str, placed["train"].images.shape[2:]))
        where = f"streamed to {device} from the host, the test split on {device}" if choice == "stream" else f"on {device}"
        print(f"[data] {spec.name}: {counts} images at {side} ({human_bytes(total)}), {where} ({why})")
    return Data(placed["train"], placed["test"], placed.get("labelled"))


@dataclass
class Data:
    """The splits of a run: ``train`` (what it trains on), ``test`` (labelled) and ``labelled``, the labelled
    train split of the evaluation when that is not ``train`` (STL-10 ``train+unlabeled``, a flat folder)."""

    train: ImageDataset
    test: ImageDataset
    labelled: ImageDataset | None = None

    @property
    def evaluation(self) -> "Data":
        """The labelled train and test splits the k-NN and linear probe read."""
        return self if self.labelled is None else Data(self.labelled, self.test)

    def fingerprints(self) -> dict[str, dict]:
        """What identifies the data of each split, for a run's identity: ``{"data.train": ..., "data.test": ...,
        "data.labelled": ...}`` (the last only when there is a ``labelled`` split), each ``{"source": the source's
        location, "split": its split, "files": the hash of the source's file list or "builtin", "content": a hex
        hash of the checksums of its uint8 images and int64 labels}`` (``desupcon.images.prepared.data_fingerprint``).

        The same in every process that loads the same data, on any device and residency. A prepared entry's
        come from its manifest (nothing is read again); a built-in split held in host memory is checksummed on
        the host by ``Data.load`` before it moves to the device (CRC-32, 0.3-0.4 s per GB on one core: digits
        at once, CIFAR-10/100's train split, 0.15 GB, in about 0.05 s, STL-10's train+unlabeled, 2.9 GB, in
        about 1 s). A split made otherwise than by ``Data.load`` (tensors given by hand) is checksummed here, its
        source its name and its split and files "given".
        """
        roles = {"data.train": self.train, "data.test": self.test, "data.labelled": self.labelled}
        return {role: split.fingerprint or data_fingerprint(split.name, "given", "given", checksum(split.images.cpu().numpy()),
                                                            checksum(split.labels.cpu().numpy()))
                for role, split in roles.items() if split is not None}

    @classmethod
    def load(cls, name: str, device, residency_choice: str | None = None) -> "Data":
        """The data of ``name`` on ``device``: a dataset name of ``dataset_names()``, or a ``DatasetName``
        carrying its ``DataSpec``; residency ``residency_choice`` (default: ``$DESUPCON_RESIDENCY``)."""
        spec = name.spec if isinstance(name, DatasetName) else DataSpec(str(name))
        return _load(spec, torch.device(device), residency(residency_choice))

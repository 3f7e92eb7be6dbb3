"""Where a dataset's images come from, and what each split of it holds before decoding.

A *source string* names one (``resolve``):

* a built-in dataset: ``digits``, ``cifar10``, ``cifar100`` or ``stl10`` (``BUILTIN_SPLITS``);
* a folder of images in ``torchvision.datasets.ImageFolder``'s layout, ``ROOT/<class>/<image>`` (any
  depth below the class folder), optionally split as ``ROOT/train/<class>/...`` and
  ``ROOT/test/<class>/...`` (``val`` counts as ``test``); or a flat folder of images, which is
  unlabelled (pretraining only);
* a Hugging Face dataset on disk (the ``datasets`` library, ``pip install 'desupcon[hf]'``): a folder
  written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``), a parquet file, or a folder of
  parquet files whose names start with their split (``train-00000-of-00001.parquet``); its image
  column must be a ``datasets.Image``, its label column a ``ClassLabel``, integers or strings.

A path is absolute, ``~/...``, or relative to ``$DESUPCON_DATA`` (``desupcon.core.paths.data_root``).

Splits: a built-in has its own (``stl10``: train, test, unlabeled). A labelled folder or Hugging Face
dataset without a test split keeps about a fifth of every class as ``test`` (``in_holdout``). An
unlabelled one has ``train`` only. ``a+b`` joins splits in that order (``train+unlabeled``).

``listing(source, split)`` says what a split holds before decoding: the files or rows, their labels
(-1 = unlabelled), the class names, the files that are not images, and a hash of the file list.
``decode_chunk`` (which ``desupcon.images.prepared`` runs in worker processes) decodes a chunk of them,
converts each to RGB and resizes it into a uint8 array.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from desupcon.core.errors import ConfigError, DatasetUnavailableError
from desupcon.core.paths import cache_root, data_root

BUILTIN_SPLITS = {"digits": ("train", "test"), "cifar10": ("train", "test"), "cifar100": ("train", "test"),
                  "stl10": ("train", "test", "unlabeled")}
BUILTIN_SIDES = {"digits": 16, "cifar10": 32, "cifar100": 32, "stl10": 96}  # as desupcon.images.datasets loads them
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
HOLDOUT = 5  # a labelled source without a test split keeps 1 in HOLDOUT images of every class as its test split
HF_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes at the top of its folder


@dataclass(frozen=True)
class Source:
    """Where images come from.

    kind: "builtin", "folder" or "hf".
    location: the built-in name, or the absolute path of the folder or file.
    image_column, label_column: the columns of a Hugging Face dataset ("" label column = unlabelled).
    """

    kind: str
    location: str
    image_column: str = "image"
    label_column: str = "label"

    @property
    def title(self) -> str:
        """A short name for messages and cache folders: the built-in name, or the folder's or file's name."""
        return self.location if self.kind == "builtin" else Path(self.location).name.removesuffix(".parquet")


@dataclass(frozen=True)
class Listing:
    """What one split of a source holds before decoding.

    items: what ``decode_chunk`` decodes, one per image: an absolute file path, or ``(split, row)`` of a
        Hugging Face dataset.
    names: how each item is named in messages and the manifest (a path relative to the source, ``train[12]``).
    labels: (N,) int64 class indices into ``classes``, -1 where the source has no label.
    classes: the class names (empty for an unlabelled source).
    ignored: files of the source that are not images (by extension), relative paths.
    fingerprint: SHA-256 of the source's files (relative path, size, modification time) and the split.
    """

    items: list
    names: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]
    ignored: list[str]
    fingerprint: str


def resolve(text: str, image_column: str = "image", label_column: str = "label") -> Source:
    """The source a source string names (see the module docstring); ``DatasetUnavailableError`` if the
    path does not exist."""
    if text in BUILTIN_SPLITS:
        return Source("builtin", text)
    path = Path(text).expanduser()
    path = path if path.is_absolute() else data_root() / path
    if not path.exists():
        raise DatasetUnavailableError(f"source '{text}': {path} does not exist; give a built-in name "
                                      f"({', '.join(BUILTIN_SPLITS)}), a folder of images or a Hugging Face dataset "
                                      f"on disk (a path absolute or relative to $DESUPCON_DATA = {data_root()})")
    hf = path.suffix == ".parquet" or (path.is_dir() and (any((path / m).exists() for m in HF_MARKERS)
                                                          or any(path.glob("*.parquet"))))
    if not hf:
        return Source("folder", str(path.resolve()))  # columns are a Hugging Face dataset's only
    return Source("hf", str(path.resolve()), image_column, label_column)


def split_parts(split: str) -> list[str]:
    """``"train+unlabeled"`` -> ``["train", "unlabeled"]``."""
    return split.split("+")


def in_holdout(key: str) -> bool:
    """Whether the image named ``key`` (a relative path, or a row number) is in the held-out test split:
    fixed, about 1 in ``HOLDOUT`` of every class, and stable when other images are added or removed."""
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % HOLDOUT == 0


def listing(source: Source, split: str) -> Listing:
    """What ``split`` (a split name, or several joined by ``+``) of a folder or Hugging Face ``source`` holds."""
    parts = [_folder_listing(source, part) if source.kind == "folder" else _hf_listing(source, part)
             for part in split_parts(split)]
    if "test" in split_parts(split) and not parts[split_parts(split).index("test")].classes:
        raise DatasetUnavailableError(f"{source.location} is unlabelled (a flat folder of images, or a Hugging Face "
                                      f"dataset read with label_column ''), so it has no labelled test split for the "
                                      f"k-NN and linear probe: sort its images into one folder per class (or set "
                                      f"data.label_column), or (MoCo-v3) set data.eval_source to a labelled source")
    if len(parts) == 1:
        return parts[0]
    classes = parts[0].classes
    for part in parts[1:]:
        if part.classes and classes and part.classes != classes:
            raise DatasetUnavailableError(f"{source.location}: the splits of '{split}' have different classes "
                                          f"({list(classes)} and {list(part.classes)}); join splits with the same classes")
        classes = classes or part.classes
    fingerprint = hashlib.sha256("".join(p.fingerprint for p in parts).encode()).hexdigest()
    return Listing([i for p in parts for i in p.items], [n for p in parts for n in p.names],
                   np.concatenate([p.labels for p in parts]), classes, parts[0].ignored, fingerprint)


def splits_of(source: Source) -> tuple[str, ...]:
    """The splits ``source`` has: a built-in's, a split folder's or DatasetDict's, else ``train`` (and the
    held-out ``test`` when the source is labelled)."""
    if source.kind == "builtin":
        return BUILTIN_SPLITS[source.location]
    if source.kind == "folder":
        root = Path(source.location)
        if _split_folders(root):
            return ("train", "test")
        return ("train", "test") if _scan(root)[0] else ("train",)
    dataset = open_hf(source)
    if _has_test(dataset):
        return tuple(dataset.keys())
    return ("train", "test") if source.label_column else ("train",)


# --- image folders -------------------------------------------------------------------------------

def _split_folders(root: Path) -> dict[str, Path] | None:
    """``{"train": ROOT/train, "test": ROOT/test or ROOT/val}`` when ``root`` is split that way, else None."""
    test = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    return {"train": root / "train", "test": test} if (root / "train").is_dir() and test is not None else None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _scan(folder: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]], list[Path]]:
    """``(classes, [(image file, class index)], ignored files)`` of one ImageFolder or flat folder.

    Class folders are the sub-folders (sorted; hidden ones are ignored), each searched at any depth;
    a folder without sub-folders is flat (unlabelled, class index -1).
    """
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    dirs = [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]
    files = [Path(e.path) for e in entries if not e.is_dir()]
    ignored = [Path(e.path) for e in entries if e.is_dir() and e.name.startswith(".")]
    loose = [f for f in files if _is_image(f.name)]
    if dirs and loose:
        raise DatasetUnavailableError(f"{folder} holds image files beside its class folders (first: {loose[0].name}); "
                                      f"move them into a class folder, or into a folder of their own")
    if not dirs:
        if not loose:
            raise DatasetUnavailableError(f"{folder} has no images (files ending in {', '.join(IMAGE_EXTENSIONS)}): "
                                          f"put images in it, or one folder of images per class (ImageFolder layout)")
        return (), [(f, -1) for f in loose], [f for f in files if not _is_image(f.name)]
    images = []
    for label, class_dir in enumerate(dirs):
        found = []
        for top, subdirs, names in os.walk(class_dir, followlinks=True):
            subdirs.sort()
            for name in sorted(names):
                (found if _is_image(name) else ignored).append(Path(top) / name)
        if not found:
            raise DatasetUnavailableError(f"class folder {class_dir} has no images (files ending in "
                                          f"{', '.join(IMAGE_EXTENSIONS)}): add images to it or remove it")
        images += [(f, label) for f in found]
    return tuple(d.name for d in dirs), images, ignored + files


def _folder_listing(source: Source, split: str) -> Listing:
    root = Path(source.location)
    if root.is_file():
        raise DatasetUnavailableError(f"{root} is a file, not a folder of images; give its folder")
    folders = _split_folders(root)
    if folders is not None:
        if split not in folders:
            raise ConfigError(f"{root} has the splits train and test (its train/ and {folders['test'].name}/ "
                              f"folders), not '{split}'")
        classes, images, ignored = _scan(folders[split])
        train_classes = classes if split == "train" else _scan(folders["train"])[0]
        if set(classes) - set(train_classes):
            raise DatasetUnavailableError(f"{folders[split]} has classes that {folders['train']} lacks "
                                          f"({sorted(set(classes) - set(train_classes))}): give both splits the same classes")
        index = {name: i for i, name in enumerate(train_classes)}
        images, classes = [(f, index[classes[y]] if y >= 0 else -1) for f, y in images], train_classes
    else:
        classes, images, ignored = _scan(root)
        if split not in ("train", "test"):
            raise ConfigError(f"{root} has the splits {['train', 'test'] if classes else ['train']}, not '{split}'")
        if classes:
            images = [(f, y) for f, y in images if in_holdout(str(f.relative_to(root))) == (split == "test")]
    stats = "".join(f"{f.relative_to(root)}\0{s.st_size}\0{s.st_mtime_ns}\n" for f, _ in images for s in [f.stat()])
    return Listing([str(f) for f, _ in images], [str(f.relative_to(root)) for f, _ in images],
                   np.array([y for _, y in images], dtype=np.int64), classes,
                   [str(f.relative_to(root)) for f in ignored],
                   hashlib.sha256(f"{split}\n{stats}".encode()).hexdigest())


# --- Hugging Face datasets -----------------------------------------------------------------------

_OPEN: dict[Source, object] = {}  # per process: a source's Dataset or DatasetDict, opened once


def open_hf(source: Source):
    """The ``datasets.Dataset`` or ``DatasetDict`` of a Hugging Face ``source`` (memory-mapped Arrow files)."""
    if source not in _OPEN:
        try:
            import datasets
        except ImportError:
            raise DatasetUnavailableError(f"{source.location} is a Hugging Face dataset, which needs the datasets "
                                          f"library: pip install 'desupcon[hf]'") from None
        path = Path(source.location)
        if path.suffix == ".parquet" or not any((path / m).exists() for m in HF_MARKERS):
            files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
            by_split = {}
            for f in files:
                by_split.setdefault(f.name.split("-")[0].split(".")[0], []).append(str(f))
            known = set(by_split) <= {"train", "test", "validation", "unlabeled"}

            # the Arrow files datasets converts the parquet files to
            cache = cache_root() / ".hf_cache" / hashlib.sha256(str(path).encode()).hexdigest()[:16]
            dataset = datasets.load_dataset("parquet", data_files=by_split if known else {"train": [str(f) for f in files]},
                                            cache_dir=str(cache))
            _OPEN[source] = dataset if known else dataset["train"]
        else:
            _OPEN[source] = datasets.load_from_disk(str(path))
    return _OPEN[source]


def _has_test(dataset) -> bool:
    return hasattr(dataset, "keys") and ("test" in dataset or "validation" in dataset)


def _hf_part(source: Source, dataset, split: str):
    """``(Dataset, its split name)`` of ``split``: a DatasetDict's split (``test`` falls back to ``validation``);
    for a single Dataset, or a DatasetDict without a test split asked for train or test, its one pool and
    None (the caller picks the train or held-out test rows)."""
    if not hasattr(dataset, "keys"):
        return dataset, None
    if not _has_test(dataset) and split in ("train", "test") and "train" in dataset:
        return dataset["train"], None
    name = "validation" if split == "test" and "test" not in dataset else split
    if name not in dataset:
        raise ConfigError(f"the Hugging Face dataset {source.location} has the splits {list(dataset.keys())}, "
                          f"not '{split}'")
    return dataset[name], name


def _hf_labels(source: Source, dataset) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Labels of every split (-1 = none) and the class names: a ClassLabel's names, or the sorted distinct
    values of an integer or string column (negative integers mean unlabelled)."""
    parts = dict(dataset.items()) if hasattr(dataset, "keys") else {None: dataset}
    first = next(iter(parts.values()))
    for column, option in ((source.image_column, "image_column"), (source.label_column, "label_column")):
        if column and column not in first.column_names:
            raise ConfigError(f"the Hugging Face dataset {source.location} has no column '{column}' (its columns: "
                              f"{first.column_names}); set data.{option} (prepare-data: --{option.replace('_', '-')}) to "
                              f"one of them" + (", or to '' for unlabelled images" if option == "label_column" else ""))
    import datasets

    if not isinstance(first.features[source.image_column], datasets.Image):
        raise ConfigError(f"column '{source.image_column}' of {source.location} holds {first.features[source.image_column]}, "
                          f"not images (datasets.Image); set data.image_column to its image column")
    if not source.label_column:
        return {name: np.full(len(part), -1, dtype=np.int64) for name, part in parts.items()}, ()
    feature = first.features[source.label_column]
    values = {name: np.asarray(part.with_format("numpy")[source.label_column]) for name, part in parts.items()}
    if isinstance(feature, datasets.ClassLabel):
        return {n: v.astype(np.int64) for n, v in values.items()}, tuple(feature.names)
    if any(v.dtype.kind not in "iu" for v in values.values()):
        names = sorted({str(x) for v in values.values() for x in v})
        index = {name: i for i, name in enumerate(names)}
        return {n: np.array([index[str(x)] for x in v], dtype=np.int64) for n, v in values.items()}, tuple(names)
    names = sorted({int(x) for v in values.values() for x in v if x >= 0})
    index = {name: i for i, name in enumerate(names)}
    return ({n: np.array([index.get(int(x), -1) for x in v], dtype=np.int64) for n, v in values.items()},
            tuple(str(n) for n in names))


def _hf_listing(source: Source, split: str) -> Listing:
    dataset = open_hf(source)
    labels, classes = _hf_labels(source, dataset)
    part, name = _hf_part(source, dataset, split)
    rows = np.arange(len(part))
    if name is None:  # one pool: train and the held-out test rows
        if split not in ("train", "test"):
            raise ConfigError(f"the Hugging Face dataset {source.location} has the splits "
                              f"{['train', 'test'] if classes else ['train']}, not '{split}'")
        if classes:
            rows = np.array([r for r in rows if in_holdout(str(r)) == (split == "test")], dtype=np.int64)
    root = Path(source.location)
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    stats = "".join(f"{f.relative_to(root.parent)}\0{f.stat().st_size}\0{f.stat().st_mtime_ns}\n" for f in files)
    key = f"{split}\n{source.image_column}\n{source.label_column}\n{stats}"
    stored = name if name is not None or not hasattr(dataset, "keys") else "train"  # the split the rows are read from
    return Listing([(stored, int(r)) for r in rows], [f"{stored or 'train'}[{r}]" for r in rows], labels[stored][rows],
                   classes, [], hashlib.sha256(key.encode()).hexdigest())


# --- decoding (in worker processes) --------------------------------------------------------------

def fit_image(image, size: int) -> np.ndarray:
    """A PIL image as uint8 ``(3, size, size)``: converted to RGB (grayscale, palette, RGBA without its
    alpha), its shorter side resized to ``size`` (bicubic, antialiased), centre-cropped to a square."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = TF.center_crop(TF.resize(image.convert("RGB"), size, InterpolationMode.BICUBIC), [size, size])
    return np.asarray(image).transpose(2, 0, 1)


def decode_chunk(source: Source, items: list, size: int, out: str, start: int) -> list[tuple[int, str]]:
    """Decode ``items`` (of a ``Listing``) into rows ``start, start + 1, ...`` of the uint8 ``(N, 3, size, size)``
    ``.npy`` file ``out``; returns ``(position in items, reason)`` of each image that could not be read."""
    array = np.lib.format.open_memmap(out, mode="r+")
    failed = []
    if source.kind == "folder":
        from torchvision.datasets.folder import pil_loader

        for i, path in enumerate(items):
            try:
                array[start + i] = fit_image(pil_loader(path), size)
            except Exception as err:  # any decoder error means this one file is unreadable
                failed.append((i, f"{type(err).__name__}: {err}"))
    else:
        import datasets

        dataset, decoder = open_hf(source), datasets.Image()
        i = 0
        while i < len(items):  # runs of rows of one split, read as one batch each
            split = items[i][0]
            j = i
            while j < len(items) and items[j][0] == split:
                j += 1
            part = dataset if split is None else dataset[split]
            column = part.cast_column(source.image_column, datasets.Image(decode=False))
            for k, value in enumerate(column[[r for _, r in items[i:j]]][source.image_column]):
                try:
                    array[start + i + k] = fit_image(decoder.decode_example(value), size)
                except Exception as err:  # any decoder error means this one image is unreadable
                    failed.append((i + k, f"{type(err).__name__}: {err}"))
            i = j
    array.flush()
    return failed

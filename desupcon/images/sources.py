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
dataset without a test split keeps about a fifth of every class as ``test``, chosen by a hash of each
image's bytes (``in_holdout``), so copies of one image are on the same side. An unlabelled one has
``train`` only. ``a+b`` joins splits in that order (``train+unlabeled``). A labelled source needs at
least two classes.

A folder is read so that no image counts twice: links to folders are followed, but each real folder
is read once (a loop, or a link back into the source's own folders, is passed over), and an image
file reached by two paths counts once, at the first in sorted order. An entry that cannot be read (a
dangling link, a folder without permission) is listed as ``Unreadable`` and skipped, with its reason,
among the unreadable images.

``listing(source, split)`` says what a split holds before decoding: the files or rows, their labels
(-1 = unlabelled), the class names, the files that are not images, and a hash of the file list.
``decode_chunk`` (which ``desupcon.images.prepared`` runs in worker processes) decodes a chunk of them
(``fit_image``: upright by its EXIF orientation, 16-bit scaled to 8 bits, RGB, resized) into a uint8
array, skipping an image over ``max_image_pixels()`` before decoding it.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from desupcon.core.errors import ConfigError, DatasetUnavailableError
from desupcon.core.paths import cache_root, data_root

BUILTIN_SPLITS = {"digits": ("train", "test"), "cifar10": ("train", "test"), "cifar100": ("train", "test"),
                  "stl10": ("train", "test", "unlabeled")}
BUILTIN_SIDES = {"digits": 16, "cifar10": 32, "cifar100": 32, "stl10": 96}  # as desupcon.images.datasets loads them
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
HOLDOUT = 5  # a labelled source without a test split keeps 1 in HOLDOUT images of every class as its test split
HF_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes at the top of its folder
PIXELS_VARIABLE = "DESUPCON_MAX_IMAGE_PIXELS"
MAX_IMAGE_PIXELS = 40_000_000  # default pixel limit per image: a 40-megapixel RGB image is 120 MB decoded
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # PIL's modes of 16-bit grayscale (I: read as 16-bit)
DECODING = 2  # in every fingerprint: 2 = 16-bit scaled and EXIF-oriented (1 clipped 16-bit at 255, ignored EXIF)


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
class Unreadable:
    """An entry of a folder that cannot be read (a dangling link, a folder without permission): ``decode_chunk``
    reports it as unreadable with ``reason`` ("<what>: <detail>"), beside the images that fail to decode."""

    path: str
    reason: str


@dataclass(frozen=True)
class Listing:
    """What one split of a source holds before decoding.

    items: what ``decode_chunk`` decodes, one per image: an absolute file path, ``(split, row)`` of a
        Hugging Face dataset, or an ``Unreadable`` entry of a folder (skipped with its reason).
    names: how each item is named in messages and the manifest (a path relative to the source, ``train[12]``).
    labels: (N,) int64 class indices into ``classes``, -1 where the source has no label.
    classes: the class names (empty for an unlabelled source).
    ignored: files of the source that are not images (by extension), relative paths.
    fingerprint: SHA-256 of the split's files (relative path, size, modification time; an unreadable entry's
        reason), the split, ``max_image_pixels()`` and ``DECODING``: it changes when an image of the split is
        added, removed or modified, and when the pixel limit or the decoding changes.
    """

    items: list
    names: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]
    ignored: list[str]
    fingerprint: str


def resolve(text: str, image_column: str = "image", label_column: str = "label") -> Source:
    """The source a source string names (see the module docstring); ``DatasetUnavailableError`` if the
    path does not exist, or is a file other than a parquet file."""
    if text in BUILTIN_SPLITS:
        return Source("builtin", text)
    path = Path(text).expanduser()
    path = path if path.is_absolute() else data_root() / path
    if not path.exists():
        raise DatasetUnavailableError(f"source '{text}': {path} does not exist; give a built-in name "
                                      f"({', '.join(BUILTIN_SPLITS)}), a folder of images or a Hugging Face dataset "
                                      f"on disk (a path absolute or relative to $DESUPCON_DATA = {data_root()})")
    if not path.is_dir() and path.suffix != ".parquet":
        raise DatasetUnavailableError(f"source '{text}': {path} is a file, not a folder of images; give the folder "
                                      f"that holds the images (one sub-folder per class, or a flat folder), a Hugging "
                                      f"Face dataset's folder or a parquet file")
    hf = path.suffix == ".parquet" or (any((path / m).exists() for m in HF_MARKERS) or any(path.glob("*.parquet")))
    if not hf:
        return Source("folder", str(path.resolve()))  # columns are a Hugging Face dataset's only
    return Source("hf", str(path.resolve()), image_column, label_column)


def split_parts(split: str) -> list[str]:
    """``"train+unlabeled"`` -> ``["train", "unlabeled"]``."""
    return split.split("+")


def in_holdout(digest: bytes) -> bool:
    """Whether the image whose bytes have the SHA-1 ``digest`` (``content_digest``) is in the held-out test
    split: about 1 in ``HOLDOUT`` of every class, the same for copies of one image wherever they are, and
    stable when other images are added or removed. An entry without bytes to hash passes the SHA-1 of its
    name instead."""
    return int.from_bytes(digest, "big") % HOLDOUT == 0


_DIGESTS: dict[tuple[int, int, int, int], bytes] = {}  # per process: (device, inode, size, mtime) -> SHA-1 of the bytes


def content_digest(path: Path, info: os.stat_result | None = None) -> bytes:
    """SHA-1 of the bytes of the file ``path`` (``info``: its ``os.stat``, default read here), read once per
    process while the file keeps its size and modification time."""
    info = info or os.stat(path)
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[key] = hashlib.file_digest(f, "sha1").digest()
    return _DIGESTS[key]


def max_image_pixels() -> int:
    """The most pixels an image may have to be decoded: ``$DESUPCON_MAX_IMAGE_PIXELS``, default
    ``MAX_IMAGE_PIXELS`` (40,000,000); at most PIL's own limit, which refuses larger images anyway."""
    value = os.environ.get(PIXELS_VARIABLE, str(MAX_IMAGE_PIXELS))
    ceiling = 2 * Image.MAX_IMAGE_PIXELS  # PIL raises DecompressionBombError above this
    try:
        pixels = int(value)
    except ValueError:
        pixels = 0
    if not 0 < pixels <= ceiling:
        raise ConfigError(f"{PIXELS_VARIABLE}={value!r}: must be a whole number of pixels per image from 1 to PIL's "
                          f"own limit of {ceiling:,} (unset = {MAX_IMAGE_PIXELS:,})")
    return pixels


def listing(source: Source, split: str) -> Listing:
    """What ``split`` (a split name, or several joined by ``+``) of a folder or Hugging Face ``source`` holds."""
    parts = [_folder_listing(source, part) if source.kind == "folder" else _hf_listing(source, part)
             for part in split_parts(split)]
    if "test" in split_parts(split) and not parts[split_parts(split).index("test")].classes:
        raise DatasetUnavailableError(f"{source.location} is unlabelled (a flat folder of images, or a Hugging Face "
                                      f"dataset read with label_column ''), so it has no labelled test split for the "
                                      f"k-NN and linear probe: sort its images into one folder per class (or set "
                                      f"data.label_column), or (MoCo-v3) set data.eval_source to a labelled source")
    classes = next((p.classes for p in parts if p.classes), ())
    if len(classes) == 1:
        fix = (f"add a folder of images for each other class beside '{classes[0]}'; or, for pretraining only, move "
               f"its images up into {source.location}, a flat folder (unlabelled)" if source.kind == "folder" else
               "give a dataset with more classes; or, for pretraining only, read it unlabelled with data.label_column "
               "'' (prepare-data: --label-column '')")
        raise DatasetUnavailableError(f"{source.location} has one class ('{classes[0]}'): a labelled source needs at "
                                      f"least two, which the k-NN and linear probe tell apart; {fix}, and set "
                                      f"data.eval_source to a labelled source")
    if len(parts) == 1:
        return parts[0]
    for part in parts[1:]:
        if part.classes and part.classes != classes:
            raise DatasetUnavailableError(f"{source.location}: the splits of '{split}' have different classes "
                                          f"({list(classes)} and {list(part.classes)}); join splits with the same classes")
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

@dataclass(frozen=True)
class _Found:
    """An image entry of a folder: its ``path`` (as reached, below the source), class index, and ``info``
    (``os.stat``, following links) or, when it cannot be read, ``reason``."""

    path: Path
    label: int
    info: os.stat_result | None
    reason: str = ""


def _split_folders(root: Path) -> dict[str, Path] | None:
    """``{"train": ROOT/train, "test": ROOT/test or ROOT/val}`` when ``root`` is split that way, else None."""
    test = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    return {"train": root / "train", "test": test} if (root / "train").is_dir() and test is not None else None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_dir(info: os.stat_result | str) -> bool:
    return not isinstance(info, str) and stat.S_ISDIR(info.st_mode)


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _entries(folder: Path) -> list[tuple[Path, os.stat_result | str]]:
    """The entries of ``folder``, sorted by name, each with its ``os.stat`` (following links) or, when that
    fails, why it cannot be read ("dangling link: ..."); ``OSError`` when ``folder`` itself cannot be listed."""
    entries = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        try:
            entries.append((path, os.stat(path)))
        except OSError as err:
            link = os.readlink(path) if path.is_symlink() else None
            entries.append((path, f"dangling link: it points to {link}, which does not exist"
                            if link is not None and isinstance(err, FileNotFoundError)
                            else f"{type(err).__name__}: {err.strerror}" + (f" (a link to {link})" if link else "")))
    return entries


def _listed(folder: Path, label: int, found: list[_Found]) -> list[tuple[Path, os.stat_result | str]]:
    """``_entries(folder)``; none when ``folder`` cannot be listed, which then joins ``found`` with the reason."""
    try:
        return _entries(folder)
    except OSError as err:
        found.append(_Found(folder, label, None, f"{type(err).__name__}: the folder cannot be read ({err.strerror})"))
        return []


def _walk(entries: list, label: int, seen: set[tuple[int, int]], found: list[_Found], ignored: list[Path]) -> None:
    """Add the images among ``entries`` (of ``_entries``) and below their folders (any depth, in sorted order) to
    ``found`` with class index ``label``, the entries that cannot be read too (with the reason), the other files
    to ``ignored``. A folder or file whose identity (device, inode) is in ``seen`` is passed over: a loop, a
    second path to one already read, or a link into a folder the caller keeps out; each one read joins ``seen``."""
    for path, info in entries:
        if isinstance(info, str):
            found.append(_Found(path, label, None, info))
        elif _identity(info) not in seen:
            seen.add(_identity(info))
            if _is_dir(info):
                _walk(_listed(path, label, found), label, seen, found, ignored)
            elif _is_image(path.name):
                found.append(_Found(path, label, info))
            else:
                ignored.append(path)


def _scan(folder: Path, closed: tuple[Path, ...] = ()) -> tuple[tuple[str, ...], list[_Found], list[Path]]:
    """``(classes, images, ignored files)`` of one ImageFolder or flat folder.

    Class folders are the sub-folders (sorted; hidden ones are ignored), each searched at any depth in
    sorted order, following links to folders; a folder without sub-folders is flat (unlabelled, class
    index -1). Each real folder and image file is read once, at its first path in sorted order;
    ``folder``, its class folders and the folders ``closed`` (of a split source: its root and both split
    folders) are never entered through a link, so a loop (``ln -s ..``) adds nothing.
    """
    try:
        entries = _entries(folder)
    except OSError as err:
        raise DatasetUnavailableError(f"{folder} cannot be read ({err.strerror}): make it readable, or give another "
                                      f"folder") from None
    dirs = [(p, info) for p, info in entries if _is_dir(info) and not p.name.startswith(".")]
    files = [(p, info) for p, info in entries if not _is_dir(info)]
    ignored = [p for p, info in entries if _is_dir(info) and p.name.startswith(".")]
    loose = [p for p, _ in files if _is_image(p.name)]
    if dirs and loose:
        raise DatasetUnavailableError(f"{folder} holds image files beside its class folders (first: {loose[0].name}); "
                                      f"move them into a class folder, or into a folder of their own")
    seen = {_identity(os.stat(f)) for f in (folder, *closed)}
    images = []
    if not dirs:
        if not loose:
            raise DatasetUnavailableError(f"{folder} has no images (files ending in {', '.join(IMAGE_EXTENSIONS)}): "
                                          f"put images in it, or one folder of images per class (ImageFolder layout)")
        _walk(files, -1, seen, images, ignored)
        return (), images, ignored
    for class_dir, info in dirs:
        if _identity(info) in seen:
            raise DatasetUnavailableError(f"class folder {class_dir} is a link to {class_dir.resolve()}, which this "
                                          f"source reads already (itself, or as another class folder): remove the link")
        seen.add(_identity(info))
    for label, (class_dir, _) in enumerate(dirs):
        found = []
        _walk(_listed(class_dir, label, found), label, seen, found, ignored)
        if not any(f.info is not None for f in found):
            unread = (f" it can read (of {len(found)} unreadable entries, first {found[0].path}: {found[0].reason})"
                      if found else "")
            raise DatasetUnavailableError(f"class folder {class_dir} has no images (files ending in "
                                          f"{', '.join(IMAGE_EXTENSIONS)}){unread}: add images to it or remove it")
        images += found
    return tuple(d.name for d, _ in dirs), images, ignored + [p for p, _ in files]


def _holdout_side(image: _Found, root: Path) -> tuple[_Found, bool]:
    """``(image, whether it is held out)`` by the SHA-1 of its bytes; an image that cannot be read is held
    out by that of its path (then returned with the reason it cannot be read)."""
    if image.info is not None:
        try:
            return image, in_holdout(content_digest(image.path, image.info))
        except OSError as err:
            image = replace(image, info=None, reason=f"{type(err).__name__}: {err.strerror}")
    return image, in_holdout(hashlib.sha1(str(image.path.relative_to(root)).encode()).digest())


def _folder_listing(source: Source, split: str) -> Listing:
    """A split of a folder source. Without split folders, a labelled folder's test split is chosen by
    ``in_holdout`` of each file's bytes, so listing it reads every image once per process (``content_digest``):
    from the page cache, 1,000 files of 0.5 KB add about 15 ms to a listing, and 100 MB of images about
    0.2 s (SHA-1 at about 0.5 GB/s on a shared 2-core machine); from a cold disk, one read of the folder."""
    root = Path(source.location)
    folders = _split_folders(root)
    if folders is not None:
        if split not in folders:
            raise ConfigError(f"{root} has the splits train and test (its train/ and {folders['test'].name}/ "
                              f"folders), not '{split}'")
        closed = (root, *folders.values())
        classes, images, ignored = _scan(folders[split], closed)
        train_classes = classes if split == "train" else _scan(folders["train"], closed)[0]
        if set(classes) - set(train_classes):
            raise DatasetUnavailableError(f"{folders[split]} has classes that {folders['train']} lacks "
                                          f"({sorted(set(classes) - set(train_classes))}): give both splits the same classes")
        index = {name: i for i, name in enumerate(train_classes)}
        images = [replace(f, label=index[classes[f.label]] if f.label >= 0 else -1) for f in images]
        classes = train_classes
    else:
        classes, images, ignored = _scan(root)
        if split not in ("train", "test"):
            raise ConfigError(f"{root} has the splits {['train', 'test'] if classes else ['train']}, not '{split}'")
        if classes:
            images = [f for f, held in (_holdout_side(f, root) for f in images) if held == (split == "test")]
    names = [str(f.path.relative_to(root)) for f in images]
    stats = "".join(f"{name}\0{f.info.st_size}\0{f.info.st_mtime_ns}\n" if f.info else f"{name}\0{f.reason}\n"
                    for name, f in zip(names, images, strict=True))
    return Listing([str(f.path) if f.info else Unreadable(str(f.path), f.reason) for f in images], names,
                   np.array([f.label for f in images], dtype=np.int64), classes,
                   [str(f.relative_to(root)) for f in ignored],
                   hashlib.sha256(f"{split}\n{max_image_pixels()}\n{DECODING}\n{stats}".encode()).hexdigest())


# --- Hugging Face datasets -----------------------------------------------------------------------

_OPEN: dict[Source, object] = {}  # per process: a source's Dataset or DatasetDict, opened once


def open_hf(source: Source):
    """The ``datasets.Dataset`` or ``DatasetDict`` of a Hugging Face ``source`` (memory-mapped Arrow files);
    ``DatasetUnavailableError`` when its files cannot be read (cut short, damaged)."""
    if source not in _OPEN:
        try:
            import datasets
        except ImportError:
            raise DatasetUnavailableError(f"{source.location} is a Hugging Face dataset, which needs the datasets "
                                          f"library: pip install 'desupcon[hf]'") from None
        path = Path(source.location)
        parquet = path.suffix == ".parquet" or not any((path / m).exists() for m in HF_MARKERS)
        try:
            if parquet:
                files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
                by_split = {}
                for f in files:
                    by_split.setdefault(f.name.split("-")[0].split(".")[0], []).append(str(f))
                known = set(by_split) <= {"train", "test", "validation", "unlabeled"}

                # the Arrow files datasets converts the parquet files to
                cache = cache_root() / ".hf_cache" / hashlib.sha256(str(path).encode()).hexdigest()[:16]
                dataset = datasets.load_dataset("parquet", cache_dir=str(cache),
                                                data_files=by_split if known else {"train": [str(f) for f in files]})
                _OPEN[source] = dataset if known else dataset["train"]
            else:
                _OPEN[source] = datasets.load_from_disk(str(path))
        except (OSError, ValueError) as err:  # pyarrow's errors are OSError (a short read) or ValueError (ArrowInvalid)
            detail = str(err).splitlines()[0] if str(err) else ""
            raise DatasetUnavailableError(
                f"the Hugging Face dataset {path} cannot be read ({type(err).__name__}: {detail}): a file of it is cut "
                f"short or damaged (an interrupted copy or download?); copy it again, or write it again with "
                f"{'to_parquet' if parquet else 'save_to_disk'}") from None
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


def _row_digests(source: Source, part, block: int = 1024) -> list[bytes]:
    """SHA-1 of the image bytes of each row of ``part`` (a ``datasets.Dataset``), read from its Arrow files once,
    ``block`` rows at a time. A row that holds its image as a path only has no bytes here: it gets the SHA-1 of
    its row number, as every row did before, and keeps its side only while the rows before it stay."""
    import datasets

    images = part.cast_column(source.image_column, datasets.Image(decode=False)).with_format("arrow")
    digests = []
    for first in range(0, len(part), block):
        column = images[first:first + block][source.image_column].combine_chunks().field("bytes")  # (block,) binary
        digests += [hashlib.sha1(data if data is not None else str(first + k).encode()).digest()
                    for k, data in enumerate(column.to_pylist())]
    return digests


def _hf_listing(source: Source, split: str) -> Listing:
    """A split of a Hugging Face source. Without a test split, a labelled dataset's test split is chosen by
    ``in_holdout`` of each row's image bytes (``_row_digests``), which listing it reads once."""
    dataset = open_hf(source)
    labels, classes = _hf_labels(source, dataset)
    part, name = _hf_part(source, dataset, split)
    rows = np.arange(len(part))
    if name is None:  # one pool: train and the held-out test rows
        if split not in ("train", "test"):
            raise ConfigError(f"the Hugging Face dataset {source.location} has the splits "
                              f"{['train', 'test'] if classes else ['train']}, not '{split}'")
        if classes:
            held = np.array([in_holdout(d) for d in _row_digests(source, part)], dtype=bool)
            rows = rows[held == (split == "test")]
    root = Path(source.location)
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    stats = "".join(f"{f.relative_to(root.parent)}\0{f.stat().st_size}\0{f.stat().st_mtime_ns}\n" for f in files)
    key = f"{split}\n{source.image_column}\n{source.label_column}\n{max_image_pixels()}\n{DECODING}\n{stats}"
    stored = name if name is not None or not hasattr(dataset, "keys") else "train"  # the split the rows are read from
    return Listing([(stored, int(r)) for r in rows], [f"{stored or 'train'}[{r}]" for r in rows], labels[stored][rows],
                   classes, [], hashlib.sha256(key.encode()).hexdigest())


# --- decoding (in worker processes) --------------------------------------------------------------

class ImageTooLargeError(Exception):
    """An image has more pixels than ``max_image_pixels()``; ``decode_chunk`` skips it with this reason."""


def fit_image(image, size: int) -> np.ndarray:
    """A PIL image as uint8 ``(3, size, size)``: turned upright by its EXIF orientation tag, 16-bit grayscale
    (``SIXTEEN_BIT``; mode I is read as 16-bit) scaled to 8 bits (divided by 257, rounded), converted to RGB
    (grayscale, palette, RGBA without its alpha; 16-bit RGB, which PIL itself reads as 8-bit by its high
    bytes), its shorter side resized to ``size`` (bicubic, antialiased), centre-cropped to a square."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # transposing an upright image would copy it
        image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT:
        levels = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)  # (H, W)
        image = Image.fromarray(((levels + 128) // 257).astype(np.uint8))
    image = TF.center_crop(TF.resize(image.convert("RGB"), size, InterpolationMode.BICUBIC), [size, size])
    return np.asarray(image).transpose(2, 0, 1)


def _fit_file(file, size: int, limit: int) -> np.ndarray:
    """``fit_image`` of the image in ``file`` (a path or a binary file object), or ``ImageTooLargeError`` when its
    header (read before any pixel is decoded) gives more than ``limit`` pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked below instead
        image = Image.open(file)
    with image:
        width, height = image.size
        if width * height > limit:
            raise ImageTooLargeError(f"{width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
                                     f"pixels per image ({PIXELS_VARIABLE}); raise it to read this image, or shrink "
                                     f"the image")
        return fit_image(image, size)


def decode_chunk(source: Source, items: list, size: int, out: str, start: int) -> list[tuple[int, str]]:
    """Decode ``items`` (of a ``Listing``) into rows ``start, start + 1, ...`` of the uint8 ``(N, 3, size, size)``
    ``.npy`` file ``out``; returns ``(position in items, reason)`` of each image that could not be read: an
    ``Unreadable`` entry, an image over ``max_image_pixels()``, or one the decoder fails on."""
    array = np.lib.format.open_memmap(out, mode="r+")
    limit = max_image_pixels()
    failed = []
    if source.kind == "folder":
        for i, path in enumerate(items):
            if isinstance(path, Unreadable):
                failed.append((i, path.reason))
                continue
            try:
                array[start + i] = _fit_file(path, size, limit)
            except Exception as err:  # any decoder error means this one file is unreadable
                failed.append((i, f"{type(err).__name__}: {err}"))
    else:
        import datasets

        dataset = open_hf(source)
        i = 0
        while i < len(items):  # runs of rows of one split, read as one batch each
            split = items[i][0]
            j = i
            while j < len(items) and items[j][0] == split:
                j += 1
            part = dataset if split is None else dataset[split]
            column = part.cast_column(source.image_column, datasets.Image(decode=False))
            for k, value in enumerate(column[[r for _, r in items[i:j]]][source.image_column]):
                try:  # an image's bytes, or (not embedded) its file
                    file = io.BytesIO(value["bytes"]) if value["bytes"] is not None else value["path"]
                    array[start + i + k] = _fit_file(file, size, limit)
                except Exception as err:  # any decoder error means this one image is unreadable
                    failed.append((i + k, f"{type(err).__name__}: {err}"))
            i = j
    array.flush()
    return failed

"""Inputs you can trust: what a folder or Hugging Face source lists, and what decoding makes of each image.

Each fault is made as a user or a bad disk would make it: real symbolic links (a loop, a dangling link,
two links to one file), 16-bit PNG and TIFF files, a JPEG with an EXIF orientation tag, a PNG whose header
claims 13000x13000 pixels, a folder with one class, a file named instead of a folder, an Arrow file cut
short. Decoding runs in this process (``decode_chunk``); one slow test runs ``prepare-data`` end to end.
"""

import hashlib
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from desupcon.__main__ import main
from desupcon.core.errors import ConfigError, DatasetUnavailableError
from desupcon.images.sources import (PIXELS_VARIABLE, Source, Unreadable, decode_chunk, fit_image, in_holdout, listing,
                                     resolve)


def tile(path: Path, value: int, side: int = 4) -> Path:
    """A small RGB PNG at ``path`` whose pixels depend on ``value`` (distinct values, distinct bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def tiles(root: Path, per_class: int = 12, classes=("forest", "river")) -> Path:
    """A labelled folder ``root/<class>/<k>.png`` of distinct images."""
    for c, name in enumerate(classes):
        for k in range(per_class):
            tile(root / name / f"{k:02d}.png", 1000 * c + k)
    return root


def both_splits(root: Path):
    source = Source("folder", str(root))
    return listing(source, "train"), listing(source, "test")


def digest(path) -> bytes:
    return hashlib.sha1(Path(path).read_bytes()).digest()


def decoded(items: list, tmp_path: Path, size: int = 4, source: Source = Source("folder", "/")):
    """``decode_chunk`` of ``items`` in this process: ``(images (N, 3, size, size), [(position, reason)])``."""
    out = tmp_path / "decoded.npy"
    np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(items), 3, size, size)).flush()
    failed = decode_chunk(source, items, size, str(out), 0)
    return np.load(out), failed


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1
    return err[0]


# --- folder scanning ------------------------------------------------------------------------------

def test_a_symlink_loop_adds_nothing_and_no_image_is_on_both_sides(tmp_path):
    root = tiles(tmp_path / "tiles")
    os.symlink("..", root / "river" / "loop")  # the adversarial trial's loop: 60 images became 2,460 rows
    os.symlink(".", root / "forest" / "self")
    os.symlink("../forest", root / "river" / "into_forest")  # into another class folder: not entered
    train, test = both_splits(root)
    names = train.names + test.names
    assert sorted(names) == sorted(f"{c}/{k:02d}.png" for c in ("forest", "river") for k in range(12))
    assert not {digest(p) for p in train.items} & {digest(p) for p in test.items}
    for name, label in zip(names, np.concatenate([train.labels, test.labels]), strict=True):
        assert train.classes[label] == name.split("/")[0]


def test_a_linked_folder_is_read_once_and_a_file_reached_twice_counts_once_at_its_first_path(tmp_path):
    root = tiles(tmp_path / "tiles", per_class=3)
    extra = tmp_path / "more_forest"
    for k in range(3):
        tile(extra / f"m{k}.png", 50 + k)
    os.symlink(extra, root / "forest" / "more")  # a folder outside the source: followed ...
    os.symlink(extra, root / "forest" / "more_again")  # ... once
    os.symlink("02.png", root / "forest" / "00_link.png")  # first in sorted order: this path wins
    os.symlink("../forest/01.png", root / "river" / "stolen.png")  # forest/01.png comes first
    train, test = both_splits(root)
    names = sorted(train.names + test.names)
    assert names == sorted(["forest/00.png", "forest/00_link.png", "forest/01.png", "forest/more/m0.png",
                            "forest/more/m1.png", "forest/more/m2.png", "river/00.png", "river/01.png",
                            "river/02.png"])


def test_a_class_folder_linked_to_the_source_or_another_class_is_a_one_line_error(tmp_path):
    root = tiles(tmp_path / "tiles", per_class=2)
    os.symlink(".", root / "zzz")
    with pytest.raises(DatasetUnavailableError, match=r"class folder .*zzz is a link to .*tiles, which this source "
                                                      r"reads already .*remove the link"):
        listing(Source("folder", str(root)), "train")


def test_a_split_folder_is_not_entered_through_a_link_from_the_other_split(tmp_path):
    root = tmp_path / "split"
    tiles(root / "train", per_class=2)
    tiles(root / "test", per_class=1)
    os.symlink("../../test", root / "train" / "river" / "peek")  # test images would join train
    os.symlink("../..", root / "train" / "forest" / "up")  # the source itself
    train, test = both_splits(root)
    assert sorted(train.names) == ["train/forest/00.png", "train/forest/01.png", "train/river/00.png",
                                   "train/river/01.png"]
    assert sorted(test.names) == ["test/forest/00.png", "test/river/00.png"]


def test_a_dangling_link_is_skipped_as_unreadable_with_its_reason(tmp_path):
    root = tiles(tmp_path / "tiles", per_class=4)
    os.symlink(tmp_path / "gone.png", root / "forest" / "gone.png")
    os.symlink("nowhere", root / "river" / "album")  # perhaps a folder once
    train, test = both_splits(root)
    found = {name: item for name, item in zip(train.names + test.names, train.items + test.items, strict=True)
             if isinstance(item, Unreadable)}
    assert sorted(found) == ["forest/gone.png", "river/album"]
    assert found["forest/gone.png"].reason == f"dangling link: it points to {tmp_path / 'gone.png'}, which does not exist"
    images, failed = decoded([str(root / "forest" / "00.png"), found["forest/gone.png"]], tmp_path)
    assert failed == [(1, found["forest/gone.png"].reason)]
    np.testing.assert_array_equal(images[0], fit_image(Image.open(root / "forest" / "00.png"), 4))


def test_an_unreadable_folder_is_skipped_as_unreadable(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("runs as root, where chmod 000 does not stop a folder from being read")
    root = tiles(tmp_path / "tiles", per_class=4)
    tile(root / "river" / "locked" / "a.png", 77)
    (root / "river" / "locked").chmod(0)
    try:
        train, test = both_splits(root)
    finally:
        (root / "river" / "locked").chmod(0o755)
    reasons = [item.reason for item in train.items + test.items if isinstance(item, Unreadable)]
    assert reasons == ["PermissionError: the folder cannot be read (Permission denied)"]


# --- the hold-out ---------------------------------------------------------------------------------

def test_the_hold_out_goes_by_content_so_copies_share_a_side_and_it_is_stable(tmp_path):
    root = tiles(tmp_path / "tiles", per_class=30)
    original = tile(tmp_path / "original.png", 7)
    copies = [root / c / f"copy_{k}.png" for c in ("forest", "river") for k in range(10)]
    for copy in copies:
        copy.write_bytes(original.read_bytes())  # identical bytes, other files (a path hash splits them)
    train, test = both_splits(root)
    side = {name: "test" for name in test.names} | {name: "train" for name in train.names}
    assert len({side[str(c.relative_to(root))] for c in copies}) == 1
    assert all(side[name] == ("test" if in_holdout(digest(root / name)) else "train") for name in side)
    assert 0.1 < len(test.names) / len(side) < 0.35  # about 1 in HOLDOUT
    for k in range(5):
        tile(root / "forest" / f"new_{k}.png", 5000 + k)
    (root / "river" / "00.png").unlink()
    train2, test2 = both_splits(root)
    assert set(test.names) - {"river/00.png"} <= set(test2.names)
    assert set(train.names) - {"river/00.png"} <= set(train2.names)
    assert train.fingerprint != train2.fingerprint or test.fingerprint != test2.fingerprint


def test_the_fingerprint_changes_with_any_image_of_the_split_and_with_the_pixel_limit(tmp_path, monkeypatch):
    root = tiles(tmp_path / "tiles", per_class=6)
    source = Source("folder", str(root))
    first = listing(source, "train")
    assert listing(source, "train").fingerprint == first.fingerprint
    victim = root / first.names[0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # modified (a PNG still, with a trailing byte)
    modified = listing(source, "train")
    assert modified.fingerprint != first.fingerprint
    monkeypatch.setenv(PIXELS_VARIABLE, "1000")
    assert listing(source, "train").fingerprint != modified.fingerprint
    monkeypatch.setenv(PIXELS_VARIABLE, "lots")
    with pytest.raises(ConfigError, match=rf"{PIXELS_VARIABLE}='lots': must be a whole number of pixels per image"):
        listing(source, "train")


def test_a_hugging_face_pool_holds_out_by_image_bytes(tmp_path):
    datasets = pytest.importorskip("datasets")
    pictures = [Image.fromarray(np.random.default_rng(r % 30).integers(0, 256, (4, 4, 3), dtype=np.uint8))
                for r in range(60)]  # rows r and r + 30 hold the same image
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    full = datasets.Dataset.from_dict({"image": pictures, "label": [r % 2 for r in range(60)]}, features=features)
    full.save_to_disk(str(tmp_path / "full"))
    full.select(range(1, 60)).save_to_disk(str(tmp_path / "fewer"))  # row 0 removed: every row moves up
    sides = {}
    for name in ("full", "fewer"):
        source = resolve(str(tmp_path / name))
        test = listing(source, "test")
        assert len(test.items) + len(listing(source, "train").items) == len(full) - (name == "fewer")
        sides[name] = {r + (name == "fewer") for _, r in test.items}  # rows of the full dataset held out
    assert sides["full"] and all((r + 30) % 60 in sides["full"] for r in sides["full"])  # copies share a side
    assert sides["fewer"] == sides["full"] - {0}


# --- decoding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path, mode):
    levels = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(8, 8)  # (8, 8)
    if mode == "I;16":
        path = tmp_path / "deep.png"
        Image.fromarray(levels).save(path)
    else:
        path = tmp_path / "deep.tif"
        data = levels.astype(">u2").tobytes() if mode == "I;16B" else levels.astype(np.int32).tobytes()
        Image.frombytes(mode, (8, 8), data).save(path)
    assert Image.open(path).mode == mode
    images, failed = decoded([str(path)], tmp_path, size=8)
    expected = ((levels.astype(np.uint32) + 128) // 257).astype(np.uint8)  # divided by 257, rounded
    assert failed == [] and (images[0] == expected).all()  # the same in all three channels
    assert (images[0] == 255).mean() < 0.05  # clipped, 98% of the pixels were 255


def test_a_rotated_jpeg_is_turned_upright_by_its_exif_orientation(tmp_path):
    stored = np.zeros((8, 16, 3), dtype=np.uint8)  # (H, W, 3): 16 wide, 8 tall
    stored[:4] = 255  # the top half bright
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown turned 90 degrees clockwise: 8 wide, 16 tall, the right half bright
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    images, failed = decoded([str(path)], tmp_path, size=8)
    assert failed == []
    image = images[0].astype(int)  # (3, 8, 8): the centre of the upright 8x16 image
    assert image[:, :, 5:].min() > 200 and image[:, :, :3].max() < 55


def test_an_image_over_the_pixel_limit_is_skipped_before_decoding_with_its_size_and_the_limit(tmp_path, monkeypatch):
    huge = tmp_path / "huge.png"  # a header claiming 13000x13000 RGB (507 MB decoded); the file is 70 bytes
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 13000, 13000, 8, 2, 0, 0, 0))
                     + png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + png_chunk(b"IEND", b""))
    small = tile(tmp_path / "small.png", 3, side=8)
    decoded([str(small)], tmp_path)  # imports what decoding needs, outside the filter below
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning from PIL either
        _, failed = decoded([str(huge), str(small)], tmp_path)
    assert failed == [(0, "ImageTooLargeError: 13000x13000 = 169,000,000 pixels, over the limit of 40,000,000 pixels "
                          f"per image ({PIXELS_VARIABLE}); raise it to read this image, or shrink the image")]
    monkeypatch.setenv(PIXELS_VARIABLE, "63")
    _, failed = decoded([str(small)], tmp_path)
    assert failed[0][1].startswith("ImageTooLargeError: 8x8 = 64 pixels, over the limit of 63 pixels per image")
    monkeypatch.setenv(PIXELS_VARIABLE, "64")
    assert decoded([str(small)], tmp_path)[1] == []


# --- one-line errors ------------------------------------------------------------------------------

def test_a_labelled_source_with_one_class_is_refused_up_front(tmp_path, capsys):
    root = tiles(tmp_path / "one", per_class=5, classes=("only",))
    err = one_line_error(["prepare-data", str(root), "--size", "8"], capsys)
    assert err == (f"error: {root} has one class ('only'): a labelled source needs at least two, which the k-NN and "
                   f"linear probe tell apart; add a folder of images for each other class beside 'only'; or, for "
                   f"pretraining only, move its images up into {root}, a flat folder (unlabelled), and set "
                   f"data.eval_source to a labelled source")
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["only"])})
    rows = {"image": [Image.new("RGB", (4, 4), (k, 0, 0)) for k in range(5)], "label": [0] * 5}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DatasetUnavailableError, match=r"has one class \('only'\): .*--label-column ''"):
        listing(resolve(str(tmp_path / "hf")), "train")


def test_a_file_given_instead_of_a_folder_is_a_one_line_error(tmp_path, capsys):
    image = tile(tmp_path / "photo.png", 1)
    err = one_line_error(["prepare-data", str(image), "--size", "16"], capsys)
    assert f"{image} is a file, not a folder of images; give the folder that holds the images" in err


@pytest.mark.parametrize("kind", ["save_to_disk", "parquet"])
def test_a_hugging_face_dataset_cut_short_is_a_one_line_error(tmp_path, capsys, kind):
    datasets = pytest.importorskip("datasets")
    rows = {"image": [Image.new("RGB", (8, 8), (k * 20, 0, 0)) for k in range(10)], "label": [k % 2 for k in range(10)]}
    dataset = datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}))
    if kind == "save_to_disk":
        dataset.save_to_disk(str(tmp_path / "cut"))
        data, = (tmp_path / "cut").glob("*.arrow")
    else:
        data = tmp_path / "cut" / "train-00000-of-00001.parquet"
        dataset.to_parquet(str(data))
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])  # an interrupted copy
    err = one_line_error(["prepare-data", str(tmp_path / "cut"), "--size", "8"], capsys)
    assert err.startswith(f"error: the Hugging Face dataset {tmp_path / 'cut'} cannot be read (")
    assert f"a file of it is cut short or damaged (an interrupted copy or download?); copy it again, or write it " \
           f"again with {'save_to_disk' if kind == 'save_to_disk' else 'to_parquet'}" in err


# --- end to end -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_prepare_data_names_dangling_links_and_huge_images_beside_undecodable_ones(tmp_path, monkeypatch, capsys):
    root = tiles(tmp_path / "tiles", per_class=10)
    names = ["forest/gone.png", "forest/broken.png", "river/big.png"]
    os.symlink("missing.png", root / names[0])
    (root / names[1]).write_bytes(b"not a PNG")
    tile(root / names[2], 9, side=20)
    monkeypatch.setenv("DESUPCON_DATA", str(tmp_path / "data"))
    monkeypatch.setenv(PIXELS_VARIABLE, "300")
    assert main(["prepare-data", str(root), "--size", "8", "--workers", "1"]) == 0
    text = " ".join(line for line in capsys.readouterr().out.splitlines() if line.startswith("[data]") and "unreadable" in line)
    for name, why in zip(names, ["dangling link", "UnidentifiedImageError", "ImageTooLargeError"], strict=True):
        assert f"{name} ({why})" in text

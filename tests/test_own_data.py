"""Your own data: image folders and Hugging Face datasets, the prepared cache, device and stream residency.

One session fixture draws a folder of 2,000 small images with PIL (shapes, text, noise; grayscale,
RGBA and RGB; 8-24 px, most smaller than the 16 px they are stored at; three unreadable files and
two files that are not images), a flat folder of unlabelled images and a small Hugging Face dataset,
saved with ``save_to_disk`` and as parquet files. MoCo-v3 pretraining and a distillation run train
on them end to end.
"""

import hashlib
import re
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from desupcon.__main__ import main
from desupcon.core.errors import ConfigError, DatasetUnavailableError
from desupcon.images import datasets as data_module
from desupcon.images.datasets import Data, DataSpec, DatasetName, prepare_data
from desupcon.images.prepared import Prepared
from desupcon.images.sources import fit_image, in_holdout
from desupcon.images.stream import ArrayFile, Prefetcher
from desupcon.engine import memory
from desupcon.methods.ssl.config import load_config
from desupcon.study.profiles import PROFILES
from desupcon.study.train import pretrain, train
from test_sources_integrity import one_line_error

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CLASSES = ("disc", "bars", "text", "noise")
N_IMAGES, SIDE = 2000, 16  # drawn images; the side they are stored at (the smoke config's image_size)
UNREADABLE = ("disc/broken.png", "bars/truncated.png", "text/empty.jpg")
NOT_IMAGES = ("notes.txt", "noise/labels.csv")


def held_out(path: Path) -> bool:
    """Whether the file ``path`` is in the held-out test split of a labelled folder (by a hash of its bytes)."""
    return in_holdout(hashlib.sha1(path.read_bytes()).digest())


def draw(i: int, rng: np.random.Generator) -> Image.Image:
    """Image ``i``: a class-specific drawing on a noisy background, 8-24 px, in RGB, grayscale (L) or RGBA."""
    w, h = (int(v) for v in rng.integers(8, 25, size=2))
    image = Image.fromarray(rng.integers(0, 90, (h, w, 3), dtype=np.uint8))
    pen, colour = ImageDraw.Draw(image), tuple(int(c) for c in rng.integers(120, 256, size=3))
    kind = CLASSES[i % len(CLASSES)]
    if kind == "disc":
        pen.ellipse([1, 1, w - 2, h - 2], fill=colour)
    elif kind == "bars":
        for x in range(0, w, 4):
            pen.line([x, 0, x, h], fill=colour, width=2)
    elif kind == "text":
        pen.text((0, 0), "Ag", fill=colour)
    else:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return image.convert("L") if i % 5 == 1 else image.convert("RGBA") if i % 5 == 2 else image


@pytest.fixture(scope="session")
def own_data(tmp_path_factory):
    """``$DESUPCON_DATA`` with ``tiles/`` (ImageFolder), ``flat/`` (unlabelled), ``hf/`` (a DatasetDict saved with
    ``save_to_disk``, columns image and label) and ``parquet/`` (one parquet split, columns picture and kind)."""
    root = tmp_path_factory.mktemp("own_data")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        folder = root / "tiles" / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        draw(i, rng).save(folder / f"{i:04d}.png")
    tiles = root / "tiles"
    (tiles / UNREADABLE[0]).write_bytes(b"this is not a PNG")
    (tiles / UNREADABLE[1]).write_bytes((tiles / "bars/0001.png").read_bytes()[:60])  # cut after its header
    (tiles / UNREADABLE[2]).write_bytes(b"")
    for name in NOT_IMAGES:
        (tiles / name).write_text("not an image\n")
    (root / "flat").mkdir()
    for i in range(200):
        draw(i, rng).convert("RGB").save(root / "flat" / f"{i:03d}.jpg")
    try:
        import datasets
    except ImportError:  # the tests of Hugging Face sources skip themselves (pytest.importorskip)
        return root
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    rows = {"image": [draw(i, rng) for i in range(240)], "label": [i % len(CLASSES) for i in range(240)]}
    hf = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(train=hf.select(range(192)), test=hf.select(range(192, 240))).save_to_disk(str(root / "hf"))
    renamed = hf.rename_columns({"image": "picture", "label": "kind"})
    renamed.to_parquet(str(root / "parquet" / "train-00000-of-00001.parquet"))
    return root


@pytest.fixture
def data_root(own_data, monkeypatch):
    monkeypatch.setenv("DESUPCON_DATA", str(own_data))
    return own_data


def entry_of(root: Path, title: str, split: str, side: int = SIDE) -> Prepared:
    """The prepared entry ``<title>-<split>-<side>px-*`` of the cache under ``root``."""
    from desupcon.core.artefacts import read_json

    folder, = (root / "prepared").glob(f"{title}-{split}-{side}px-*")
    return Prepared(folder, read_json(folder / "manifest.json"))


# --- the prepared cache --------------------------------------------------------------------------

def test_prepare_data_skips_unreadable_images_with_one_line_and_records_them(data_root, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said as a [data] line, not as a Python warning
        assert main(["prepare-data", "tiles", "--size", str(SIDE), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    held = {name: held_out(data_root / "tiles" / name) for name in UNREADABLE}  # the empty file is held out
    skips = {re.search(r"\((train|test)\): skipped", line)[1]: line for line in out.splitlines() if "unreadable" in line}
    assert sorted(skips) == sorted({"test" if h else "train" for h in held.values()})  # one line per split
    for split, message in skips.items():
        mine = [name for name in UNREADABLE if held[name] == (split == "test")]
        assert message.startswith("[data] ") and f"skipped {len(mine)} unreadable image(s)" in message
        assert all(name in message for name in mine)
    train, test = entry_of(data_root, "tiles", "train"), entry_of(data_root, "tiles", "test")
    for split, entry in (("train", train), ("test", test)):  # where the cache is, and its size
        assert re.search(rf"^{split}: {entry.count:,} images at 16x16, .* MB: {re.escape(str(entry.folder))}$", out, re.M)
    assert train.count + test.count == N_IMAGES  # every drawn image, none of the unreadable files
    manifest = train.manifest
    skipped = sorted(s["file"] for entry in (train, test) for s in entry.manifest["skipped"])
    assert skipped == sorted(UNREADABLE)
    assert sorted(manifest["ignored"]) == sorted(NOT_IMAGES) and manifest["classes"] == sorted(CLASSES)
    assert manifest["listed"] == train.count + len(manifest["skipped"]) and manifest["size"] == SIDE
    images = np.load(train.images_path, mmap_mode="r")
    assert images.dtype == np.uint8 and images.shape == (train.count, 3, SIDE, SIDE)
    assert np.bincount(train.labels()).tolist() == np.bincount(
        [label for label, c in enumerate(sorted(CLASSES)) for f in (data_root / "tiles" / c).glob("*.png")
         if not held_out(f) and f"{c}/{f.name}" not in UNREADABLE]).tolist()


def test_a_stored_image_is_its_file_converted_resized_and_cropped(data_root):
    prepare_data("tiles", SIDE, ["train"])
    entry = entry_of(data_root, "tiles", "train")
    files = [f for c in sorted(CLASSES) for f in sorted((data_root / "tiles" / c).glob("*.png"))
             if not held_out(f) and f"{c}/{f.name}" not in UNREADABLE]
    images = np.load(entry.images_path, mmap_mode="r")
    grey = next(i for i, f in enumerate(files) if Image.open(f).mode == "L")
    rgba = next(i for i, f in enumerate(files) if Image.open(f).mode == "RGBA")
    for i in (0, grey, rgba, len(files) - 1):
        np.testing.assert_array_equal(images[i], fit_image(Image.open(files[i]), SIDE))
    assert (images[grey][0] == images[grey][1]).all() and (images[grey][1] == images[grey][2]).all()
    mean, std = entry.mean_std
    np.testing.assert_allclose(mean, (images / 255).mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, (images / 255).std(axis=(0, 2, 3)), rtol=1e-6)


def test_the_cache_is_reused_and_rebuilt_only_when_the_source_or_side_changes(data_root, tmp_path, monkeypatch, capsys):
    shutil.copytree(data_root / "tiles" / "disc", tmp_path / "small" / "disc")
    shutil.copytree(data_root / "tiles" / "bars", tmp_path / "small" / "bars")
    monkeypatch.setenv("DESUPCON_DATA", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unreadable files copied along
        (_, first), = prepare_data("small", SIDE, ["train"])
        stamp = (first.folder / "manifest.json").stat().st_mtime_ns
        capsys.readouterr()
        (_, again), = prepare_data("small", SIDE, ["train"])
        assert capsys.readouterr().out == "" and (again.folder / "manifest.json").stat().st_mtime_ns == stamp
        (_, other), = prepare_data("small", 12, ["train"])  # another side is another entry
        assert other.folder != first.folder and other.manifest["shape"][1:] == [3, 12, 12]
        added = tmp_path / "small" / "disc" / "added.png"
        for k in range(1, 100):  # an image of the train split (the hold-out goes by the file's bytes)
            draw(0, np.random.default_rng(k)).save(added)
            if not held_out(added):
                break
        (_, rebuilt), = prepare_data("small", SIDE, ["train"])
    assert f"[data] rebuilding {first.folder}: its source changed" in capsys.readouterr().out
    assert rebuilt.folder == first.folder and rebuilt.count == first.count + 1


def test_a_hugging_face_dataset_on_disk_and_as_parquet_with_its_own_column_names(data_root):
    pytest.importorskip("datasets")
    saved = dict(prepare_data("hf", SIDE))
    assert (saved["train"].count, saved["test"].count) == (192, 48)  # the DatasetDict's splits
    assert saved["train"].classes == CLASSES and np.bincount(saved["train"].labels()).tolist() == [48] * 4
    parquet = dict(prepare_data("parquet", SIDE, image_column="picture", label_column="kind"))
    assert set(parquet) == {"train", "test"}  # a single split: 1 in 5 images held out as the test split
    import pyarrow.parquet

    pictures = pyarrow.parquet.read_table(data_root / "parquet" / "train-00000-of-00001.parquet")["picture"]
    rows = [r for r, picture in enumerate(pictures.to_pylist()) if not in_holdout(hashlib.sha1(picture["bytes"]).digest())]
    assert parquet["train"].count == len(rows) and parquet["train"].count + parquet["test"].count == 240
    assert parquet["train"].labels().tolist() == [r % len(CLASSES) for r in rows]
    first = np.load(parquet["train"].images_path, mmap_mode="r")[0]
    np.testing.assert_array_equal(first, np.load(saved["train"].images_path, mmap_mode="r")[rows[0]])


# --- one-line errors ------------------------------------------------------------------------------

def test_bad_sources_are_one_line_errors_naming_the_path_or_column(data_root, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = one_line_error(["prepare-data", str(tmp_path / "empty"), "--size", "16"], capsys)
    assert f"{tmp_path / 'empty'} has no images" in err and "ImageFolder" in err
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    (tmp_path / "classes" / "dog").mkdir()
    draw(0, np.random.default_rng(0)).save(tmp_path / "classes" / "cat" / "a.png")
    (tmp_path / "classes" / "dog" / "readme.txt").write_text("no images here")
    err = one_line_error(["prepare-data", str(tmp_path / "classes"), "--size", "16"], capsys)
    assert f"class folder {tmp_path / 'classes' / 'dog'} has no images" in err and "remove it" in err
    err = one_line_error(["prepare-data", "no_such_folder", "--size", "16"], capsys)
    assert f"{data_root / 'no_such_folder'} does not exist" in err
    err = one_line_error(["prepare-data", "tiles"], capsys)
    assert "give --size" in err
    pytest.importorskip("datasets")
    err = one_line_error(["prepare-data", "parquet", "--size", "16", "--image-column", "picture", "--label-column",
                          "fine"], capsys)
    assert "has no column 'fine' (its columns: ['picture', 'kind'])" in err and "data.label_column" in err
    err = one_line_error(["prepare-data", "parquet", "--size", "16"], capsys)
    assert f"{data_root / 'parquet'} has no column 'image'" in err and "--image-column" in err


def test_a_flat_folder_needs_a_labelled_evaluation_source(data_root, capsys):
    flat = DatasetName(DataSpec("flat", "flat", size=SIDE))
    with pytest.raises(DatasetUnavailableError, match=rf"{data_root / 'flat'} is unlabelled .*data\.eval_source"):
        Data.load(flat, "cpu")
    data = Data.load(DatasetName(DataSpec("flat", "flat", eval_source="tiles", size=SIDE)), "cpu")
    assert len(data.train) == 200 and (data.train.labels == -1).all() and data.train.num_classes == 0
    evaluation = data.evaluation
    assert evaluation.train is data.labelled and evaluation.test is data.test and data.labelled.num_classes == 4
    assert data.labelled.mean == data.train.mean == data.test.mean  # normalised as the images trained on
    with pytest.raises(ConfigError, match=r"data\.dataset' = 'nowhere' must be one of \['digits', .*'flat', .*'tiles'\]"):
        load_config(CONFIGS / "moco_v3_smoke.yaml", ["data.dataset=nowhere"])


# --- residency ------------------------------------------------------------------------------------

def test_gather_reads_the_same_images_from_the_device_and_from_the_file(data_root, monkeypatch):
    spec = DatasetName(DataSpec("tiles", size=SIDE))
    monkeypatch.setenv("DESUPCON_RESIDENCY", "device")
    resident = Data.load(spec, "cpu").train
    monkeypatch.setenv("DESUPCON_RESIDENCY", "stream")
    streamed = Data.load(spec, "cpu").train
    assert (resident.residency, streamed.residency) == ("device", "stream")
    idx = torch.randint(0, len(resident), (300,), generator=torch.Generator().manual_seed(0))  # with repeats
    assert torch.equal(streamed.gather(idx), resident.gather(idx))  # read synchronously outside an epoch
    batches = list(torch.randperm(len(resident)).split(64))
    with streamed.prefetch(batches):
        for batch in batches:
            assert torch.equal(streamed.gather(batch), resident.images[batch])
    with streamed.prefetch(batches):
        with pytest.raises(RuntimeError, match=f"not batch 0 of the {len(batches)} planned"):
            streamed.gather(batches[1])  # out of order
    with streamed.prefetch(batches):
        streamed.gather(batches[0])  # left mid-epoch: the thread stops
    assert streamed._prefetcher is None
    monkeypatch.setenv("DESUPCON_RESIDENCY", "mmap")
    with pytest.raises(ConfigError, match=r"DESUPCON_RESIDENCY='mmap': must be one of \['auto', 'device', 'stream'\]"):
        Data.load(spec, "cpu")


def test_auto_residency_streams_what_does_not_fit_and_says_so(data_root, monkeypatch, capsys):
    spec = DatasetName(DataSpec("tiles", size=SIDE))
    monkeypatch.setattr(data_module, "free_memory", lambda device: 10 ** 12)
    assert Data.load(spec, "cpu").train.residency == "device"
    assert "on cpu (auto: within 50% of the 1000.0 GB free)" in capsys.readouterr().out
    monkeypatch.setattr(data_module, "free_memory", lambda device: 10 ** 6)
    data = Data.load(spec, "cpu")
    assert (data.train.residency, data.test.residency) == ("stream", "device")
    assert "streamed to cpu from the host, the test split on cpu (auto: more than 50% of the 0.0 GB free)" in \
        capsys.readouterr().out


def test_a_built_in_dataset_streams_from_a_stored_copy_and_joins_splits(data_root, monkeypatch, capsys):
    """The built-ins' split strings (stl10's train+unlabeled works the same way) and their stored copy, on digits."""
    device = Data.load("digits", "cpu")
    monkeypatch.setenv("DESUPCON_RESIDENCY", "stream")
    streamed = Data.load("digits", "cpu")
    assert streamed.train.residency == "stream" and streamed.test.residency == "device"
    assert torch.equal(streamed.train.images, device.train.images) and streamed.train.mean == device.train.mean
    cfg = load_config(CONFIGS / "moco_v3_smoke.yaml", ["data.split=train+test"])
    joined = Data.load(cfg.dataset, "cpu")
    assert len(joined.train) == 1797 and joined.evaluation.train.images.shape[0] == len(device.train)
    assert torch.equal(joined.train.images[len(device.train):], device.test.images)
    capsys.readouterr()
    assert main(["prepare-data", "digits", "--split", "train"]) == 0
    assert re.fullmatch(r"train: 1,437 images at 16x16, 1\.1 MB: .*digits-train-16px-\w+\ntotal .*\n", capsys.readouterr().out)
    assert "built-in datasets are stored at their own side (16x16" in one_line_error(
        ["prepare-data", "digits", "--size", "32"], capsys)
    with pytest.raises(ConfigError, match=r"'data\.split' = 'unlabeled' must join splits of 'digits': \['train', 'test'\]"):
        load_config(CONFIGS / "moco_v3_smoke.yaml", ["data.split=unlabeled"])


def test_a_failed_read_reaches_the_training_step(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.zeros((10, 3, 4, 4), dtype=np.uint8))
    file = ArrayFile(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 48 * 5)  # the last five images are gone
    batches = [torch.arange(5), torch.arange(5, 10)]
    prefetcher = Prefetcher(file, batches, "cpu")
    assert prefetcher.next(batches[0]).shape == (5, 3, 4, 4)
    with pytest.raises(DatasetUnavailableError, match=r"images\.npy: read 0 of the 48 bytes of image 5: the file was cut short"):
        prefetcher.next(batches[1])
    prefetcher.close()


@pytest.mark.slow
def test_each_rank_streams_only_its_own_images(data_root, monkeypatch):
    """Rank 1 of 2 (the collectives are no-ops in one process): the prefetcher's thread reads that rank's
    half of each step's images, in the epoch's order, and ``gather`` hands exactly those over."""
    from desupcon.core import distributed
    from desupcon.engine.trainer import Trainer

    monkeypatch.setenv("DESUPCON_RESIDENCY", "stream")
    cfg = load_config(CONFIGS / "moco_v3_smoke.yaml", ["data.dataset=tiles", "train.epochs=1",
                                                            "train.warmup_epochs=0", "train.queue_size=0"])
    data = Data.load(cfg.dataset, "cpu")
    resident = torch.from_numpy(np.load(data.train.file.path))
    read, real_read = [], ArrayFile.read
    monkeypatch.setattr(ArrayFile, "read", lambda self, rows, out: (
        read.append((threading.current_thread().name, rows.copy())), real_read(self, rows, out))[1])
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    trainer, gathered = Trainer(cfg, data, "cpu"), []
    monkeypatch.setattr(trainer, "step", lambda idx: (gathered.append(data.train.gather(idx)), (torch.zeros(()), None))[1])
    trainer.epoch(0, "rank1", type("Bar", (), {"update": lambda self, n: None})())
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.train.seed))
    batch = cfg.train.batch_size
    mine = [order[s * batch + batch // 2:(s + 1) * batch] for s in range(trainer.steps_per_epoch)]
    assert [(thread, rows.tolist()) for thread, rows in read] == [("desupcon-prefetch", m.tolist()) for m in mine]
    assert all(torch.equal(g, resident[m]) for g, m in zip(gathered, mine, strict=True))


# --- training end to end ---------------------------------------------------------------------------

@pytest.mark.slow
def test_moco_v3_pretrains_on_a_folder_with_the_same_result_streamed_or_on_the_device(data_root, monkeypatch, capsys):
    runs = {}
    for residency in ("device", "stream"):
        monkeypatch.setenv("DESUPCON_RESIDENCY", residency)
        cfg = load_config(CONFIGS / "moco_v3_smoke.yaml", [
            "data.dataset=tiles", "train.epochs=1", "train.warmup_epochs=0", "train.queue_size=0",
            f"train.out_dir=tiles_{residency}"])
        loaded = Data.load(cfg.dataset, "cpu")  # the memory trace reads your data's shapes
        assert memory.dataset_shape(cfg) == (len(loaded.train), len(loaded.test), SIDE, 4)
        runs[residency] = pretrain(cfg, device="cpu")
        assert re.search(rf"\[data\] tiles: {entry_of(data_root, 'tiles', 'train').count:,} train \+ \d+ test images "
                         rf"at 16x16 .*{'streamed to cpu' if residency == 'stream' else 'on cpu'}", capsys.readouterr().out)
    device, stream = runs["device"], runs["stream"]
    assert device["epochs"][0]["loss"] == stream["epochs"][0]["loss"]  # the same views, the same steps
    results = [{k: v for k, v in run["runs"][0].items() if k != "train_seconds"} for run in (device, stream)]
    assert results[0] == results[1]  # and the same evaluation (k-NN, probe) of the memory-mapped split
    assert device["mean"]["knn_top1"] > 100 / len(CLASSES)


@pytest.mark.slow
def test_a_distillation_student_trains_on_a_hugging_face_dataset_named_in_the_data_root(data_root):
    pytest.importorskip("datasets")
    cfg = PROFILES["smoke"].student_config("undistilled", dataset="hf", epochs=1)
    summary = train(cfg)
    assert summary["name"].startswith("student_undistilled_resnet18_hf_") and summary["group"] == "resnet18_hf"
    assert entry_of(data_root, "hf", "train", data_module.OWN_DATA_SIZE).count == 192  # read at OWN_DATA_SIZE
    assert 100 / len(CLASSES) < summary["mean"]["probe_top1"] <= 100

"""Inputs you can trust: the prepared cache checks what it opens, fails in one line and dies cleanly.

Every fault is made the way a bad disk or a user makes it: bytes flipped and values edited in the real
``images.npy`` and ``labels.npy``, a header overwritten, a file cut short before and during a streamed
read, a full and a read-only file system (a real tmpfs, where this runs as root), a stale temp file of
a killed preparation, a lock held by another preparation, and a ``prepare-data`` process killed with
SIGKILL while it decodes.
"""

import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from desupcon.__main__ import main
from desupcon.core.artefacts import atomic_write_json, read_json, temp_name
from desupcon.core.errors import DatasetUnavailableError
from desupcon.images.datasets import Data, builtin_split, prepare_data
from desupcon.images.prepared import NPY_HEADER, Prepared, checksum, entry_folder, prepare
from desupcon.images.sources import in_holdout, resolve
from test_sources_integrity import one_line_error

REPO = Path(__file__).resolve().parents[1]
SIDE = 8  # the side the tests store images at
CLASSES = ("red", "blue")


def draw(path: Path, i: int, side: int = 10) -> None:
    """Image ``i``: random noise tinted by its class, ``side`` px, saved as PNG at ``path``."""
    rng = np.random.default_rng(i)
    pixels = rng.integers(0, 120, (side, side, 3), dtype=np.uint8)
    pixels[..., i % 2 * 2] += 120
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def held_out(path: Path) -> bool:
    """Whether the image file ``path`` is in the held-out test split (by a hash of its bytes)."""
    return in_holdout(hashlib.sha1(path.read_bytes()).digest())


def make_folder(root: Path, n: int, side: int = 10) -> Path:
    """``root`` as an image folder of ``n`` images in two class folders."""
    for i in range(n):
        draw(root / CLASSES[i % 2] / f"{i:04d}.png", i, side)
    return root


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """``$DESUPCON_DATA`` holding ``tiles/``, a folder of 40 images."""
    root = tmp_path / "data"
    make_folder(root / "tiles", 40)
    monkeypatch.setenv("DESUPCON_DATA", str(root))
    return root


def build(data: Path) -> Prepared:
    """The entry of the train split of ``tiles`` at ``SIDE`` (built on first use)."""
    return prepare(resolve(str(data / "tiles")), "train", SIDE, workers=1)


def data_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[data] ")]


def flip(path: Path, positions) -> None:
    """Invert the bytes of the file ``path`` at ``positions`` (offsets from its end when negative)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for position in positions:
            f.seek(position % size)
            byte = f.read(1)
            f.seek(position % size)
            f.write(bytes([byte[0] ^ 0xFF]))


# --- the check when an entry is opened ---------------------------------------------------------------

def test_two_flipped_bytes_in_images_rebuild_the_entry_with_one_line(data, capsys):
    entry = build(data)
    before = np.load(entry.images_path).copy()
    assert entry.manifest["checksum"] == "crc32" and entry.manifest["checksums"]["images.npy"] == checksum(before)
    flip(entry.images_path, [200, -7])
    capsys.readouterr()
    again = build(data)
    lines = data_lines(capsys.readouterr().out)
    assert lines[0].startswith(f"[data] rebuilding {entry.folder}: images.npy fails its checksum (CRC-32 ")
    assert len([line for line in lines if "rebuilding" in line]) == 1
    assert np.array_equal(np.load(again.images_path), before)  # never used damaged: built again from the images


def test_five_changed_labels_rebuild_the_entry(data, capsys):
    entry = build(data)
    path = entry.folder / "labels.npy"
    labels = np.load(path)
    edited = labels.copy()
    edited[:5] = 1 - edited[:5]  # the other class: same header, same size, other values
    np.save(path, edited)
    capsys.readouterr()
    again = build(data)
    assert f"[data] rebuilding {entry.folder}: labels.npy fails its checksum" in capsys.readouterr().out
    assert np.array_equal(again.labels(), labels)


def test_a_damaged_labels_header_is_rebuilt_by_prepare_data_without_a_traceback(data, capsys):
    entry = build(data)
    path = entry.folder / "labels.npy"
    labels = np.load(path)
    brace = path.read_bytes().index(b"}")  # the end of the header's dict: numpy fails with tokenize's TokenError
    with open(path, "r+b") as f:
        f.seek(brace)
        f.write(b" ")
    capsys.readouterr()
    assert main(["prepare-data", str(data / "tiles"), "--size", str(SIDE), "--split", "train", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^\[data\] rebuilding {re.escape(str(entry.folder))}: labels\.npy cannot be read: its header is "
                     rf"damaged \(TokenError: ", out, re.M)
    assert np.array_equal(np.load(path), labels)


def test_an_entry_cut_short_before_a_run_is_prepared_again(data, monkeypatch, capsys):
    monkeypatch.setenv("DESUPCON_RESIDENCY", "stream")
    first = Data.load("tiles", "cpu")
    path = first.train.file.path
    images = np.load(path).copy()
    os.truncate(path, path.stat().st_size - 100)
    capsys.readouterr()
    again = Data.load("tiles", "cpu")
    assert re.search(rf"^\[data\] rebuilding {re.escape(str(path.parent))}: images\.npy is [\d,]+ bytes where its "
                     rf"header and manifest make [\d,]+ \(it was cut short", capsys.readouterr().out, re.M)
    idx = torch.arange(len(images))
    assert torch.equal(again.train.gather(idx), torch.from_numpy(images))


def test_an_entry_of_an_older_desupcon_without_checksums_is_rebuilt(data, capsys):
    entry = build(data)
    manifest = read_json(entry.folder / "manifest.json")
    for key in ("checksum", "checksums", "sha256"):
        manifest.pop(key, None)
    atomic_write_json(manifest, entry.folder / "manifest.json")
    capsys.readouterr()
    again = build(data)
    assert (f"[data] rebuilding {entry.folder}: its manifest holds no checksums of its arrays (it was prepared by an "
            f"older desupcon)") in capsys.readouterr().out
    assert again.manifest["checksums"] == entry.manifest["checksums"]


def test_a_damaged_built_in_copy_is_stored_again_from_scikit_learn(data, capsys):
    (_, entry), = prepare_data("digits", None, ["train"])
    flip(entry.images_path, [500])
    capsys.readouterr()
    (_, again), = prepare_data("digits", None, ["train"])
    assert (f"[data] re-storing {entry.folder} from the arrays scikit-learn gives: images.npy fails its checksum"
            in capsys.readouterr().out)
    digits = builtin_split("digits", "train")
    assert np.array_equal(np.load(again.images_path), digits.images.numpy())
    flip(entry.images_path, [-3])  # a run that streams it checks it too
    capsys.readouterr()
    streamed = Data.load("digits", "cpu", "stream")
    assert "[data] re-storing" in capsys.readouterr().out
    assert torch.equal(streamed.train.gather(torch.arange(len(digits))), digits.images)


# --- a file cut short while a run reads it ---------------------------------------------------------------

def test_an_images_file_cut_short_during_a_streamed_run_is_one_line_naming_it(data, monkeypatch):
    monkeypatch.setenv("DESUPCON_RESIDENCY", "stream")
    train = Data.load("tiles", "cpu").train
    file = train.file
    os.truncate(file.path, file.offset + 3 * file.row_bytes + 10)  # the file another process cut short
    last = torch.tensor([1, len(train) - 1])
    with pytest.raises(DatasetUnavailableError) as caught:
        train.gather(last)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{file.path}: read 0 of the {file.row_bytes:,} bytes of image {len(train) - 1}:")
    assert "the file was cut short after this run opened it" in message and "rerun" in message
    batches = [torch.tensor([0, 1]), last]
    with train.prefetch(batches), pytest.raises(DatasetUnavailableError, match=r"the file was cut short"):
        for batch in batches:  # the background thread's failure, raised as it is in the training thread
            train.gather(batch)


# --- identity of the data -----------------------------------------------------------------------------

def test_fingerprints_are_equal_for_the_same_data_whatever_its_residency(data):
    first, second = Data.load("digits", "cpu", "device"), Data.load("digits", "cpu", "device")
    prints = first.fingerprints()
    assert prints == second.fingerprints() and set(prints) == {"data.train", "data.test"}
    for split, fingerprint in zip(("train", "test"), prints.values()):
        assert set(fingerprint) == {"source", "split", "files", "content"}
        assert fingerprint["source"] == "digits" and fingerprint["split"] == split and fingerprint["files"] == "builtin"
    assert prints["data.train"]["content"] != prints["data.test"]["content"]
    assert Data.load("digits", "cpu", "stream").fingerprints() == prints  # read from its stored copy's manifest


def test_changing_one_image_of_a_folder_changes_files_and_content(data):
    before = Data.load("tiles", "cpu").fingerprints()
    assert before["data.train"]["source"] == str((data / "tiles").resolve())
    assert before == Data.load("tiles", "cpu").fingerprints()
    name = next(f"{c}/{i:04d}.png" for i in range(40) for c in [CLASSES[i % 2]] if not held_out(data / "tiles" / c / f"{i:04d}.png"))
    for seed in range(1000, 1100):  # another picture in its place, one that stays in the training split
        draw(data / "tiles" / name, seed, side=12)
        if not held_out(data / "tiles" / name):
            break
    after = Data.load("tiles", "cpu").fingerprints()
    assert after["data.train"]["files"] != before["data.train"]["files"]
    assert after["data.train"]["content"] != before["data.train"]["content"]
    assert after["data.test"] == before["data.test"]


@pytest.mark.slow
def test_fingerprints_are_the_same_in_another_process(data):
    prints = Data.load("tiles", "cpu").fingerprints()
    code = "import json; from desupcon.images.datasets import Data; print(json.dumps(Data.load('tiles', 'cpu').fingerprints()))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == prints


# --- disk full, read-only --------------------------------------------------------------------------------

@pytest.fixture
def tmpfs():
    """``mount(folder, options)``: a real tmpfs mounted at ``folder`` (made) with ``options`` (``size=1m``,
    ``nr_inodes=4``, ``ro``), unmounted after the test; skips the test where it cannot mount (not root)."""
    mounted = []

    def mount(folder: Path, options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip(f"mounting a tmpfs needs root; this runs as uid {os.geteuid()}")
        folder.mkdir(parents=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_one_line_with_the_bytes_needed_and_free_before_any_decoding(tmp_path, tmpfs, monkeypatch, capsys):
    source = make_folder(tmp_path / "pictures", 40, side=20)
    monkeypatch.setenv("DESUPCON_DATA", str(tmpfs(tmp_path / "disk", "size=1m")))
    error = one_line_error(["prepare-data", str(source), "--size", "128", "--split", "train", "--workers", "1"], capsys)
    folder = entry_folder(resolve(str(source)), "train", 128)
    n = len(np.flatnonzero([not held_out(p) for p in sorted(source.rglob("*.png"))]))
    needed = 2 * NPY_HEADER + n * 3 * 128 * 128 + n * 8  # both arrays
    assert error.startswith(f"error: cannot prepare {folder}: its arrays take {needed:,} bytes and ")
    assert re.search(r"and [\d,]+ bytes are free on its disk; nothing was decoded: free space, or set DESUPCON_DATA", error)
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # no temp file, no half-made entry


def test_a_disk_out_of_inodes_is_one_line_naming_the_file(tmp_path, tmpfs, monkeypatch, capsys):
    source = make_folder(tmp_path / "pictures", 20)
    monkeypatch.setenv("DESUPCON_DATA", str(tmpfs(tmp_path / "disk", "size=4m,nr_inodes=4")))  # the entry's files: 1 of 3
    error = one_line_error(["prepare-data", str(source), "--size", "8", "--split", "train", "--workers", "1"], capsys)
    folder = entry_folder(resolve(str(source)), "train", 8)
    assert error.startswith(f"error: cannot write {folder / 'images.npy'} (No space left on device): the entry takes ")
    assert "and no free inodes (it holds as many files as it can)" in error


def test_a_read_only_data_root_is_one_line_naming_the_folder(tmp_path, tmpfs, monkeypatch, capsys):
    source = make_folder(tmp_path / "pictures", 10)
    root = tmp_path / "readonly"
    if os.geteuid() == 0:  # chmod does not stop root: a read-only file system does
        tmpfs(root, "size=1m,ro")
    else:
        root.mkdir(mode=0o555)
    monkeypatch.setenv("DESUPCON_DATA", str(root))
    error = one_line_error(["prepare-data", str(source), "--size", "8", "--split", "train", "--workers", "1"], capsys)
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert error.startswith(f"error: cannot write {root / 'prepared'} ({reason}): the entry takes ")
    assert re.search(r"bytes, [\d,]+ bytes are free in .*; the entry was not made", error)


# --- killed and concurrent preparations -------------------------------------------------------------------

def test_the_temp_file_of_a_killed_preparation_is_removed_by_the_next_one(data):
    folder = entry_folder(resolve(str(data / "tiles")), "train", SIDE)
    folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = temp_name(folder / "images.npy", "decoded")
    stale = stale.with_name(stale.name.replace(f"-{os.getpid()}.", f"-{dead.pid}."))
    stale.write_bytes(b"\0" * 4096)
    build(data)
    assert not stale.exists()


def test_a_second_preparation_waits_for_the_first_and_uses_its_entry(data, capsys):
    folder = entry_folder(resolve(str(data / "tiles")), "train", SIDE)
    folder.mkdir(parents=True)
    with open(folder / ".lock", "a") as held:  # a preparation of another process holds the entry
        fcntl.flock(held, fcntl.LOCK_EX)
        entries = []
        threads = [threading.Thread(target=lambda: entries.append(build(data))) for _ in range(2)]
        for thread in threads:
            thread.start()
        out, deadline = "", time.time() + 30
        while "[data] waiting" not in out and time.time() < deadline:
            time.sleep(0.05)
            out += capsys.readouterr().out
        assert all(thread.is_alive() for thread in threads) and not (folder / "manifest.json").exists()
    for thread in threads:
        thread.join(timeout=60)
    lines = data_lines(out + capsys.readouterr().out)
    assert [line for line in lines if line.startswith("[data] waiting")] == [
        f"[data] waiting for another process that is preparing or checking {folder}; this one uses the entry when it "
        f"is done"]
    assert len([line for line in lines if line.startswith("[data] prepared")]) == 1  # the work was done once
    assert len(entries) == 2 and entries[0].manifest == entries[1].manifest


def prepare_data_process(source: Path, data: Path, *extra, terminal: bool = False) -> subprocess.Popen:
    """``python -m desupcon prepare-data SOURCE --size SIDE --split train --workers 2`` as a process of its own
    (``terminal``: in a process group of its own, as a terminal's foreground job, which Ctrl-C signals whole)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "DESUPCON_DATA": str(data)}
    return subprocess.Popen([sys.executable, "-m", "desupcon", "prepare-data", str(source), "--size", str(SIDE),
                             "--split", "train", "--workers", "2", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=terminal)


@pytest.mark.slow
def test_two_concurrent_prepare_data_processes_decode_once(data):
    folder = entry_folder(resolve(str(data / "tiles")), "train", SIDE)
    folder.mkdir(parents=True)
    with open(folder / ".lock", "a") as held:  # both start while the entry is held, so they surely overlap
        fcntl.flock(held, fcntl.LOCK_EX)
        processes = [prepare_data_process(data / "tiles", data) for _ in range(2)]
        first_lines = [p.stdout.readline() for p in processes]  # each says it waits, then waits
    assert all(line.startswith(f"[data] waiting for another process that is preparing or checking {folder}")
               for line in first_lines), first_lines
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert not any("[data] waiting" in out for out, _ in outputs)  # one line each, however often it waits
    assert sum(out.count("[data] prepared ") for out, _ in outputs) == 1  # the work was done once


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads the process tree from /proc")
def test_sigkill_of_prepare_data_ends_its_workers_and_the_next_run_removes_its_temp_file(tmp_path, monkeypatch):
    source = make_folder(tmp_path / "pictures", 400, side=160)  # noise PNGs: slow enough to decode to be caught at it
    data = tmp_path / "data"
    monkeypatch.setenv("DESUPCON_DATA", str(data))
    folder = entry_folder(resolve(str(source)), "train", SIDE)
    process = prepare_data_process(source, data)
    deadline, workers = time.time() + 60, []
    while time.time() < deadline and not (len(workers) == 2 and list(folder.glob(".images.npy.*.decoded.tmp"))):
        workers = children(process.pid)
        time.sleep(0.01)
    assert len(workers) == 2 and process.poll() is None, "prepare-data finished before it could be killed mid-decode"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), "a decoding worker outlived its killed parent"
    assert not (folder / "manifest.json").exists()
    stale = list(folder.glob(".images.npy.*.tmp"))
    assert stale  # what the killed run left
    assert main(["prepare-data", str(source), "--size", str(SIDE), "--split", "train", "--workers", "2"]) == 0
    assert not any(p.exists() for p in stale) and (folder / "manifest.json").exists()


@pytest.mark.slow
def test_ctrl_c_in_prepare_data_is_one_line_saying_what_to_do_and_leaves_no_worker_or_temp_file(tmp_path, monkeypatch):
    source = make_folder(tmp_path / "pictures", 400, side=160)
    data = tmp_path / "data"
    monkeypatch.setenv("DESUPCON_DATA", str(data))
    folder = entry_folder(resolve(str(source)), "train", SIDE)
    process = prepare_data_process(source, data, terminal=True)
    deadline, workers = time.time() + 60, []
    while time.time() < deadline and not (len(workers) == 2 and list(folder.glob(".images.npy.*.decoded.tmp"))):
        workers = children(process.pid)
        time.sleep(0.01)
    assert len(workers) == 2 and process.poll() is None, "prepare-data finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"[interrupted] prepare-data {source}: interrupted train (none of its images is kept); rerun the same command "
        f"to prepare what is missing")
    assert not any(alive(w) for w in workers) and sorted(p.name for p in folder.iterdir()) == [".lock"]

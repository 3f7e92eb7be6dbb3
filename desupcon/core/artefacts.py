"""The artefact store of every run: where artefacts live, atomic writes, safe loads, the stale-config guard.

Layout under the output root (``$DESUPCON_HOME``, default: the repository), the same for every
run kind: ``pth_models/<run>.pth`` (the latest checkpoint: resume point, and the finished run),
``pth_models/<run>/epoch_<E>.pth`` (snapshots a run keeps for later evaluation, e.g. MoCo-v3),
``json_results/training_logs/<run>.json`` (per-epoch log), ``json_results/<run>_checkpoint_eval.json``,
``json_results/comprehensive_results_<group>.json`` (every run's summary) and ``plots/``.
A checkpoint holds its run's config; it is reused only when that config equals the request.

Every write is atomic (temp file in the same folder, fsync, rename): a file is its previous or its
complete new version, never half written; a killed writer's temp file is removed by the next write
of that file, and a write that fails (disk full, permissions) raises ``ArtefactWriteError`` naming
the file, the bytes needed and the free space. Every artefact carries a checksum of its content,
verified on every load: a checkpoint's zip records their CRC-32 (checked before ``torch.load``, about
0.03 s per 100 MB), a JSON artefact a ``"sha256"`` of its content. Checkpoints load with
``weights_only=True`` only. ``update_json`` serialises read-modify-writes of a shared JSON file
(the comprehensive results) across processes. ``content_hash`` identifies a trained network for the
lineage of the runs built on it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

from desupcon.core.errors import ArtefactWriteError, CheckpointError

CHECKPOINT_FORMAT = 1
CHECKPOINT_KEYS = ("run_name", "complete", "epoch", "history", "model", "optimizer", "rng")


def _host() -> str:
    """This machine's name as it appears in temp-file names (letters, digits and '-')."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (``mkstemp`` alone gives 0o600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True


def temp_name(path: Path, tag: str) -> Path:
    """The temp file of ``path`` that this process writes, ``.<name>.<host>-<pid>.<tag>.tmp`` beside it
    (``tag``: letters and digits), which ``remove_dead_temp_files`` recognises."""
    return path.with_name(f".{path.name}.{_host()}-{os.getpid()}.{tag}.tmp")


def remove_dead_temp_files(path: Path) -> None:
    """Delete temp files of ``path`` left by writers on this machine that were killed (SIGKILL, OOM).

    A writer's temp file is ``.<name>.<host>-<pid>.<random or tag>.tmp`` (``temp_name``); one whose
    process is gone would otherwise stay forever (a checkpoint can be hundreds of MB, a prepared
    dataset gigabytes). Live writers' files are kept.
    """
    if os.name != "posix":  # os.kill(pid, 0) is not a liveness probe elsewhere
        return
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(_host())}-(\d+)\.[^.]+\.tmp$")
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.match(tmp.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every file system can sync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _free_bytes(folder: Path) -> int:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _write_error(path: Path, needed: int, err: OSError) -> ArtefactWriteError:
    reason = err.strerror or str(err)
    return ArtefactWriteError(
        f"cannot write {path} ({reason}): {needed:,} bytes needed, {_free_bytes(path.parent):,} bytes free in "
        f"{path.parent}; nothing was lost ({path.name} is as it was before, no temp file is left): free space or "
        f"make the folder writable (or set DESUPCON_HOME elsewhere), then rerun: training resumes from its last "
        f"checkpoint")


def _write_file(fd: int, data) -> None:
    """Write ``data`` to the open file ``fd`` and make it durable."""
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic(path: Path, data) -> Path:
    """Write the bytes ``data`` to a temp file in the same folder, fsync, then rename.

    ``path`` is either its previous version or the complete new one, never half written: a write
    that fails (full disk, exception) removes its temp file and leaves ``path`` as it was, and the
    temp file of a writer that was killed outright is removed by the next write of ``path``. An
    ``OSError`` (no space, no permission) becomes ``ArtefactWriteError`` naming the file and the bytes.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temp_files(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host()}-{os.getpid()}.", suffix=".tmp")
    except OSError as err:
        raise _write_error(path, len(data), err) from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _file_mode())
        _write_file(fd, data)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _write_error(path, len(data), err) from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: dict, path) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path`` (serialised in memory first)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _atomic(path, buffer.getbuffer())


def content_hash(state: dict) -> str:
    """SHA-256 of a state dict's names and tensor bytes: the identity of a trained network."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_link(source: Path, path: Path) -> Path:
    """Make ``path`` a hard link of ``source`` (no bytes copied) atomically; a copy where links fail.

    ``source`` is later replaced by renames, never written in place, so ``path`` keeps this version.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path, "link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        return _atomic(path, Path(source).read_bytes())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _finite_json(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _checksum(value: dict) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def atomic_write_json(obj: dict, path) -> Path:
    """Write a JSON object atomically with a ``"sha256"`` of its content (non-finite floats as strings)."""
    value = _finite_json(obj)
    return _atomic(path, json.dumps({**value, "sha256": _checksum(value)}, indent=2).encode())


def read_json(path) -> dict:
    """Read a JSON artefact; a truncated or corrupted file raises ``CheckpointError`` naming it.

    The message says how to recover: a training log is rewritten when its run trains again; the
    comprehensive results file is rebuilt as each run is trained or loaded from its checkpoint.
    """
    path = Path(path)
    if path.name.startswith("comprehensive_results_"):
        fix = ("move it aside (to recover other runs' numbers by hand) or delete it: it is rebuilt as each run "
               "is trained or loaded from its checkpoint cache (desupcon.study.train.train(cfg) for each config)")
    else:
        fix = "delete it or restore it from a backup: its run rewrites it when it trains again"
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({type(err).__name__}: {err}); it was truncated or "
                              f"corrupted: {fix}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not a JSON object; it was corrupted "
                              f"or is not a desupcon artefact: {fix}")
    stored = value.pop("sha256", None)
    if stored is None:
        raise CheckpointError(f"{path} has no checksum: it was not written by this version of desupcon or was "
                              f"edited by hand, so its content cannot be trusted: {fix}")
    if stored != _checksum(value):
        raise CheckpointError(f"{path} fails its SHA-256 checksum: its content changed after it was written (bit "
                              f"rot, a bad copy or a hand edit): {fix}")
    return value


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``.<name>.lock`` beside ``path`` (POSIX ``flock``; no lock elsewhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def update_json(path, update) -> dict:
    """Read-modify-write the JSON object at ``path`` under an exclusive lock and return it.

    ``update(value) -> new value`` gets ``{}`` for a missing file. Concurrent writers (parallel
    notebooks or sweep workers recording results) wait for each other instead of dropping each
    other's entries; a corrupted file raises ``CheckpointError`` (``read_json``) and is left as it is.
    """
    path = Path(path)
    with _locked(path):
        value = update(read_json(path) if path.exists() else {})
        atomic_write_json(value, path)
    return value


def _detail(err: BaseException) -> str:
    """One short line from a loader error (torch's messages span lines and advise unsafe loads)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    informative = [line for line in lines if re.search(r"GLOBAL|Unsupported|unsupported", line)]
    text = (informative or lines or [""])[0]
    text = text.split(". This is an internal miniz error")[0]
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def load_checkpoint(path) -> dict:
    """Load a desupcon checkpoint with ``weights_only=True`` (a pickle carrying code is refused).

    Raises ``CheckpointError`` naming the file, what is wrong and how to recover; never runs code
    from the file and never falls back to an unsafe load.
    """
    path = Path(path)
    fix = "retrain it with FORCE_RETRAIN=True (or --force-retrain), which replaces the file"
    ckpt = safe_torch_load(path, f"checkpoint {path}", fix, "a desupcon checkpoint never does")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or not isinstance(ckpt.get("config"),
                                                                                                dict):
        raise CheckpointError(f"checkpoint {path} is not a desupcon checkpoint (format {CHECKPOINT_FORMAT} with "
                              f"a stored config); {fix}")
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the keys {missing} of a desupcon checkpoint (it was cut "
                              f"down or written by another tool); {fix}")
    return ckpt


def safe_torch_load(path, what: str, fix: str, never: str = "a weights file never does"):
    """``torch.load(path, weights_only=True)`` on the CPU after checking the CRC-32 of the zip's records.

    Args:
        path: the file.
        what: how messages name it, e.g. "checkpoint <path>".
        fix: what the user should do, ending every message.
        never: who never carries code, after "it carries code or non-tensor objects (...), which"
            (default: "a weights file never does").
    A missing file raises ``FileNotFoundError``; anything unreadable, truncated, corrupted or carrying
    code raises one-line ``CheckpointError`` "<what> is <what is wrong>; <fix>". Never runs code from
    the file and never falls back to an unsafe load.
    """
    path = Path(path)
    safe = "the safe loader (torch.load with weights_only=True)"
    _verify_records(path, what, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (IsADirectoryError, PermissionError) as err:
        raise CheckpointError(f"{what} cannot be read ({_detail(err)}); check the path and its permissions") from None
    except Exception as err:
        detail = _detail(err)
        if "GLOBAL" in detail or "global" in detail:  # the pickle imports a function or class: code
            kind = (f"refused by {safe}: it carries code or non-tensor objects ({detail}), which {never}; do not "
                    f"load it with weights_only=False unless you made it yourself")
        elif isinstance(err, pickle.UnpicklingError):
            kind = (f"truncated or corrupted, or not a torch checkpoint: {safe} cannot parse it ({detail})")
        else:
            kind = f"truncated or corrupted ({detail})"
        raise CheckpointError(f"{what} is {kind}; {fix}") from None


def _verify_records(path: Path, what: str, fix: str) -> None:
    """Check the CRC-32 of every record of a checkpoint's zip archive before anything is unpickled.

    ``torch.load`` does not check them, so a few flipped bytes in a weight would load silently.
    A file that is not a zip archive is left to ``torch.load``, which names what it is.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError):
        return
    if bad is not None:
        raise CheckpointError(f"{what} is damaged: its record '{bad}' fails its CRC-32 checksum (bit rot "
                              f"or a bad copy), so it was not loaded; {fix}")



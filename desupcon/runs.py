"""Run caching: where artefacts live, atomic saves, safe loads and the stale-cache guard.

Layout under the output root (``$DESUPCON_HOME``, default: the repository):
``pth_models/<run>.pth`` (checkpoint), ``json_results/training_logs/<run>.json`` (per-epoch log),
``json_results/comprehensive_results_<arch>_<dataset>.json`` and ``plots/``.
A checkpoint holds its run's config; it is reused only when that config equals the request.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch

from .config import RunConfig, config_diff

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint or log is unreadable, truncated or not a desupcon artefact."""


class StaleRunError(RuntimeError):
    """A cached run was trained with a different config than the one requested."""


def output_root() -> Path:
    return Path(os.environ.get("DESUPCON_HOME", Path(__file__).resolve().parents[1]))


def checkpoint_path(run_name: str) -> Path:
    return output_root() / "pth_models" / f"{run_name}.pth"


def log_path(run_name: str) -> Path:
    return output_root() / "json_results" / "training_logs" / f"{run_name}.json"


def plots_dir() -> Path:
    return output_root() / "plots"


def _atomic(path: Path, write) -> Path:
    """Write through ``write(file_object)`` to a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: dict, path) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    return _atomic(path, lambda f: torch.save(obj, f))


def _finite_json(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def atomic_write_json(obj, path) -> Path:
    """Write JSON atomically (non-finite floats written as strings, so the file stays valid JSON)."""
    text = json.dumps(_finite_json(obj), indent=2)
    return _atomic(path, lambda f: f.write(text.encode()))


def read_json(path) -> dict:
    """Read a JSON artefact; a truncated or corrupted file raises ``CheckpointError`` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); it was truncated or corrupted: delete it "
                              f"(its run retrains or rewrites it) or restore it from a backup") from None


def load_checkpoint(path) -> dict:
    """Load a desupcon checkpoint with ``weights_only=True`` (a pickle carrying code is refused).

    Raises ``CheckpointError`` naming the file, what is wrong and how to recover.
    """
    path = Path(path)
    fix = "retrain it with FORCE_RETRAIN=True (or --force-retrain), which replaces the file"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        kind = "refused by the safe loader (it carries code or non-tensor objects)" \
            if "weights_only" in str(err) or "Unsupported global" in str(err) else "truncated or corrupted"
        raise CheckpointError(f"checkpoint {path} is {kind}: {type(err).__name__}: {str(err).splitlines()[0]}; "
                              f"{fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "config" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a desupcon checkpoint (format {CHECKPOINT_FORMAT} with "
                              f"a stored config); {fix}")
    return ckpt


def describe_diff(diff: dict) -> str:
    return ", ".join(f"{k}: cached {a!r} vs requested {b!r}" for k, a, b in
                     ((k, *v) for k, v in diff.items()))


def cached_checkpoint(cfg: RunConfig, run_name: str, force_retrain: bool = False) -> dict | None:
    """The checkpoint to reuse or resume for ``cfg`` (a single-seed config), or ``None`` to train anew.

    * no file, or ``force_retrain``: ``None``;
    * stored config differs from ``cfg``: ``StaleRunError`` naming the differing fields (never
      loaded silently, never overwritten without being asked);
    * otherwise the checkpoint (``ckpt["complete"]`` says whether training finished).
    """
    path = checkpoint_path(run_name)
    if force_retrain or not path.exists():
        return None
    ckpt = load_checkpoint(path)
    diff = config_diff(ckpt["config"], cfg.to_dict())
    if diff:
        raise StaleRunError(
            f"cached run {path} was trained with a different config ({describe_diff(diff)}); "
            f"retrain it with FORCE_RETRAIN=True (or --force-retrain), or delete the file")
    return ckpt

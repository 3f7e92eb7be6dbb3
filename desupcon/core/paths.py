"""Every path under the output home (``$DESUPCON_HOME``) and the data root (``$DESUPCON_DATA``).

Layout, the same for every run kind: ``pth_models/<run>.pth`` (the latest checkpoint: resume point,
and the finished run), ``pth_models/<run>/epoch_<E>.pth`` (snapshots a run keeps for later
evaluation), ``json_results/training_logs/<run>.json`` (per-epoch log),
``json_results/<run>_checkpoint_eval.json``, ``json_results/comprehensive_results_<group>.json``
(every run's summary), ``plots/``, ``tensorboard/<run>/``; datasets under ``data_root()``, the
prepared image cache under ``cache_root()``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from desupcon.core.errors import ArtefactWriteError

REPOSITORY = Path(__file__).resolve().parents[2]  # the checkout holding configs/ and notebooks/ (for a clone)


def output_root() -> Path:
    """Where artefacts (and, by default, datasets) live: ``$DESUPCON_HOME``; unset, the repository of a
    checkout (the folder holding ``pyproject.toml`` beside the package), else ``~/desupcon`` for an
    installed package. The same from the command line, a notebook or any other working directory."""
    if "DESUPCON_HOME" in os.environ:
        return Path(os.environ["DESUPCON_HOME"]).expanduser().resolve()
    return REPOSITORY if (REPOSITORY / "pyproject.toml").is_file() else Path.home() / "desupcon"


def checkpoint_path(run_name: str) -> Path:
    return output_root() / "pth_models" / f"{run_name}.pth"


def log_path(run_name: str) -> Path:
    return output_root() / "json_results" / "training_logs" / f"{run_name}.json"


def snapshot_path(run_name: str, epoch: int) -> Path:
    return output_root() / "pth_models" / run_name / f"epoch_{epoch:04d}.pth"


def saved_snapshots(run_name: str) -> list[int]:
    """Epochs with a snapshot of ``run_name``, ascending."""
    found = (re.fullmatch(r"epoch_(\d+)\.pth", p.name) for p in (output_root() / "pth_models" / run_name).glob("epoch_*.pth"))
    return sorted(int(m[1]) for m in found if m)


def eval_path(run_name: str) -> Path:
    return output_root() / "json_results" / f"{run_name}_checkpoint_eval.json"


def plots_dir() -> Path:
    return output_root() / "plots"


def comprehensive_path(group: str) -> Path:
    return output_root() / "json_results" / f"comprehensive_results_{group}.json"


def data_root() -> Path:
    """Where torchvision datasets are read from and downloaded to; the same place from the CLI, a
    notebook (whose working directory is ``notebooks/``) or any other working directory.

    ``$DESUPCON_DATA`` if set: an absolute path (or ``~/...``) as it is, a relative one resolved against
    the output home, so ``DESUPCON_DATA=datasets`` means ``$DESUPCON_HOME/datasets``. Otherwise
    ``$DESUPCON_HOME/data``, ``$DESUPCON_HOME`` defaulting to the repository root
    (``output_root()``).
    """
    home = Path(output_root())
    value = os.environ.get("DESUPCON_DATA")
    if not value:
        return home / "data"
    path = Path(value).expanduser()
    return path if path.is_absolute() else home / path


def cache_root() -> Path:
    """``$DESUPCON_DATA/prepared``: where every entry lives."""
    return data_root() / "prepared"


def tensorboard_dir(run_name: str) -> Path:
    return Path(output_root()) / "tensorboard" / run_name


def require_writable(folder: Path, what: str) -> None:
    """Raise ``ArtefactWriteError`` unless files can be created in ``folder`` (made if missing): checked
    before a run computes anything, so a read-only home fails at once, not at the first save.

    Args:
        folder: the folder to check, e.g. ``output_root()``.
        what: how messages name it, e.g. ``"the output home ($DESUPCON_HOME)"``.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ArtefactWriteError(f"{what} {folder} is not writable ({err.strerror or err}), so no run could be saved; "
                                 f"nothing was computed: make it writable, or point the variable at a writable "
                                 f"folder") from None

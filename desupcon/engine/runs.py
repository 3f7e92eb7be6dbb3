"""The run cache and lineage: reuse a finished or interrupted run only when its config and inputs
match, find the runs built on another, and record results in the comprehensive-results files."""

from __future__ import annotations

from desupcon.core.artefacts import load_checkpoint, read_json, update_json
from desupcon.core.config import Config
from desupcon.core.errors import CheckpointError, StaleRunError
from desupcon.core.paths import checkpoint_path, comprehensive_path, output_root


def describe_diff(diff: dict) -> str:
    return ", ".join(f"{k}: cached {a!r} vs requested {b!r}" for k, a, b in
                     ((k, *v) for k, v in diff.items()))


def cached_checkpoint(cfg: Config, run_name: str, force_retrain: bool = False,
                      lineage: dict | None = None) -> dict | None:
    """The checkpoint to reuse or resume for ``cfg`` (a single-seed config), or ``None`` to train anew.

    * no file, or ``force_retrain``: ``None``;
    * stored config differs from ``cfg``: ``StaleRunError`` naming the differing fields (never
      loaded silently, never overwritten without being asked);
    * ``lineage`` given (the content hashes of the artefacts the run is built from) and the stored
      one differs: ``StaleRunError`` naming the changed input;
    * otherwise the checkpoint (``ckpt["complete"]`` says whether training finished).
    """
    path = checkpoint_path(run_name)
    if force_retrain or not path.exists():
        return None
    ckpt = load_checkpoint(path)
    fix = "retrain it with FORCE_RETRAIN=True (or --force-retrain), or delete the file"
    diff = cfg.diff(ckpt["config"])
    if diff:
        raise StaleRunError(f"cached run {path} was trained with a different config ({describe_diff(diff)}); {fix}")
    stored = ckpt.get("lineage") or {}
    changed = [] if lineage is None else [role for role in sorted(set(stored) | set(lineage))
                                          if stored.get(role) != lineage.get(role)]
    if changed:
        role = changed[0]
        was, now = stored.get(role, {}), lineage.get(role, {})
        raise StaleRunError(
            f"cached run {path} was built from another {role}: {now.get('run', was.get('run'))} had content "
            f"{str(was.get('content_hash'))[:12]} when this run trained and has {str(now.get('content_hash'))[:12]} "
            f"now (it was retrained since); {fix}")
    return ckpt


def dependents(run_name: str) -> list[dict]:
    """The logs of the runs built on ``run_name`` (their lineage names it), as ``read_json`` gives them."""
    found = []
    for path in sorted((output_root() / "json_results" / "training_logs").glob("*.json")):
        try:
            log = read_json(path)
        except CheckpointError:
            continue  # a damaged log is reported when its own run is loaded
        if any(entry.get("run") == run_name for entry in (log.get("lineage") or {}).values()):
            found.append(log)
    return found


def record(summary: dict) -> None:
    """Add or replace ``summary`` in the comprehensive results of its group (``summary["group"]``).

    The read-modify-write holds a lock, so parallel sweep workers never drop each other's entries.
    """
    update_json(comprehensive_path(summary["group"]), lambda everything: {**everything, summary["name"]: summary})


def load_results(group: str) -> dict:
    """All recorded summaries of ``group`` (e.g. ``resnet18_digits``; empty if none was recorded yet)."""
    path = comprehensive_path(group)
    return read_json(path) if path.exists() else {}

"""The run cache and lineage: reuse a finished or interrupted run only when its config and inputs
match, find the runs built on another, and record results in the comprehensive-results files.

A run's identity is its config (the run name hashes it) and the fingerprints of every input it read,
stored beside the config in its checkpoint and log under ``"lineage"``: the data (the checksum of each
split's stored images and labels), the run it was built from (the content hash of its weights) and
every weight file it loaded (the SHA-256 of the file). The same for every run kind.
"""

from __future__ import annotations

import hashlib

from desupcon.core import distributed as dist
from desupcon.core.artefacts import load_checkpoint, read_json, update_json
from desupcon.core.config import Config
from desupcon.core.errors import CheckpointError, StaleRunError
from desupcon.core.paths import checkpoint_path, comprehensive_path, output_root


def describe_diff(diff: dict) -> str:
    return ", ".join(f"{k}: cached {a!r} vs requested {b!r}" for k, a, b in
                     ((k, *v) for k, v in diff.items()))


RETRAIN = "retrain it with --force-retrain (FORCE_RETRAIN=True in a notebook), or delete the file"


def file_fingerprint(path) -> str:
    """SHA-256 of a file's bytes (a weight file a run loads; about 0.5 s per GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def data_inputs(fingerprints: dict[str, dict]) -> dict[str, dict]:
    """The inputs entries of a run's data (``desupcon.images.datasets.Data.fingerprints``): one per split it
    reads, identified by the checksum of the split's stored images and labels; the source's file-list
    hash is kept beside it (it also changes when a file is only touched)."""
    return {role: {"what": f"{f['source']} ({f['split']})", "files": f["files"], "fingerprint": f["content"]}
            for role, f in fingerprints.items()}


def _fingerprint(entry: dict) -> str | None:
    return entry.get("fingerprint", entry.get("content_hash"))  # teacher entries saved before inputs had a "fingerprint"


def check_inputs(run: str, path, stored: dict, inputs: dict) -> None:
    """Refuse a cached run whose recorded ``stored`` inputs differ from today's ``inputs``.

    Both map a role (``"teacher"``, ``"data.train"``, ``"model.teacher_weights"``, ...) to an entry with a
    ``"what"`` (the run, source or file) and a ``"fingerprint"``. A changed fingerprint raises
    ``StaleRunError`` naming the input, its old and new fingerprint and the command that retrains; an
    input the run did not record (it was saved before runs fingerprinted it) is accepted with a note.
    """
    for role in sorted(inputs):
        now, was = inputs[role], stored.get(role)
        if was is None:
            if dist.is_main():
                print(f"[cache] {run}: recorded no fingerprint of its {role} ({now['what']}), being saved before runs "
                      f"fingerprinted it; taken as unchanged (--force-retrain retrains it)")
        elif _fingerprint(was) != now["fingerprint"]:
            raise StaleRunError(
                f"cached run {path} was built from another {role}: {now['what']} had fingerprint "
                f"{str(_fingerprint(was))[:12]} when this run trained and has {now['fingerprint'][:12]} now; {RETRAIN}")


def cached_checkpoint(cfg: Config, run_name: str, force_retrain: bool = False,
                      inputs: dict | None = None) -> dict | None:
    """The checkpoint to reuse or resume for ``cfg`` (a single-seed config), or ``None`` to train anew.

    * no file, or ``force_retrain``: ``None``;
    * stored config differs from ``cfg``: ``StaleRunError`` naming the differing fields (never
      loaded silently, never overwritten without being asked);
    * ``inputs`` given (the fingerprints of what the run reads: its data, the teacher run, weight files;
      see ``check_inputs``) and a stored one differs: ``StaleRunError`` naming the changed input;
    * otherwise the checkpoint (``ckpt["complete"]`` says whether training finished).
    """
    path = checkpoint_path(run_name)
    if force_retrain or not path.exists():
        return None
    ckpt = load_checkpoint(path)
    diff = cfg.diff(ckpt["config"])
    if diff:
        raise StaleRunError(f"cached run {path} was trained with a different config ({describe_diff(diff)}); {RETRAIN}")
    check_inputs(run_name, path, ckpt.get("lineage") or {}, inputs or {})
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

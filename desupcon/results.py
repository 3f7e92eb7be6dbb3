"""Per-run summaries (mean and std over seeds) and the comprehensive results file.

``json_results/comprehensive_results_<arch>_<dataset>.json`` maps each run name to its summary:
config, seeds, per-seed results, and the mean and std of every metric (test/train accuracy, gap,
k-NN, alignment, uniformity, class distances).
"""

from __future__ import annotations

import statistics

from .config import RunConfig
from .runs import checkpoint_path, log_path, output_root, read_json, update_json


def summarize(cfg: RunConfig, runs: list[dict]) -> dict:
    """Mean and (sample) std over seeds of every numeric result; std is 0.0 for a single seed."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    std = {k: statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0 for k in keys}
    return {"name": cfg.name, "role": cfg.role, "method": cfg.method, "config": cfg.to_dict(),
            "seeds": list(cfg.seeds), "runs": runs, "mean": mean, "std": std,
            "checkpoints": [str(checkpoint_path(cfg.run_name(s))) for s in cfg.seeds],
            "logs": [str(log_path(cfg.run_name(s))) for s in cfg.seeds]}


def comprehensive_path(arch: str, dataset: str):
    return output_root() / "json_results" / f"comprehensive_results_{arch}_{dataset}.json"


def record(summary: dict) -> None:
    """Add or replace ``summary`` in the comprehensive results of its architecture and dataset.

    The read-modify-write holds a lock, so parallel sweep workers never drop each other's entries.
    """
    cfg = summary["config"]
    path = comprehensive_path(cfg["arch"], cfg["dataset"])
    update_json(path, lambda everything: {**everything, summary["name"]: summary})


def load_results(arch: str, dataset: str) -> dict:
    """All recorded summaries of ``arch`` on ``dataset`` (empty if none was recorded yet)."""
    path = comprehensive_path(arch, dataset)
    return read_json(path) if path.exists() else {}


def _cell(summary: dict, metric: str) -> str:
    mean, std = summary["mean"].get(metric), summary["std"].get(metric, 0.0)
    if mean is None:
        return "-"
    return f"{mean:.4g} ± {std:.2g}" if len(summary["seeds"]) > 1 else f"{mean:.4g}"


def table(summaries: list[dict], metrics=("test_acc", "train_acc", "gap", "alignment", "uniformity"),
          seed_columns: bool = True) -> str:
    """A Markdown table, one row per run: ``metric (mean ± std over seeds)`` and ``Δ vs SupCon``.

    With ``seed_columns`` the seed's published CIFAR-100 numbers for the same configuration are
    added in columns headed "seed (published)" (blank where the seed has no such run).
    """
    from .seed_results import seed_reference

    supcon = next((s for s in summaries if s["method"] == "supcon" and s["role"] == "student"), None)
    head = ["run", "seeds", *metrics, "Δ vs SupCon"]
    seed_metrics = ("test_acc", "alignment", "uniformity")
    if seed_columns:
        head += [f"seed (published) {m}" for m in seed_metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        delta = f"{s['mean']['test_acc'] - supcon['mean']['test_acc']:+.2f}" if supcon else "-"
        cells = [s["name"], str(len(s["seeds"])), *(_cell(s, m) for m in metrics), delta]
        if seed_columns:
            ref = seed_reference(s["config"]) or {}
            cells += [f"{ref[m]:.4g}" if m in ref else "" for m in seed_metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

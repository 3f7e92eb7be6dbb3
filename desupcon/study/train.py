"""``train(cfg)``: every run kind through one engine, from config to recorded results.

``train`` validates the config, loads the data once, trains the teacher a run builds on first (if it
is not cached), then trains each seed with ``desupcon.engine.fit`` (or loads it from the artefact
store) and records the summary, mean and std over seeds, in the comprehensive results. It draws
nothing: figures are an analysis step over saved runs (``desupcon.analysis.figures``).

Run identity: a run records the fingerprints of every input it reads (``desupcon.engine.runs``): each
data split, the teacher run it was built from and every weight file its task loads. A cached run
whose inputs changed is stale (``StaleRunError`` names the input), and retraining a run with
``force_retrain`` retrains every cached run built on it, down the chain (teacher -> projection head
-> students).
"""

from __future__ import annotations

import statistics

import torch

from desupcon.core import distributed as dist
from desupcon.core.artefacts import content_hash, read_json
from desupcon.core.paths import checkpoint_path, log_path, output_root, require_writable, saved_snapshots, snapshot_path
from desupcon.images.datasets import Data
from desupcon.engine.runs import data_inputs, dependents, file_fingerprint, record
from desupcon.engine.task import TaskConfig, task_for
from desupcon.engine.trainer import default_device, fit
from desupcon.methods import config_from_dict
from desupcon.methods.ssl.config import SSLConfig, load_config


def train(cfg: TaskConfig, force_retrain: bool = False, data: Data | None = None, device=None,
          fast: bool | str = "auto") -> dict:
    """Train (or load from cache) every seed of ``cfg`` (a config of any registered task: ``RunConfig``,
    ``SSLConfig``) and return its summary.

    The run a run builds on (``cfg.upstream()``: a student's teacher) is trained first if it is not cached. ``force_retrain`` retrains
    this run's seeds (not its teacher), then every cached run built on them. The summary: ``{"name", "role", "method", "group", "config",
    "seeds", "runs": [per-seed results], "mean": {...}, "std": {...}, "checkpoints", "logs"}``.
    ``fast`` is ``desupcon.engine.trainer.Trainer``'s mixed-precision choice (True, False or "auto", the default).
    """
    cfg.validate()
    require_writable(output_root(), "the output home ($DESUPCON_HOME)")
    device = torch.device(device) if device else default_device()
    with dist.main_first():  # rank 0 downloads a missing dataset before the other ranks read it
        data = data or Data.load(cfg.dataset, device)
    cfg.validate(num_train=len(data.train), world_size=dist.world_size())
    inputs = data_inputs(data.fingerprints())
    for field, path in task_for(cfg).weight_files(cfg).items():
        inputs[field] = {"what": f"file {path}", "fingerprint": file_fingerprint(path)}
    teacher_model = None
    for upstream in cfg.upstream():
        train(upstream, data=data, device=device, fast=fast)
        teacher_model = task_for(upstream).trained_encoder(upstream, device=device)
        name = upstream.run_name(upstream.seed)
        inputs["teacher"] = {"what": f"teacher run {name}", "run": name,
                             "fingerprint": content_hash(teacher_model.state_dict())}
    runs = [fit(cfg.for_seed(seed), cfg.run_name(seed), data, device, force_retrain, teacher_model, inputs, fast)
            for seed in cfg.seeds]
    summary = summarize(cfg, runs)
    if dist.is_main():
        record(summary)
    if force_retrain:
        _retrain_dependents(cfg, data, device, fast)
    return summary


def _retrain_dependents(cfg, data: Data, device, fast: bool | str) -> None:
    """Retrain every cached run built on a seed of ``cfg`` (its lineage names it): they used the old weights."""

    for seed in cfg.seeds:
        for log in dependents(cfg.run_name(seed)):
            dependent = config_from_dict(log["config"], log_path(log["run_name"]))
            if dist.is_main():
                print(f"[cascade] {log['run_name']}: built on {cfg.run_name(seed)}, which was retrained; retraining it")
            train(dependent, force_retrain=True, data=data, device=device, fast=fast)


def summarize(cfg, runs: list[dict]) -> dict:
    """Mean and (sample) std over seeds of every numeric result; std is 0.0 for a single seed."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    std = {k: statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0 for k in keys}
    return {"name": cfg.name, "role": cfg.role, "method": cfg.method, "group": cfg.results_group,
            "config": cfg.to_dict(), "seeds": list(cfg.seeds), "runs": runs, "mean": mean, "std": std,
            "checkpoints": [str(checkpoint_path(cfg.run_name(s))) for s in cfg.seeds],
            "logs": [str(log_path(cfg.run_name(s))) for s in cfg.seeds]}


def pretrain(cfg: SSLConfig, force_retrain: bool = False, device=None) -> dict:
    """Pretrain a self-supervised run as ``cfg`` says (``train``), resuming or reusing a cached run.

    Returns the run's summary (``train``'s) with ``"epochs"`` (the per-epoch log) and ``"snapshots"``.
    """
    summary = train(cfg, force_retrain=force_retrain, device=device)
    summary["epochs"] = read_json(log_path(cfg.name))["epochs"]
    summary["snapshots"] = [str(snapshot_path(cfg.name, e)) for e in saved_snapshots(cfg.name)]
    return summary


def pretrain_from_yaml(path, overrides=()) -> dict:
    """``python -m desupcon pretrain CONFIG --set section.key=value ...`` (works under torchrun)."""
    dist.init_from_env()
    return pretrain(load_config(path, overrides))

"""The analysis step: figures of saved runs, drawn from their checkpoints and logs (training draws nothing).

``draw_run(summary)`` loads a finished run's network (its first seed), embeds the test set and writes
``plots/tsne_<run>.png``, ``plots/<run>_hypersphere.html``, ``plots/<run>_alignment.png`` and
``plots/<run>_curves.png``; figures that exist already are kept unless ``force``.
"""

from __future__ import annotations

import torch

from desupcon.analysis import plots
from desupcon.core.artefacts import read_json
from desupcon.core.paths import log_path, plots_dir
from desupcon.images.augment import PRESETS, augment
from desupcon.images.datasets import Data
from desupcon.engine.evaluate import embed
from desupcon.engine.task import TaskConfig, task_for
from desupcon.engine.trainer import default_device
from desupcon.methods import config_from_dict

FIGURES = ("tsne", "hypersphere", "alignment", "curves")


def figure_paths(run_name: str) -> dict:
    out = plots_dir()
    return {"tsne": out / f"tsne_{run_name}.png", "hypersphere": out / f"{run_name}_hypersphere.html",
            "alignment": out / f"{run_name}_alignment.png", "curves": out / f"{run_name}_curves.png"}


def config_of(summary_or_config) -> TaskConfig:
    """The config of a summary of ``train`` (or of a config dict, or a config itself)."""
    if not isinstance(summary_or_config, dict):
        return summary_or_config
    return config_from_dict(summary_or_config.get("config", summary_or_config))


def _title(cfg: TaskConfig) -> str:
    """A figure's title and caption in one: the run's short label, then the data, profile or run, and seed."""
    return f"{cfg.label} · {cfg.caption}"


def draw_run(summary_or_config, kinds=FIGURES, force: bool = False, device=None) -> dict:
    """Draw the figures ``kinds`` of a finished run (a summary of ``train``, or its config); return their paths."""
    cfg = config_of(summary_or_config)
    name = cfg.run_name(cfg.seeds[0])
    paths = {kind: path for kind, path in figure_paths(name).items() if kind in kinds}
    missing = [kind for kind, path in paths.items() if force or not path.exists()]
    title = _title(cfg)
    if "curves" in missing:
        history = read_json(log_path(name))["epochs"]
        metrics = [m for m in ("loss", "train_acc", "momentum") if m in history[0]]
        caption = f"Per-epoch training log (augmented train split) of {name}; evaluated on the {cfg.caption}"
        plots.plot_training_curves({cfg.label: history}, paths["curves"], caption=caption, metrics=metrics)
    if not set(missing) - {"curves"}:
        return paths
    device = torch.device(device) if device else default_device()
    encoder, test = task_for(cfg).trained_encoder(cfg, device), Data.load(cfg.dataset, device).test
    size = cfg.image_size
    space = 1 if cfg.head_is_trained else 0  # the embedding the evaluation measured (head or backbone features)
    where = "" if space else ", backbone features (its head never trains)"
    features, z, *_ = embed(encoder, test.images, test.mean, test.std, size=size)
    if "tsne" in missing:
        plots.plot_tsne(features, test.labels, paths["tsne"], title=title)
    if "hypersphere" in missing:
        plots.plot_hypersphere((features, z)[space], test.labels, paths["hypersphere"], title=title + where)
    if "alignment" in missing:  # the two views the evaluation measured alignment and uniformity on
        gen = torch.Generator(device=device).manual_seed(cfg.seeds[0])
        view = lambda c: lambda batch: augment(batch, c, test.mean, test.std, gen, size)
        z1, z2 = (embed(encoder, test.images, test.mean, test.std, transform=view(c))[space] for c in PRESETS["supcon"])
        plots.plot_alignment(z1, z2, test.labels, paths["alignment"], title=title + where)
    return paths

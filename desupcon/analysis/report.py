"""Results tables and notebook display helpers: a run's figures and links to its hypersphere."""

from __future__ import annotations

import os
from pathlib import Path

from desupcon.analysis.figures import config_of, draw_run
from desupcon.analysis.reference_results import cifar100_twin, reference_for
from desupcon.core.paths import plots_dir
from desupcon.methods.distill.registry import method_of
from desupcon.study.experiments import GRIDS, grid
from desupcon.study.profiles import PROFILES


def _cell(summary: dict, metric: str) -> str:
    mean, std = summary["mean"].get(metric), summary["std"].get(metric, 0.0)
    if mean is None:
        return "-"
    return f"{mean:.4g} ± {std:.2g}" if len(summary["seeds"]) > 1 else f"{mean:.4g}"


REFERENCE_METRICS = ("test_acc", "alignment", "uniformity")


def _reference_cells(summary: dict) -> list[str] | None:
    """The reference numbers of a run's configuration (None: the write-ups have none). A reference alignment or
    uniformity is left out ("other space") beside a run measured on backbone features, not on a trained head."""
    ref = reference_for(summary["config"])
    if not ref:
        return None
    same_space = config_of(summary).head_is_trained
    return [("" if m not in ref else f"{ref[m]:.4g}") if m == "test_acc" or same_space else "other space"
            for m in REFERENCE_METRICS]


def table(summaries: list[dict],
          metrics=("test_acc", "train_acc", "gap", "head_top1", "head_train_top1", "head_gap", "alignment", "uniformity"),
          reference_columns: bool = True) -> str:
    """A Markdown table, one row per run: ``metric (mean ± std over seeds)`` and ``Δ vs SupCon``.

    ``test_acc``, ``train_acc`` and ``gap`` are the linear probe fitted on frozen backbone features after
    training (our reading of the write-ups' "separate linear classifier on frozen features");
    ``head_top1``, ``head_train_top1`` and ``head_gap`` are the classifier trained alongside on detached
    features (README: Ambiguities).
    With ``reference_columns`` the reference (published CIFAR-100) numbers of the same configuration are
    shown, their accuracy compared with our probe: in the run's own row for a CIFAR-100 run, and for a
    run on another dataset (the ``smoke`` profile) in a separate table labelled with its CIFAR-100 twin,
    never in the same row as a number measured on other data.
    """

    supcon = next((s for s in summaries if s["method"] == "supcon" and s["role"] == "student"), None)
    on_cifar100 = [s for s in summaries if config_of(s).dataset == "cifar100"]
    head = ["run", "seeds", *metrics, "Δ vs SupCon"]
    if reference_columns and on_cifar100:
        head += ["reference test_acc (vs our probe)", "reference alignment", "reference uniformity"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        delta = f"{s['mean']['test_acc'] - supcon['mean']['test_acc']:+.2f}" if supcon else "-"
        cells = [s["name"], str(len(s["seeds"])), *(_cell(s, m) for m in metrics), delta]
        if reference_columns and on_cifar100:
            cells += (_reference_cells(s) if s in on_cifar100 else None) or [""] * len(REFERENCE_METRICS)
        lines.append("| " + " | ".join(cells) + " |")
    elsewhere = {}  # twin label -> cells, each once
    for s in summaries:
        cfg = config_of(s)
        cells = _reference_cells(s) if reference_columns and s not in on_cifar100 else None
        if cells:
            elsewhere.setdefault(label(cifar100_twin(cfg)), cells)
    if elsewhere:
        lines += ["", f"Reference (the write-ups' published CIFAR-100 numbers, not {config_of(summaries[0]).dataset}): "
                      "each run's CIFAR-100 twin; its accuracy compares with our linear probe.", "",
                  "| CIFAR-100 twin | reference test_acc (vs our probe) | reference alignment | reference uniformity |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in elsewhere.items()]
    return "\n".join(lines)


def _relative(path: Path) -> str:
    """``path`` relative to the notebook's folder, so links work when the notebook is opened."""
    return os.path.relpath(path, Path.cwd())


def show_runs(summaries: list[dict], figures: tuple[str, ...] = ("curves",), **table_kwargs) -> None:
    """Display the results table of ``summaries``, then each run's ``figures`` and hypersphere link.

    The figures are drawn from the saved runs (``desupcon.analysis.figures.draw_run``; each run's
    hypersphere too): "curves", "tsne", "alignment".
    """
    from IPython.display import HTML, Image, Markdown, display


    display(Markdown(table(summaries, **table_kwargs)))
    for s in summaries:
        paths = draw_run(s, kinds=("hypersphere", *figures))
        for fig in figures:
            display(Image(filename=str(paths[fig]), width=720))
    display(HTML(hypersphere_links([s["name"] for s in summaries])))


def hypersphere_links(names: list[str]) -> str:
    """HTML list of links to the runs' 3D hypersphere files (they open offline in a browser)."""
    items = [f'<li><a href="{_relative(plots_dir() / f"{n}_hypersphere.html")}" target="_blank">{n}</a></li>'
             for n in names if (plots_dir() / f"{n}_hypersphere.html").exists()]
    return "<p>3D hypersphere (opens in a browser, offline):</p><ul>" + "".join(items) + "</ul>"


def label(summary_or_config) -> str:
    """The short method label of a run for figures and tables (``registry.Method.short_label``)."""

    cfg = config_of(summary_or_config)
    return method_of(cfg).short_label(cfg)


def caption(summaries: list[dict], extra: str = "", split: str = "test") -> str:
    """The caption line of a study figure: dataset, ``split`` (default "test"; "train" for training curves),
    profile and seeds per run, then ``extra``."""
    configs = [s["config"] for s in summaries]
    datasets = sorted({c.get("dataset") or c.get("data", {}).get("dataset") for c in configs})
    profiles = sorted({c.get("profile", "?") for c in configs})
    seeds = sorted({len(s["seeds"]) for s in summaries})
    seed_text = f"{seeds[0]} seed(s) per run" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds per run"
    text = f"Data: {', '.join(datasets)} {split} split ({', '.join(profiles)} profile); {seed_text}; {len(summaries)} runs."
    return f"{text} {extra}".strip()


def study_points(summaries: list[dict]) -> list[dict]:
    """``{label, test_acc, alignment, uniformity, accs}`` of each run: what the study figures draw."""
    return [dict(label=label(s), test_acc=s["mean"]["test_acc"], alignment=s["mean"]["alignment"],
                 uniformity=s["mean"]["uniformity"], accs=[r["test_acc"] for r in s["runs"]]) for s in summaries]


def reference_points(summaries: list[dict]) -> list[dict]:
    """The reference (published CIFAR-100) geometry of the runs' CIFAR-100 twins, each once, labelled as the twin
    (``{label, test_acc, alignment, uniformity}``): what a separate reference panel draws."""

    points = {}
    for s in summaries:
        ref = reference_for(s["config"])
        if ref and "alignment" in ref:
            cfg = config_of(s)
            twin = cfg if cfg.dataset == "cifar100" else cifar100_twin(cfg)
            points.setdefault(label(twin), {k: ref[k] for k in ("test_acc", "alignment", "uniformity")})
    return [dict(label=name, **values) for name, values in points.items()]


def recorded(configs: list, results: dict) -> tuple[list[dict], list]:
    """``(summaries of the configs that were trained, configs that were not)``, in the order given."""
    present = [results[c.name] for c in configs if c.name in results]
    return present, [c for c in configs if c.name not in results]


def missing_note(missing: list) -> str:
    """Markdown naming each run not trained yet and the notebook (or ``sweep`` command) that trains it."""

    if not missing:
        return ""
    lines = [f"**{len(missing)} run(s) not trained yet** (shown as missing, not as zeros):"]
    for cfg in missing:
        profile = PROFILES[cfg.profile]
        where = next((g for g in GRIDS if cfg.name in {c.name for c in grid(g, profile)}), None)
        how = (f"run `notebooks/{where}.ipynb` or `python -m desupcon sweep {where} --profile {cfg.profile}`"
               if where else f"`python -m desupcon train {cfg.method} --profile {cfg.profile}`")
        lines.append(f"- `{cfg.name}` ({label(cfg)}): {how}")
    return "\n".join(lines)

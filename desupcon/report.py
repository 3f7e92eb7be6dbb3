"""Results tables and notebook display helpers: a run's figures and links to its hypersphere."""

from __future__ import annotations

import os
from pathlib import Path

from .store import plots_dir


def _cell(summary: dict, metric: str) -> str:
    mean, std = summary["mean"].get(metric), summary["std"].get(metric, 0.0)
    if mean is None:
        return "-"
    return f"{mean:.4g} ± {std:.2g}" if len(summary["seeds"]) > 1 else f"{mean:.4g}"


def table(summaries: list[dict], metrics=("test_acc", "train_acc", "gap", "alignment", "uniformity"),
          reference_columns: bool = True) -> str:
    """A Markdown table, one row per run: ``metric (mean ± std over seeds)`` and ``Δ vs SupCon``.

    With ``reference_columns`` the reference (published CIFAR-100) numbers of the same configuration
    are added in columns headed "reference (CIFAR-100)" (blank where the write-ups have no such run).
    """
    from .reference_results import reference_for

    supcon = next((s for s in summaries if s["method"] == "supcon" and s["role"] == "student"), None)
    head = ["run", "seeds", *metrics, "Δ vs SupCon"]
    reference_metrics = ("test_acc", "alignment", "uniformity")
    if reference_columns:
        head += [f"reference (CIFAR-100) {m}" for m in reference_metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        delta = f"{s['mean']['test_acc'] - supcon['mean']['test_acc']:+.2f}" if supcon else "-"
        cells = [s["name"], str(len(s["seeds"])), *(_cell(s, m) for m in metrics), delta]
        if reference_columns:
            ref = reference_for(s["config"]) or {}
            cells += [f"{ref[m]:.4g}" if m in ref else "" for m in reference_metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _relative(path: Path) -> str:
    """``path`` relative to the notebook's folder, so links work when the notebook is opened."""
    return os.path.relpath(path, Path.cwd())


def show_runs(summaries: list[dict], figures: tuple[str, ...] = ("curves",), **table_kwargs) -> None:
    """Display the results table of ``summaries``, then each run's ``figures`` and hypersphere link.

    The figures are drawn from the saved runs (``desupcon.analysis.draw_run``; each run's
    hypersphere too): "curves", "tsne", "alignment".
    """
    from IPython.display import HTML, Image, Markdown, display

    from .analysis import draw_run

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

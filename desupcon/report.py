"""Notebook display helpers: results tables, a run's figures and links to its hypersphere."""

from __future__ import annotations

import os
from pathlib import Path

from .results import table
from .runs import plots_dir


def _relative(path: Path) -> str:
    """``path`` relative to the notebook's folder, so links work when the notebook is opened."""
    return os.path.relpath(path, Path.cwd())


def show_runs(summaries: list[dict], figures: tuple[str, ...] = ("curves",), **table_kwargs) -> None:
    """Display the results table of ``summaries``, then each run's ``figures`` and hypersphere link.

    ``figures`` names PNGs per run: "curves" (``<run>_curves.png``), "tsne" (``tsne_<run>.png``),
    "alignment" (``<run>_alignment.png``).
    """
    from IPython.display import HTML, Image, Markdown, display

    display(Markdown(table(summaries, **table_kwargs)))
    files = {"curves": "{}_curves.png", "tsne": "tsne_{}.png", "alignment": "{}_alignment.png"}
    for s in summaries:
        for fig in figures:
            path = plots_dir() / files[fig].format(s["name"])
            if path.exists():
                display(Image(filename=str(path), width=720))
    display(HTML(hypersphere_links([s["name"] for s in summaries])))


def hypersphere_links(names: list[str]) -> str:
    """HTML list of links to the runs' 3D hypersphere files (they open offline in a browser)."""
    items = [f'<li><a href="{_relative(plots_dir() / f"{n}_hypersphere.html")}" target="_blank">{n}</a></li>'
             for n in names if (plots_dir() / f"{n}_hypersphere.html").exists()]
    return "<p>3D hypersphere (opens in a browser, offline):</p><ul>" + "".join(items) + "</ul>"
